"""Where a model bundle is: a training run (``<run>/model/``), a bundle folder, or a registered model.

Bundles themselves (``model.pt`` + ``model.json``) are :mod:`somnray.models.bundle`'s; this module
finds one behind a URI and makes it a local folder that :func:`~somnray.models.bundle.load_bundle`
can read.  :func:`resolve_bundle` is the one place a model URI is resolved: a path or storage URI
of a run or bundle folder, or ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` of the model
registry (:mod:`.registry`), downloaded once into the local model cache (``SOMNRAY_MODEL_CACHE``,
default ``~/.cache/somnray/models``) and checked against the weights' SHA-256 recorded at
registration (:func:`register_bundle`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE, BundleInfo, file_sha256

from .registry import RUN_SCHEME, WEIGHTS_TAG, RegisteredVersion, Registry, RegistryError, is_registry_uri

#: Folder of the exported bundle inside a training run.
BUNDLE_DIR = "model"
#: Environment variable overriding the local cache of registered versions.
CACHE_ENV = "SOMNRAY_MODEL_CACHE"


@dataclass(frozen=True)
class ResolvedBundle:
    """A model URI resolved: the bundle folder, and the registered version it came from (if any).

    Attributes
    ----------
    location : StorageLocation
        The bundle folder (for a registered model: its copy in the local cache).
    registered : RegisteredVersion or None
        The registry name and version, for ``models:/`` URIs.
    """

    location: StorageLocation
    registered: RegisteredVersion | None = None


def resolve_bundle(model_uri: str | os.PathLike[str] | StorageLocation,
                   storage_options: Mapping[str, Any] | None = None) -> ResolvedBundle:
    """Resolve any model URI that scoring, evaluation and serving accept.

    Parameters
    ----------
    model_uri : str, path or StorageLocation
        A training run (``<run>/model/`` is used), a bundle folder (local or remote), or a
        registered model version ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (downloaded to
        the local model cache, see :func:`somnray.scoring.registry.fetch_registered_bundle`).
    storage_options : mapping, optional
        fsspec options of a remote run or bundle folder.

    Raises
    ------
    ConfigError
        Neither the URI nor ``<uri>/model`` holds ``model.json`` and ``model.pt``.
    RegistryError
        A ``models:/`` URI without MLflow installed, or one the registry cannot resolve.
    """
    if is_registry_uri(model_uri):
        folder, version = fetch_registered_bundle(str(model_uri))
        return ResolvedBundle(resolve(folder), version)
    root = resolve(model_uri, storage_options)
    for candidate in (root, root.join(BUNDLE_DIR)):
        if candidate.join(INFO_FILE).exists() and candidate.join(WEIGHTS_FILE).exists():
            return ResolvedBundle(candidate)
    raise ConfigError(root.uri, [
        f"no model bundle: neither {INFO_FILE} + {WEIGHTS_FILE} in this folder nor in its "
        f"{BUNDLE_DIR}/ subfolder; give a training run URI (which exports <run>/{BUNDLE_DIR}/), "
        "a bundle folder or a registered model (models:/NAME/VERSION, models:/NAME@ALIAS)"])


def bundle_location(run_or_bundle_uri: str | os.PathLike[str] | StorageLocation,
                    storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The bundle folder of a model URI (:func:`resolve_bundle`'s ``location``).

    Raises
    ------
    ConfigError
        Neither the URI nor ``<uri>/model`` holds ``model.json`` and ``model.pt``.
    """
    return resolve_bundle(run_or_bundle_uri, storage_options).location


