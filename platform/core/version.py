"""The installed somnray version, written into every dataset manifest, bundle and scored output."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def somnray_version() -> str:
    """The installed distribution's version, or ``"unknown"`` when running from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("somnray")
    except PackageNotFoundError:
        return "unknown"
