"""Random sources: how a seed or a generator becomes the streams the generator draws from.

Every function of :mod:`somnray.data.synth` is deterministic given its seed; these two helpers are
where seeds turn into :class:`numpy.random.Generator` objects.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__: list[str] = []  # helpers of the package's other modules only


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _child_rng(base: int, key: str) -> np.random.Generator:
    # One independent stream per named component: a channel's noise does not depend on which other
    # channels were simulated before it (dropping the EOG leaves the EEG bit-identical).
    return np.random.default_rng([base, zlib.crc32(key.encode())])
