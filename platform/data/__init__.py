"""Cohort data: profiles, readers, preprocessing, the prepared dataset and its Ray Data pipeline.

The public entry points for other packages are :class:`~somnray.data.dataset.PreparedDataset` (read
and write a prepared dataset), :func:`prepare_cohort` (prepare a cohort with Ray Data) and
:func:`manifest_document` (the ``manifest.json`` of a dataset another writer fills, such as
``somnray review``).  How the
pipeline wires Ray Data is internal to this package.  ``prepare_cohort`` is resolved on first use,
so importing ``somnray.data`` does not import Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PrepareResult", "manifest_document", "prepare_cohort"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
