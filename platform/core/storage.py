"""Storage URIs for every box of the platform: local paths, ``s3://`` and any other fsspec protocol.

One function, :func:`resolve`, turns a URI (or a plain path) into a :class:`StorageLocation` that
knows its fsspec filesystem, its pyarrow filesystem (for Ray Data's ``filesystem=`` arguments) and
how to write atomically.  Everything downstream passes URIs and ``storage_options`` around, never
filesystem objects, so the same call works on the driver and inside a Ray worker.

S3 and S3-compatible stores (AWS, MinIO, moto, ...) take their endpoint and credentials from, in
order of precedence:

1. explicit ``storage_options`` (s3fs names: ``endpoint_url``, ``key``, ``secret``, ``token``,
   ``client_kwargs``);
2. the standard environment variables ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
   ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
   ``AWS_REGION`` / ``AWS_DEFAULT_REGION``;
3. botocore's own chain (profiles, instance roles) when none of the above is set.

Values found in the environment are captured into the location's options when it is resolved on
the driver, so Ray workers started before the variables were exported still reach the same store.

Every known failure of a store — no credentials, an endpoint that refuses connections, permissions,
a file where a folder is needed, writing to a read-only protocol — surfaces from a
:class:`StorageLocation` method as one :class:`~somnray.core.errors.StorageError` naming the URI and
what to do (the original exception chained to it).  :class:`StorageRoots` confines a service to
URI prefixes, with symbolic links, ``..`` and percent-encoding resolved before the test.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import fsspec

from .errors import ConfigError, SomnrayError, StorageError

#: Protocols served by the local filesystem.
LOCAL_PROTOCOLS = ("file", "local")
#: Protocols served by S3-compatible object stores.
S3_PROTOCOLS = ("s3", "s3a")
#: Protocols fsspec reads but somnray never writes to (HTTP servers take no uploads from fsspec).
READ_ONLY_PROTOCOLS = ("http", "https")

# botocore and aiohttp come with their filesystems only, so their failures are recognised by class
# name rather than imported here.
_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"})
_ENDPOINT_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                              "ServerTimeoutError"})

# "scheme:" followed by something that is not "//": almost always a typo ("s3:/bucket").  One
# letter is left alone, it would be a Windows drive.
_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+):(?P<rest>.*)$")


@dataclass(frozen=True)
class StorageLocation:
    """A resolved storage URI.

    Parameters
    ----------
    uri : str
        Normalised URI: ``file:///abs/path`` for local paths, ``s3://bucket/key``, ``proto://...``.
    protocol : str
        fsspec protocol (``"file"``, ``"s3"``, ...).
    path : str
        The path as the filesystems expect it, without protocol: ``/abs/path`` or ``bucket/key``.
    storage_options : dict
        fsspec options of the filesystem (may hold credentials: never logged, never in ``repr``).
    """

    uri: str
    protocol: str
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- filesystems --------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """True for the local filesystem (paths usable by any reader as they are)."""
        return self.protocol in LOCAL_PROTOCOLS

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (fsspec caches instances, so this is cheap to call repeatedly)."""
        return fsspec.filesystem(self.protocol, **self.storage_options)

    def pyarrow_filesystem(self):
        """A ``pyarrow.fs.FileSystem`` for this location, to pass with :attr:`path` to Ray Data.

        Local paths and S3 get pyarrow's native filesystems (fast, multi-threaded); any other
        protocol is wrapped through ``PyFileSystem(FSSpecHandler(fs))``.
        """
        import pyarrow.fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem()
        if self.protocol in S3_PROTOCOLS:
            return _pyarrow_s3(self.storage_options)
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    # -- navigation ---------------------------------------------------------------------------
    def join(self, *parts: str) -> "StorageLocation":
        """The location of ``parts`` below this one (``/``-separated, on every protocol)."""
        clean = [p.strip("/") for p in parts if p and p.strip("/")]
        if not clean:
            return self
        path = posixpath.join(self.path.rstrip("/") or "/", *clean)
        uri = posixpath.join(self.uri.rstrip("/"), *clean)
        return StorageLocation(uri, self.protocol, path, dict(self.storage_options))

    @property
    def name(self) -> str:
        """Last component of the path."""
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "StorageLocation":
        """The folder holding this location."""
        path = posixpath.dirname(self.path.rstrip("/"))
        uri = self.uri.rstrip("/")
        uri = uri[: len(uri) - len(self.name)].rstrip("/")
        return StorageLocation(uri, self.protocol, path, dict(self.storage_options))

    def with_path(self, path: str) -> "StorageLocation":
        """A location on the same filesystem at another filesystem ``path`` (as ``ls`` returns)."""
        path = path if not self.is_local else os.path.abspath(path)
        return StorageLocation(_format_uri(self.protocol, path), self.protocol, path,
                               dict(self.storage_options))

    # -- queries ------------------------------------------------------------------------------
    def exists(self) -> bool:
        """True when a file or folder exists here."""
        with self.errors():
            return bool(self.fs.exists(self.path))

    def isdir(self) -> bool:
        """True when this is a folder (on object stores: a prefix with objects below it)."""
        with self.errors():
            return bool(self.fs.isdir(self.path))

    def find(self, suffix: str | None = None) -> list["StorageLocation"]:
        """Every file below this folder (recursively), sorted, optionally ending in ``suffix``.

        Hidden files (a component starting with ``.``) are left out: they are in-flight temporary
        files of :meth:`atomic_write_bytes` or editor/OS litter.
        """
        if not self.exists():
            return []
        out = []
        root = self.path.rstrip("/")
        with self.errors():
            found = sorted(self.fs.find(self.path))
        for p in found:
            rel = p[len(root):].lstrip("/") if p.startswith(root) else posixpath.basename(p)
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if suffix is None or p.endswith(suffix):
                out.append(self.with_path(p))
        return out

    # -- reading and writing ------------------------------------------------------------------
    def open(self, mode: str = "rb", **kwargs: Any) -> IO:
        """Open the file (creating parent folders on writes to local paths)."""
        writing = any(c in mode for c in "wax+")
        if writing:
            self.require_writable()
        with self.errors():
            if self.is_local and writing:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            return self.fs.open(self.path, mode, **kwargs)

    def read_bytes(self) -> bytes:
        """The whole file."""
        with self.errors(), self.open("rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        """The whole file, decoded."""
        return self.read_bytes().decode(encoding)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        """Write ``text`` atomically (see :meth:`atomic_write_bytes`)."""
        self.atomic_write_bytes(text.encode(encoding))

    def atomic_write_bytes(self, data: bytes) -> None:
        """Write ``data`` so that readers see either the previous file or the complete new one.

        Local paths: a hidden temporary file in the same folder, flushed and fsynced, then
        ``os.replace`` (atomic on POSIX).  S3: one PUT (or a multipart upload, which becomes
        visible only when completed) never exposes a partial object.  Other protocols: write a
        hidden temporary object, then move it into place (as atomic as the store's rename).
        """
        self.require_writable()
        with self.errors():
            self._atomic_write_bytes(data)

    def _atomic_write_bytes(self, data: bytes) -> None:
        if self.is_local:
            folder = os.path.dirname(self.path) or "."
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(self.path)}.{uuid.uuid4().hex}.tmp")
            try:
                with builtins.open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        elif self.protocol in S3_PROTOCOLS:
            self.fs.pipe_file(self.path, data)
        else:
            tmp = posixpath.join(posixpath.dirname(self.path),
                                 f".{self.name}.{uuid.uuid4().hex}.tmp")
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, self.path)

    def makedirs(self) -> None:
        """Create this folder (a no-op on object stores, where folders are implicit)."""
        self.require_writable()
        if self.is_local:
            with self.errors():
                os.makedirs(self.path, exist_ok=True)

    def remove(self) -> None:
        """Delete the file if it exists."""
        with self.errors(), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)

    def require_writable(self) -> None:
        """Refuse, before any attempt, a location on a protocol somnray cannot write to.

        Raises
        ------
        StorageError
            The protocol is read-only (``http://``, ``https://``).
        """
        if self.protocol in READ_ONLY_PROTOCOLS:
            raise StorageError(self.uri, f"{self.protocol}:// locations are read-only: write outputs to "
                                         f"a local path, file:// or s3://bucket/prefix")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn a store's known failures inside the block into one :class:`StorageError`.

        Credentials, connection, permission and file-versus-folder failures become a message
        naming this URI and what to do; anything else (a missing file included, which callers
        handle themselves) passes through unchanged.
        """
        try:
            yield
        except SomnrayError:
            raise
        except Exception as exc:
            problem = _storage_problem(exc, self)
            if problem is None:
                raise
            raise StorageError(self.uri, problem) from exc

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[str]:
        """A local path holding this file's content, for readers that need a real path (MNE).

        Local files are yielded as they are; remote ones are downloaded to a temporary file that
        keeps the original name (readers choose their format by extension) and is deleted on exit.
        """
        if self.is_local:
            if not os.path.isfile(self.path):
                raise FileNotFoundError(f"{self.uri}: no such file")
            yield self.path
            return
        tmpdir = tempfile.mkdtemp(prefix="somnray-")
        try:
            local = os.path.join(tmpdir, self.name or "download")
            try:
                with self.errors():
                    self.fs.get_file(self.path, local)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.uri}: no such file") from None
            yield local
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _storage_problem(exc: BaseException, loc: StorageLocation) -> str | None:
    """What a known storage failure means for ``loc`` and what to do; None for anything else."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _CREDENTIAL_ERRORS:
        return ("no credentials for this store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE), or pass key and secret in the storage options")
    if names & _ENDPOINT_ERRORS or isinstance(exc, ConnectionError):
        endpoint = loc.storage_options.get("endpoint_url")
        target = f"the endpoint {endpoint}" if endpoint else "the store"
        return (f"cannot connect to {target}: check that it is running and reachable, and the "
                f"endpoint setting (AWS_ENDPOINT_URL or endpoint_url)")
    if isinstance(exc, PermissionError):
        return ("permission denied: use a location this user (or these credentials) may read and "
                "write, or grant access to it")
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        where = exc.filename or loc.path
        # The OS names the folder it failed to make; the user needs the file standing in its way.
        while loc.is_local and not os.path.lexists(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where)
        return f"{where} is a file where a folder is needed: name a new or existing folder"
    if isinstance(exc, IsADirectoryError):
        where = exc.filename or loc.path
        return f"{where} is a folder where a file is needed: name a file inside it"
    return None


class StorageRoots:
    """URI prefixes a service may read and write under; every other location is refused.

    A URI is inside when it lies under a root in every reading a layer below could give it: as
    written and percent-decoded, with ``..`` refused outright (object stores keep it as a literal
    key) and, on local disks, every symbolic link followed.  Containment is decided on text and
    :func:`os.path.realpath` only, so the answer never depends on whether the location exists.

    Parameters
    ----------
    roots : iterable of str
        Paths or URIs (``/data/psg``, ``file:///data/psg``, ``s3://bucket/cohorts``).

    Raises
    ------
    ConfigError
        A root is not a valid storage URI.
    """

    def __init__(self, roots: Iterable[str]):
        self.uris = tuple(resolve(root).uri.rstrip("/") for root in roots)

    def __bool__(self) -> bool:
        return bool(self.uris)

    def locate(self, uri: "str | os.PathLike[str]",
               storage_options: Mapping[str, Any] | None = None) -> StorageLocation | None:
        """The location ``uri`` really names, when it lies under a root; None otherwise.

        Local locations come back with their symbolic links resolved, so opening the result
        opens what was checked.
        """
        text = os.fspath(uri)
        readings = {text, unquote(text)}
        if any(".." in reading.replace("\\", "/").split("/") for reading in readings):
            return None
        located = None
        for reading in sorted(readings, key=lambda r: r != text):  # the text as given first
            try:
                loc = resolve(reading, storage_options)
            except ConfigError:
                return None
            if loc.is_local:
                loc = loc.with_path(os.path.realpath(loc.path))
            if not any(self._under(loc, root) for root in self.uris):
                return None
            located = located or loc
        return located

    @staticmethod
    def _under(loc: StorageLocation, root: str) -> bool:
        if root.startswith("file://"):
            if not loc.is_local:
                return False
            base = os.path.realpath(root[len("file://"):])
            return loc.path == base or loc.path.startswith(base.rstrip("/") + "/")
        return loc.uri == root or loc.uri.startswith(root + "/")


# -- resolution ---------------------------------------------------------------------------------
def resolve(uri: "str | os.PathLike[str] | StorageLocation",
            storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """Parse ``uri`` into a :class:`StorageLocation`.

    Parameters
    ----------
    uri : str, path or StorageLocation
        ``file:///abs``, a plain (relative or absolute) path, ``s3://bucket/key`` or any fsspec
        URI.  A StorageLocation is returned as it is (its options updated by ``storage_options``).
    storage_options : mapping, optional
        fsspec filesystem options of remote URIs; they take precedence over the environment.
        Local paths ignore them (so one mapping can accompany every URI of a run).

    Raises
    ------
    ConfigError
        Empty or malformed URI, unknown protocol, ``s3://`` without a bucket.
    """
    if isinstance(uri, StorageLocation):
        if not storage_options or uri.is_local:
            return uri
        opts = {**uri.storage_options, **storage_options}
        return StorageLocation(uri.uri, uri.protocol, uri.path, opts)
    raw = os.fspath(uri) if not isinstance(uri, str) else uri
    text = raw.strip()
    if not text:
        raise ConfigError(repr(raw), ["empty storage URI; give a path, file://..., s3://bucket/..."])
    if "::" in text:
        raise ConfigError(raw, ["chained fsspec URIs (proto1::proto2://) are not supported; "
                                "give a single protocol"])
    m = _SCHEME_RE.match(text)
    if m and not m.group("rest").startswith("//"):
        raise ConfigError(raw, [f"malformed URI: expected '{m.group('scheme')}://...' "
                                f"(two slashes after the protocol)"])
    # Local paths take no options: one options mapping (say, S3 credentials) can then be passed
    # with every URI of a run, whatever mix of local and remote locations it names.
    if m is None:
        path = os.path.abspath(os.path.expanduser(text))
        return StorageLocation(_format_uri("file", path), "file", path, {})

    protocol = m.group("scheme").lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise ConfigError(raw, [f"unknown or unavailable storage protocol {protocol!r} ({exc}); "
                                f"use a local path, file://, s3:// or another fsspec protocol"]) from None

    parts = urlsplit(text)
    if protocol in LOCAL_PROTOCOLS:
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(raw, [f"file:// URIs need an absolute path (file:///abs/path); "
                                    f"got host {parts.netloc!r}"])
        path = os.path.abspath(os.path.expanduser(parts.path or "/"))
        return StorageLocation(_format_uri("file", path), "file", path, {})

    if protocol in S3_PROTOCOLS:
        bucket = parts.netloc
        if not bucket:
            raise ConfigError(raw, ["S3 URI without a bucket: expected s3://BUCKET/prefix"])
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,253}[a-z0-9]", bucket):
            raise ConfigError(raw, [f"{bucket!r} is not a valid S3 bucket name "
                                    f"(3-255 characters: lowercase letters, digits, '.', '-', '_')"])
        key = parts.path.strip("/")
        path = f"{bucket}/{key}" if key else bucket
        opts = s3_options(storage_options)
        return StorageLocation(f"s3://{path}", "s3", path, opts)

    # Any other fsspec protocol: let fsspec split it the way its filesystem expects.
    cls = fsspec.get_filesystem_class(protocol)
    path = cls._strip_protocol(text)
    if isinstance(path, list):  # pragma: no cover - only for exotic multi-path protocols
        path = path[0]
    return StorageLocation(text.rstrip("/") if path.strip("/") else text, protocol, path,
                           dict(storage_options or {}))


def relative_uri(uri: str | StorageLocation, base: str | StorageLocation) -> str:
    """``uri`` as a record names it: relative to the folder ``base`` whenever it can be.

    Local files are always given relative to ``base`` (with ``..`` when they lie outside it), so a
    record never holds an absolute path — clinic folders and file names often carry patient names
    above the cohort's folder.  A file on another store, or outside ``base`` on an object store,
    keeps its URI.
    """
    loc, folder = resolve(uri), resolve(base)
    if loc.is_local and folder.is_local:
        return os.path.relpath(loc.path, folder.path)
    prefix = folder.uri.rstrip("/") + "/"
    return loc.uri[len(prefix):] if loc.protocol == folder.protocol and loc.uri.startswith(prefix) else loc.uri


def _format_uri(protocol: str, path: str) -> str:
    if protocol in LOCAL_PROTOCOLS:
        return "file://" + path
    return f"{protocol}://{path.lstrip('/')}"


def s3_options(storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """s3fs options from ``storage_options`` completed with the standard ``AWS_*`` variables.

    ``region_name`` is only set when given explicitly: an implicit ``us-east-1`` makes bucket
    creation fail on S3-compatible servers (InvalidLocationConstraint).
    """
    opts: dict[str, Any] = dict(storage_options or {})
    env = os.environ
    endpoint = (opts.get("endpoint_url")
                or (opts.get("client_kwargs") or {}).get("endpoint_url")
                or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
    if endpoint:
        opts["endpoint_url"] = endpoint
        if "client_kwargs" in opts:
            opts["client_kwargs"] = {k: v for k, v in opts["client_kwargs"].items()
                                     if k != "endpoint_url"}
    if "key" not in opts and env.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
    if "secret" not in opts and env.get("AWS_SECRET_ACCESS_KEY"):
        opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
    if "token" not in opts and env.get("AWS_SESSION_TOKEN"):
        opts["token"] = env["AWS_SESSION_TOKEN"]
    return opts


def worker_storage_options(uris: Iterable[str], storage_options: Mapping[str, Any] | None = None
                           ) -> dict[str, Any]:
    """The ``storage_options`` to ship with Ray tasks and actors that open ``uris``.

    Workers may have started before the driver's ``AWS_*`` variables were set, or run on other
    machines: when any URI is on S3, the endpoint and credentials are resolved here, once, on the
    driver, and travel with the task.
    """
    if any(str(u).startswith(tuple(f"{p}://" for p in S3_PROTOCOLS)) for u in uris):
        return s3_options(storage_options)
    return dict(storage_options or {})


def _pyarrow_s3(opts: Mapping[str, Any]):
    """pyarrow's native S3 filesystem configured like the s3fs options ``opts``."""
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {}
    endpoint = opts.get("endpoint_url")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme or "https"
    if opts.get("key"):
        kwargs["access_key"] = opts["key"]
        kwargs["secret_key"] = opts.get("secret")
        if opts.get("token"):
            kwargs["session_token"] = opts["token"]
    if opts.get("anon"):
        kwargs["anonymous"] = True
    region = ((opts.get("client_kwargs") or {}).get("region_name") or opts.get("region_name")
              or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    if region:
        kwargs["region"] = region
    elif endpoint:
        # A custom endpoint has no region to discover; pyarrow would otherwise probe AWS for it.
        kwargs["region"] = "us-east-1"
    return pafs.S3FileSystem(**kwargs)


# -- module-level shortcuts ---------------------------------------------------------------------
def join(uri: str | StorageLocation, *parts: str) -> str:
    """``uri`` with ``parts`` appended, as a URI string."""
    return resolve(uri).join(*parts).uri


def exists(uri: str | StorageLocation, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when something exists at ``uri``."""
    return resolve(uri, storage_options).exists()


def read_text(uri: str | StorageLocation, storage_options: Mapping[str, Any] | None = None) -> str:
    """Content of the text file at ``uri``."""
    return resolve(uri, storage_options).read_text()


def write_text(uri: str | StorageLocation, text: str,
               storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``text`` to ``uri`` atomically."""
    resolve(uri, storage_options).write_text(text)


def atomic_write_bytes(uri: str | StorageLocation, data: bytes,
                       storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` to ``uri`` atomically (see :meth:`StorageLocation.atomic_write_bytes`)."""
    resolve(uri, storage_options).atomic_write_bytes(data)


def open(uri: str | StorageLocation, mode: str = "rb",  # noqa: A001 - mirrors fsspec.open
         storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> IO:
    """Open the file at ``uri``."""
    return resolve(uri, storage_options).open(mode, **kwargs)


@contextlib.contextmanager
def local_copy(uri: str | StorageLocation,
               storage_options: Mapping[str, Any] | None = None) -> Iterator[str]:
    """A local path with the content of ``uri`` (see :meth:`StorageLocation.local_copy`)."""
    with resolve(uri, storage_options).local_copy() as path:
        yield path
