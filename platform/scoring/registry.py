"""The model registry: bundles as registered model versions on an MLflow tracking server.

A registered model version holds a bundle folder as it is (``model.pt``, ``model.json`` and
whatever else the folder has, such as its model card) as the artifacts of an MLflow run, so the
registry's own artifact store (a local folder, S3, ...) keeps the bytes and the registry keeps the
names, versions and aliases::

    models:/NAME/VERSION      one version (immutable)
    models:/NAME@ALIAS        the version an alias points at now (``champion``, ``staging``...)

This module is the client (names, versions, aliases, files in and out); what a bundle is stays in
:mod:`.bundles`, whose :func:`~.bundles.resolve_bundle` turns ``models:/`` URIs into a folder of
the local model cache and whose :func:`~.bundles.register_bundle` registers a run or bundle URI.

The server is ``MLFLOW_TRACKING_URI`` (or an explicit ``tracking_uri``). MLflow is an optional
dependency (``pip install 'somnray[mlflow]'``): without it, bundles by path or URI work as before
and anything registry-related fails with :data:`INSTALL_HINT`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from somnray.core.errors import SomnrayError
from somnray.core.version import somnray_version


#: Prefix of registered-model URIs (MLflow's own scheme).
REGISTRY_SCHEME = "models:/"
#: Prefix of MLflow run-artifact URIs accepted by :func:`register_bundle`.
RUN_SCHEME = "runs:/"
#: Environment variable naming the MLflow tracking (and registry) server.
TRACKING_ENV = "MLFLOW_TRACKING_URI"
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
        found = self._call(name, self.client.search_model_versions, f"name = '{name}'")
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
    def register_folder(self, folder: str, name: str, *, weights_digest: str, architecture: str,
                        description: str | None = None, logged: str | None = None) -> RegisteredVersion:
        """Create the next version of ``name`` (the name on first use) holding a local bundle folder.

        Parameters
        ----------
        folder : str
            The bundle's files (all of them are registered).
        name : str
            The registered model.
        weights_digest, architecture : str
            SHA-256 of ``model.pt`` and the architecture, recorded as version tags.
        description : str, optional
            The version's description.
        logged : str, optional
            ``runs:/RUN_ID/PATH`` when ``folder`` is a copy of a bundle a run already logged to this
            server: the version points there instead of uploading the files again.

        Raises
        ------
        RegistryError
            The server refused.
        """
        if logged is not None:
            run_id, _, path = logged[len(RUN_SCHEME):].partition("/")
            run = self._call(logged, self.client.get_run, run_id)
            source = run.info.artifact_uri.rstrip("/") + (f"/{path.strip('/')}" if path.strip("/") else "")
        else:
            run_id, source = self._upload(folder, name, architecture)
        tags = {WEIGHTS_TAG: weights_digest, "architecture": architecture,
                "files": ",".join(sorted(os.listdir(folder))), "somnray_version": somnray_version()}
        try:
            self.client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - absent: create it (a real failure resurfaces below)
            self._call(name, self.client.create_registered_model, name)
        mv = self._call(name, self.client.create_model_version, name, source, run_id=run_id, tags=tags,
                        description=description)
        return RegisteredVersion.of(mv)

    def _upload(self, folder: str, name: str, architecture: str) -> tuple[str, str]:
        """A registration run holding ``folder`` under ``model/``: its id and the artifacts' URI."""
        exp = self.client.get_experiment_by_name(REGISTRY_EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else self._call(
            REGISTRY_EXPERIMENT, self.client.create_experiment, REGISTRY_EXPERIMENT)
        run = self._call(name, self.client.create_run, exp_id, run_name=f"register {name}",
                         tags={"somnray.architecture": architecture})
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

    # -- reading files ---------------------------------------------------------------------------
    def download(self, uri: str, dest: str) -> str:
        """Download the files of ``models:/…`` or ``runs:/…`` into ``dest``; the local folder."""
        return self._call(uri, self.mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=dest,
                          tracking_uri=self.uri, registry_uri=self.uri)

    @property
    def server_key(self) -> str:
        """A short hash naming this server in local caches (never the URI: it may hold a password)."""
        return hashlib.sha256(self.uri.encode()).hexdigest()[:12]


__all__ = ["INSTALL_HINT", "REGISTRY_SCHEME", "RUN_SCHEME", "RegisteredVersion", "Registry", "RegistryError",
           "TRACKING_ENV", "WEIGHTS_TAG", "is_registry_uri", "parse_registry_uri", "require_mlflow",
           "tracking_uri"]
