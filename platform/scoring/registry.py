"""The model registry: bundles as registered model versions on an MLflow tracking server.

A registered model version holds a bundle folder as it is (``model.pt``, ``model.json`` and
whatever else the folder has, such as its model card) as the artifacts of an MLflow run, so the
registry's own artifact store (a local folder, S3, ...) keeps the bytes and the registry keeps the
names, versions and aliases::

    models:/NAME/VERSION      one version (immutable)
    models:/NAME@ALIAS        the version an alias points at now (``champion``, ``staging``...)

Every command that takes a model resolves these through
:func:`somnray.scoring.bundles.resolve_bundle`, which calls :func:`fetch_registered_bundle`: the
version's files are downloaded once into a local cache (``SOMNRAY_MODEL_CACHE``, default
``~/.cache/somnray/models``) and checked against the weights' SHA-256 recorded at registration.

The server is ``MLFLOW_TRACKING_URI`` (or an explicit ``tracking_uri``). MLflow is an optional
dependency (``pip install 'somnray[mlflow]'``): without it, bundles by path or URI work as before
and anything registry-related fails with :data:`INSTALL_HINT`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from somnray.core.errors import SomnrayError
from somnray.core.version import somnray_version
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE, BundleInfo

from .bundles import bundle_location, weights_sha256

#: Prefix of registered-model URIs (MLflow's own scheme).
REGISTRY_SCHEME = "models:/"
#: Prefix of MLflow run-artifact URIs accepted by :func:`register_bundle`.
RUN_SCHEME = "runs:/"
#: Environment variable naming the MLflow tracking (and registry) server.
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: Environment variable overriding the local cache of downloaded registered versions.
CACHE_ENV = "SOMNRAY_MODEL_CACHE"
#: MLflow experiment holding the runs that carry registered bundles.
REGISTRY_EXPERIMENT = "somnray-registry"
#: Folder of the bundle inside a registration run's artifacts.
ARTIFACT_DIR = "model"
#: Model-version tag holding the hex SHA-256 of ``model.pt``.
WEIGHTS_TAG = "weights_sha256"
#: What to do when MLflow is missing (the whole message of :class:`RegistryError`).
INSTALL_HINT = ("the model registry needs MLflow, which is not installed: "
                "pip install 'somnray[mlflow]'")


class RegistryError(SomnrayError):
    """The registry cannot be used (MLflow missing, no server, unknown model or version)."""


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model.

    Attributes
    ----------
    name, version : str
        The registered model and the version number.
    aliases : tuple of str
        Aliases pointing at this version.
    source : str
        Where the registry keeps the bundle's files.
    run_id : str or None
        The MLflow run whose artifacts hold them.
    tags : dict
        Version tags (``weights_sha256``, ``architecture``, ...).
    description : str
    """

    name: str
    version: str
    aliases: tuple[str, ...] = ()
    source: str = ""
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION``: this version, whatever aliases move later."""
        return f"{REGISTRY_SCHEME}{self.name}/{self.version}"

    def lineage(self) -> dict[str, str]:
        """What scored outputs record about it: name, version and URI."""
        return {"name": self.name, "version": self.version, "uri": self.uri}

    @classmethod
    def of(cls, mv: Any) -> "RegisteredVersion":
        """From MLflow's ``ModelVersion`` entity."""
        return cls(name=mv.name, version=str(mv.version), aliases=tuple(getattr(mv, "aliases", ()) or ()),
                   source=mv.source or "", run_id=mv.run_id or None, tags=dict(mv.tags or {}),
                   description=mv.description or "")