def weights_sha256(folder: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a local bundle folder's ``model.pt``: the identity of the weights in lineage."""
    return file_sha256(os.path.join(folder, WEIGHTS_FILE))


def model_cache_dir() -> str:
    """Where registered versions are cached: ``SOMNRAY_MODEL_CACHE``, else ``~/.cache/somnray/models``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "somnray", "models")


def fetch_registered_bundle(uri: str, registry: Registry | None = None) -> tuple[str, RegisteredVersion]:
    """The local cached folder of a ``models:/`` URI, and the version it names now.

    A version's files never change, so a complete cached copy is used as it is; otherwise they are
    downloaded next to it, checked against the ``weights_sha256`` tag and moved into place.

    Raises
    ------
    RegistryError
        MLflow missing, no server, an unknown model, version or alias, or downloaded weights whose
        SHA-256 is not the one recorded at registration.
    """
    registry = registry or Registry()
    version = registry.version(uri)
    target = os.path.join(model_cache_dir(), registry.server_key, urllib.parse.quote(version.name, safe=""),
                          version.version)
    if os.path.isfile(os.path.join(target, INFO_FILE)) and os.path.isfile(os.path.join(target, WEIGHTS_FILE)):
        return target, version
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
    try:
        folder = registry.download(version.uri, tmp)
        expected = version.tags.get(WEIGHTS_TAG)
        if expected and weights_sha256(folder) != expected:
            raise RegistryError(f"{version.uri}: the downloaded {WEIGHTS_FILE} does not have the SHA-256 "
                                f"recorded at registration ({expected[:12]}…)")
        try:
            os.replace(folder, target)
        except OSError:  # a concurrent fetch of the same version won: keep its copy
            if not os.path.isfile(os.path.join(target, WEIGHTS_FILE)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, version


def copy_bundle_folder(bundle_uri: str, dest: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Copy every file of the bundle folder behind a run or bundle URI into ``dest``; returns ``dest``."""
    loc = bundle_location(bundle_uri, storage_options)
    root = loc.path.rstrip("/")
    for f in loc.find():
        local = os.path.join(dest, *f.path[len(root):].lstrip("/").split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        loc.fs.get_file(f.path, local)
    return dest


def register_bundle(bundle_uri: str, name: str, *, registry: Registry | None = None,
                    description: str | None = None,
                    storage_options: Mapping[str, Any] | None = None) -> RegisteredVersion:
    """Register a bundle, with every file its folder holds, as the next version of ``name``.

    Parameters
    ----------
    bundle_uri : str
        A training run or bundle folder (any storage URI), uploaded to the registry; or
        ``runs:/RUN_ID/PATH``, a bundle a training run logged to the same server (registered where
        it is).
    name : str
        The registered model (created on first use).
    registry : Registry, optional
        Default: the server of ``MLFLOW_TRACKING_URI``.
    description : str, optional
        The version's description.

    Raises
    ------
    ConfigError
        No bundle at ``bundle_uri``, or a malformed ``model.json``.
    RegistryError
        MLflow missing, no server, or the server refused.
    """
    registry = registry or Registry()
    with tempfile.TemporaryDirectory(prefix="somnray-register-") as tmp:
        logged = bundle_uri.startswith(RUN_SCHEME)
        folder = registry.download(bundle_uri, tmp) if logged else copy_bundle_folder(bundle_uri, tmp, storage_options)
        for f in (INFO_FILE, WEIGHTS_FILE):
            if not os.path.isfile(os.path.join(folder, f)):
                raise ConfigError(bundle_uri, [f"not a somnray model bundle (no {f})"])
        try:
            with open(os.path.join(folder, INFO_FILE), encoding="utf-8") as fh:
                info = BundleInfo.from_json(fh.read(), f"{bundle_uri}/{INFO_FILE}")
        except ValueError as exc:
            raise ConfigError(bundle_uri, [str(exc)]) from None
        return registry.register_folder(folder, name, weights_digest=weights_sha256(folder), architecture=info.model,
                                        description=description, logged=bundle_uri if logged else None)


@contextlib.contextmanager
def local_bundle(location: StorageLocation) -> Iterator[str]:
    """A local folder holding the bundle at ``location`` (remote ones are downloaded, then removed)."""
    if location.is_local:
        yield location.path
        return
    tmp = tempfile.mkdtemp(prefix="somnray-bundle-")
    try:
        for name in (INFO_FILE, WEIGHTS_FILE):
            location.fs.get_file(location.join(name).path, os.path.join(tmp, name))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["BUNDLE_DIR", "CACHE_ENV", "ResolvedBundle", "bundle_location", "copy_bundle_folder",
           "fetch_registered_bundle", "local_bundle", "model_cache_dir", "register_bundle", "resolve_bundle",
           "weights_sha256"]
