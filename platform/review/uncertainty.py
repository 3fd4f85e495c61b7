"""How sure the model was of each epoch: confidence, margin, entropy, and the review's score.

A scored night's ``<id>_epochs.parquet`` may carry ``confidence``, ``margin`` and ``entropy``
columns (calibrated scorers write them); older outputs only hold the class probabilities
``prob_W`` … ``prob_REM``.  :func:`epoch_uncertainty` is the one place that decides which to use,
so everything the review ranks reads the same numbers whichever outputs it is given.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from somnray.core.constants import N_CLASSES
from somnray.serve.outputs import PROB_COLUMNS

#: Per-epoch columns a scorer may write itself; computed from the probabilities when absent.
UNCERTAINTY_COLUMNS = ("confidence", "margin", "entropy")


def probabilities(table: pa.Table) -> np.ndarray:
    """``(n, 5)`` float64 class probabilities of a per-epoch table (NaN rows where null)."""
    return np.stack([np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float64)
                     for c in PROB_COLUMNS], axis=1)


def epoch_uncertainty(table: pa.Table) -> dict[str, np.ndarray]:
    """``confidence``, ``margin`` and ``entropy`` of every epoch of a per-epoch table.

    Taken from the table's own columns when it has all three; otherwise computed from
    ``prob_W`` … ``prob_REM``:

    * ``confidence`` — the highest class probability (the probability of the stage given);
    * ``margin`` — highest minus second-highest probability (0: two stages tied);
    * ``entropy`` — Shannon entropy of the five probabilities divided by ``ln 5``, so 0 is
      certain and 1 is uniform.

    Unscored epochs (no probabilities) get NaN.
    """
    if all(c in table.column_names for c in UNCERTAINTY_COLUMNS):
        return {c: np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float64)
                for c in UNCERTAINTY_COLUMNS}
    p = probabilities(table)
    top2 = -np.sort(-p, axis=1)[:, :2] if len(p) else np.zeros((0, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -terms.sum(axis=1) / math.log(N_CLASSES)
    entropy[~np.isfinite(p).all(axis=1)] = np.nan
    return {"confidence": top2[:, 0], "margin": top2[:, 0] - top2[:, 1], "entropy": entropy}


def uncertainty_score(confidence: np.ndarray) -> np.ndarray:
    """The review's ranking score of each epoch: ``1 - confidence``.

    It is the model's own probability that the stage it gave is wrong, so the sum over a
    night's epochs is the night's expected number of errors and the epochs with the highest
    score are those where a technician's look is most likely to change something.
    """
    return 1.0 - np.asarray(confidence, dtype=np.float64)


__all__ = ["UNCERTAINTY_COLUMNS", "epoch_uncertainty", "probabilities", "uncertainty_score"]