# -- URIs ----------------------------------------------------------------------------------------
def is_registry_uri(uri: Any) -> bool:
    """Whether ``uri`` names a registered model (``models:/...``)."""
    return isinstance(uri, str) and uri.startswith(REGISTRY_SCHEME)


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.

    Raises
    ------
    RegistryError
        Any other form (the message shows both accepted ones).
    """
    rest = uri[len(REGISTRY_SCHEME):] if is_registry_uri(uri) else ""
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise RegistryError(f"{uri!r} is not a registered model URI: use models:/NAME/VERSION "
                        "(a version number) or models:/NAME@ALIAS")


def _redacted(uri: str) -> str:
    # A tracking URI may carry a user and password; messages show the host only.
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
    return uri


# -- the client ----------------------------------------------------------------------------------
def require_mlflow():
    """The ``mlflow`` module.

    Raises
    ------
    RegistryError
        MLflow is not installed (:data:`INSTALL_HINT`).
    """
    try:
        import mlflow
    except ImportError:
        raise RegistryError(INSTALL_HINT) from None
    return mlflow


def tracking_uri(explicit: str | None = None) -> str:
    """The registry server: ``explicit``, else ``MLFLOW_TRACKING_URI``.

    Raises
    ------
    RegistryError
        Neither is set.
    """
    uri = explicit or os.environ.get(TRACKING_ENV)
    if not uri:
        raise RegistryError(f"no model registry configured: set {TRACKING_ENV} to the MLflow server "
                            "(e.g. http://127.0.0.1:5000) or pass --tracking-uri")
    return uri


class Registry:
    """A registry server: register bundles, list and show models, set aliases, fetch versions.

    Parameters
    ----------
    uri : str, optional
        The MLflow tracking server (default ``MLFLOW_TRACKING_URI``).

    Raises
    ------
    RegistryError
        MLflow is missing or no server is configured.
    """

    def __init__(self, uri: str | None = None):
        self.mlflow = require_mlflow()
        self.uri = tracking_uri(uri)
        self.client = self.mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        """Run a client call; MLflow's errors become one-line :class:`RegistryError`s."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            message = str(exc.message if hasattr(exc, "message") else exc).splitlines()[0]
            raise RegistryError(f"{what}: {message} (registry {_redacted(self.uri)})") from exc

    # -- reading ---------------------------------------------------------------------------------
    def version(self, uri: str) -> RegisteredVersion:
        """The version a ``models:/`` URI names now (an alias is looked up on the server)."""
        name, version, alias = parse_registry_uri(uri)
        if alias is not None:
            mv = self._call(uri, self.client.get_model_version_by_alias, name, alias)
        else:
            mv = self._call(uri, self.client.get_model_version, name, version)
        return RegisteredVersion.of(mv)

    def versions(self, name: str) -> list[RegisteredVersion]:
        """Every version of a registered model, newest first."""
        model = self._call(name, self.client.get_registered_model, name)
        aliases: dict[str, list[str]] = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        found = self._call(name, self.client.search_model_versions, f"name = '{_quote(name)}'")
        out = [RegisteredVersion.of(mv) for mv in found]
        out = [RegisteredVersion(**{**v.__dict__, "aliases": tuple(sorted(aliases.get(v.version, [])))})
               for v in out]
        return sorted(out, key=lambda v: -int(v.version))

    def models(self) -> list[dict[str, Any]]:
        """Every registered model: ``name``, ``latest`` version, ``aliases`` {alias: version}."""
        found, token = [], None
        while True:
            page = self._call("list", self.client.search_registered_models, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        out = []
        for m in sorted(found, key=lambda m: m.name):
            latest = max((int(v.version) for v in (m.latest_versions or [])), default=None)
            out.append({"name": m.name, "latest": None if latest is None else str(latest),
                        "aliases": {a: str(v) for a, v in sorted((getattr(m, "aliases", None) or {}).items())}})
        return out

    # -- writing ---------------------------------------------------------------------------------
    def register(self, bundle_uri: str, name: str, *, description: str | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> RegisteredVersion:
        """Register the bundle at ``bundle_uri`` as a new version of ``name`` (created if needed).

        Parameters
        ----------
        bundle_uri : str
            A somnray training run or bundle folder (any storage URI): its files are uploaded as
            the artifacts of a new run of the ``somnray-registry`` experiment; or ``runs:/RUN_ID/PATH``,
            a bundle a training run already logged to this server (registered where it is).
        name : str
            The registered model.
        description : str, optional
            The version's description.

        Raises
        ------
        ConfigError
            No bundle at ``bundle_uri``.
        RegistryError
            The server refused.
        """
        with tempfile.TemporaryDirectory(prefix="somnray-register-") as tmp:
            if bundle_uri.startswith(RUN_SCHEME):
                run_id, _, path = bundle_uri[len(RUN_SCHEME):].partition("/")
                folder = self._call(bundle_uri, self.mlflow.artifacts.download_artifacts,
                                    artifact_uri=bundle_uri, dst_path=tmp, tracking_uri=self.uri)
                info = _bundle_info(folder, bundle_uri)
                run = self._call(bundle_uri, self.client.get_run, run_id)
                source = f"{run.info.artifact_uri.rstrip('/')}/{path.strip('/')}" if path else run.info.artifact_uri
            else:
                folder = copy_bundle_folder(bundle_uri, tmp, storage_options)
                info = _bundle_info(folder, bundle_uri)
                run_id, source = self._upload(folder, name, info)
            tags = {WEIGHTS_TAG: weights_sha256(folder), "architecture": info.model,
                    "files": ",".join(sorted(os.listdir(folder))), "somnray_version": somnray_version()}
        try:
            self.client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - absent: create it (a real failure resurfaces below)
            self._call(name, self.client.create_registered_model, name)
        mv = self._call(name, self.client.create_model_version, name, source, run_id=run_id, tags=tags,
                        description=description)
        return RegisteredVersion.of(mv)

    def _upload(self, folder: str, name: str, info: BundleInfo) -> tuple[str, str]:
        """A registration run holding ``folder`` under ``model/``: its id and the artifacts' URI."""
        exp = self.client.get_experiment_by_name(REGISTRY_EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else self._call(
            REGISTRY_EXPERIMENT, self.client.create_experiment, REGISTRY_EXPERIMENT)
        run = self._call(name, self.client.create_run, exp_id, run_name=f"register {name}",
                         tags={"somnray.architecture": info.model})
        run_id = run.info.run_id
        try:
            self._call(name, self.client.log_artifacts, run_id, folder, ARTIFACT_DIR)
        except RegistryError:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id)
        return run_id, f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"

    def set_alias(self, name: str, version: str, alias: str) -> RegisteredVersion:
        """Point ``models:/NAME@ALIAS`` at ``version`` (moving it if it pointed elsewhere)."""
        if not str(version).isdigit():
            raise RegistryError(f"version must be a version number, got {version!r}")
        self._call(f"{name}@{alias}", self.client.set_registered_model_alias, name, alias, str(version))
        return self.version(f"{REGISTRY_SCHEME}{name}@{alias}")

    # -- fetching --------------------------------------------------------------------------------
    def fetch(self, uri: str, cache_dir: str | None = None) -> tuple[str, RegisteredVersion]:
        """A local folder holding the bundle of ``uri`` (from the cache, else downloaded into it).

        Raises
        ------
        RegistryError
            Unknown model, version or alias, or downloaded weights whose SHA-256 is not the one
            recorded at registration.
        """
        version = self.version(uri)
        server = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        target = os.path.join(cache_dir or model_cache_dir(), server, _quote(version.name), version.version)
        if not (os.path.isfile(os.path.join(target, INFO_FILE))
                and os.path.isfile(os.path.join(target, WEIGHTS_FILE))):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
            try:
                folder = self._call(uri, self.mlflow.artifacts.download_artifacts,
                                    artifact_uri=version.uri, dst_path=tmp, tracking_uri=self.uri,
                                    registry_uri=self.uri)
                expected = version.tags.get(WEIGHTS_TAG)
                if expected and weights_sha256(folder) != expected:
                    raise RegistryError(f"{version.uri}: the downloaded {WEIGHTS_FILE} does not have the "
                                        f"SHA-256 recorded at registration ({expected[:12]}…)")
                try:  # a concurrent fetch of the same version may have won: keep its copy
                    os.replace(folder, target)
                except OSError:
                    if not os.path.isfile(os.path.join(target, WEIGHTS_FILE)):
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target, version


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _bundle_info(folder: str, source: str) -> BundleInfo:
    from somnray.core.errors import ConfigError

    for f in (INFO_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(folder, f)):
            raise ConfigError(source, [f"not a somnray model bundle (no {f})"])
    try:
        with open(os.path.join(folder, INFO_FILE)) as f:
            return BundleInfo.from_json(f.read(), f"{source}/{INFO_FILE}")
    except ValueError as exc:
        raise ConfigError(source, [str(exc)]) from None


def copy_bundle_folder(bundle_uri: str, dest: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Copy every file of the bundle folder behind ``bundle_uri`` (a run or bundle URI) into ``dest``."""
    loc = bundle_location(bundle_uri, storage_options)
    root = loc.path.rstrip("/")
    for f in loc.find():
        rel = f.path[len(root):].lstrip("/")
        local = os.path.join(dest, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        loc.fs.get_file(f.path, local)
    return dest


def model_cache_dir() -> str:
    """Where registered versions are cached: ``SOMNRAY_MODEL_CACHE``, else ``~/.cache/somnray/models``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "somnray", "models")


def fetch_registered_bundle(uri: str) -> tuple[str, RegisteredVersion]:
    """The local cached folder of a ``models:/`` URI and the version it named (server from the environment)."""
    return Registry().fetch(uri)


__all__ = ["CACHE_ENV", "INSTALL_HINT", "REGISTRY_SCHEME", "RegisteredVersion", "Registry", "RegistryError",
           "TRACKING_ENV", "copy_bundle_folder", "fetch_registered_bundle", "is_registry_uri",
           "model_cache_dir", "parse_registry_uri", "require_mlflow", "tracking_uri"]
