"""Where a model bundle is: a training run (``<run>/model/``), a bundle folder, or a registered model.

Bundles themselves (``model.pt`` + ``model.json``) are :mod:`somnray.models.bundle`'s; this module
finds one behind a URI and makes it a local folder that :func:`~somnray.models.bundle.load_bundle`
can read.  :func:`resolve_bundle` is the one place a model URI is resolved: a path or storage URI
of a run or bundle folder, or ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` of the model
registry (:mod:`.registry`, downloaded once into a local cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from .registry import RegisteredVersion

#: Folder of the exported bundle inside a training run.
BUNDLE_DIR = "model"


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
    registered: "RegisteredVersion | None" = None


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
    from .registry import fetch_registered_bundle, is_registry_uri

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
    digest = hashlib.sha256()
    with open(os.path.join(folder, WEIGHTS_FILE), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


__all__ = ["BUNDLE_DIR", "ResolvedBundle", "bundle_location", "local_bundle", "resolve_bundle",
           "weights_sha256"]
