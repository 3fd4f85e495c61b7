"""Model registry: ``@register_model`` on a small builder function, one ``create_model``.

Each variant is a few-line function named after the variant, so the list of models is the list
of functions decorated here (timm's ``_registry.py`` habit).
"""

from __future__ import annotations

import fnmatch
from typing import Callable, TypeVar

from somnray.core.config import did_you_mean

from .base import SleepStagingModel

_MODELS: dict[str, Callable[..., SleepStagingModel]] = {}
_F = TypeVar("_F", bound=Callable[..., SleepStagingModel])


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


def _import_architectures() -> None:
    # The architecture modules register themselves on import; importing them here (not at the top)
    # keeps registry.py free of import cycles.
    from . import architectures  # noqa: F401
