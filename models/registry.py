"""Model registry: ``@register_model`` on a small builder function, one ``create_model``.

Each variant is a few-line function named after the variant, so the list of models is the list
of functions decorated here (timm's ``_registry.py`` habit).

Architectures outside ``somnray.models`` register themselves the same way, in their own module
(``docs/extending.md``). Before it answers, the registry imports, in whichever process asks (the
CLI, a Ray Train worker, a Ray Data actor, a Serve replica):

* the modules named by the :data:`ENTRY_POINT_GROUP` entry points of the installed distributions
  (``[project.entry-points."somnray.models"]`` ``toy = "toy_package.arch"``): installed once,
  found everywhere that environment is;
* the modules named, comma-separated, by the ``SOMNRAY_MODEL_MODULES`` environment variable, for
  code that is not installed (it must be importable: on ``sys.path``, e.g. the working directory).
  :func:`somnray.core.session.ensure_ray` passes the variable on to every Ray worker.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from importlib import metadata
from typing import Callable, TypeVar

from somnray.core.config import did_you_mean
from somnray.core.constants import MODEL_MODULES_ENV

from .base import SleepStagingModel

#: Entry-point group through which installed distributions add architecture modules.
ENTRY_POINT_GROUP = "somnray.models"

_MODELS: dict[str, Callable[..., SleepStagingModel]] = {}
_F = TypeVar("_F", bound=Callable[..., SleepStagingModel])
# Scanning the installed distributions costs tens of milliseconds: once per process.
_entry_points_loaded = False


def register_model(fn: _F) -> _F:
    """Register ``fn`` under its ``__name__`` as a model builder."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by a shell-style ``pattern``."""
    _import_architectures()
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    _import_architectures()
    return name in _MODELS


def create_model(name: str, **overrides) -> SleepStagingModel:
    """Build the registered model ``name``, with keyword ``overrides`` of its defaults.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the closest registered names.
    """
    _import_architectures()
    if name not in _MODELS:
        hint = did_you_mean(name, _MODELS)
        raise ValueError(f"unknown model {name!r}{hint} Registered models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**overrides)


#: The built-in architecture modules, one per paper; each registers its variants when imported.
BUILTIN_MODULES = ("somnray.models.cimsleepnet", "somnray.models.mc2sleepnet", "somnray.models.coresleep")


def _import_architectures() -> None:
    # The architecture modules import this one to register themselves, so they are found by name,
    # like plugins, rather than imported from here (which would make registry and architectures
    # import each other). Built-ins first, so a plugin reusing a built-in name fails in
    # register_model instead of shadowing it.
    for module in BUILTIN_MODULES:
        importlib.import_module(module)  # a dictionary lookup once imported
    _import_plugins()


def _import_plugins() -> None:
    """Import the entry-point modules (once) and the ``SOMNRAY_MODEL_MODULES`` ones.

    Raises
    ------
    ImportError
        Naming the entry point or the variable whose module cannot be imported.
    """
    global _entry_points_loaded
    if not _entry_points_loaded:
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except ImportError as exc:
                raise ImportError(f"entry point {entry.name} = {entry.value!r} (group {ENTRY_POINT_GROUP!r}): "
                                  f"cannot import it: {exc}") from exc
        _entry_points_loaded = True
    value = os.environ.get(MODEL_MODULES_ENV, "")
    for module in filter(None, (part.strip() for part in value.split(","))):
        try:
            importlib.import_module(module)  # a dictionary lookup once imported
        except ImportError as exc:
            raise ImportError(f"{MODEL_MODULES_ENV}={value!r}: cannot import architecture module {module!r} "
                              f"({exc}); it must be installed or on sys.path (docs/extending.md)") from exc
