"""How sure the model was of each epoch: confidence, margin, entropy, and the review's score.

A scored night's ``<id>_epochs.parquet`` may carry ``confidence``, ``margin`` and ``entropy``
columns (calibrated scorers write them); older outputs only hold the class probabilities
``prob_W`` … ``prob_REM``.  :func:`epoch_uncertainty` (``somnray.serve.outputs.epochs_uncertainty``,
which the review page uses too) decides which to use, so everything the review ranks reads the
same numbers whichever outputs it is given.
"""

from __future__ import annotations

import numpy as np
from somnray.serve.outputs import epochs_probabilities, epochs_uncertainty
from somnray.serve.scored import UNCERTAINTY_COLUMNS

#: The probabilities and the confidence, margin and entropy of a per-epoch table: read the way the
#: review page reads them (:mod:`somnray.serve.outputs`), so both rank the same numbers.
probabilities = epochs_probabilities
epoch_uncertainty = epochs_uncertainty


def uncertainty_score(confidence: np.ndarray) -> np.ndarray:
    """The review's ranking score of each epoch: ``1 - confidence``.

    It is the model's own probability that the stage it gave is wrong, so the sum over a
    night's epochs is the night's expected number of errors and the epochs with the highest
    score are those where a technician's look is most likely to change something.
    """
    return 1.0 - np.asarray(confidence, dtype=np.float64)


__all__ = ["UNCERTAINTY_COLUMNS", "epoch_uncertainty", "probabilities", "uncertainty_score"]
