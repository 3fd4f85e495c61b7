"""Where a model bundle is: a training run (``<run>/model/``) or a bundle folder, local or remote.

Bundles themselves (``model.pt`` + ``model.json``) are :mod:`somnray.models.bundle`'s; this module
finds one behind a URI and makes it a local folder that :func:`~somnray.models.bundle.load_bundle`
can read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE

#: Folder of the exported bundle inside a training run.
BUNDLE_DIR = "model"


def bundle_location(run_or_bundle_uri: str | os.PathLike[str] | StorageLocation,
                    storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The bundle folder of a run URI (``<run>/model/``) or of a bundle folder itself.

    Raises
    ------
    ConfigError
        Neither the URI nor ``<uri>/model`` holds ``model.json`` and ``model.pt``.
    """
    root = resolve(run_or_bundle_uri, storage_options)
    for candidate in (root, root.join(BUNDLE_DIR)):
        if candidate.join(INFO_FILE).exists() and candidate.join(WEIGHTS_FILE).exists():
            return candidate
    raise ConfigError(root.uri, [
        f"no model bundle: neither {INFO_FILE} + {WEIGHTS_FILE} in this folder nor in its "
        f"{BUNDLE_DIR}/ subfolder; give a training run URI (which exports <run>/{BUNDLE_DIR}/) or "
        "a bundle folder"])


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


__all__ = ["BUNDLE_DIR", "bundle_location", "local_bundle"]
