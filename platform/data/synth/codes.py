"""Stage codes of the simulated hypnograms and their texts in each cohort's files.

Hypnograms are simulated in R&K codes; this module holds those codes, their AASM labels of the data
contract and the stage texts each file format writes (Sleep-EDF annotations, NSRR event concepts,
the generic CSV), plus the 30-s scoring epoch every other module counts in.
"""

from __future__ import annotations

import numpy as np

from somnray.core.constants import EPOCH_SECONDS, STAGES

__all__ = [
    "AASM_LABELS", "EPOCH_S", "GENERIC_STAGE_TEXT", "NSRR_STAGE_CONCEPT", "RK_MOVEMENT", "RK_REM", "RK_S1",
    "RK_S2", "RK_S3", "RK_S4", "RK_UNSCORED", "RK_W", "SLEEP_EDF_STAGE_TEXT",
]

#: Scoring epoch length (R&K and AASM): the platform's, under the short name the generator uses.
EPOCH_S = EPOCH_SECONDS

# Hypnograms are simulated in R&K codes, numbered like the NSRR concepts (``Wake|0`` … ``REM
# sleep|5``, ``Movement|6``, ``Unscored|9``), because two of the three formats are R&K-scored and
# AASM labels follow from them without loss.
RK_W, RK_S1, RK_S2, RK_S3, RK_S4, RK_REM, RK_MOVEMENT, RK_UNSCORED = 0, 1, 2, 3, 4, 5, 6, 9
_RK_CODES = (RK_W, RK_S1, RK_S2, RK_S3, RK_S4, RK_REM, RK_MOVEMENT, RK_UNSCORED)
#: R&K code → AASM label of the data contract (0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored).
_RK_TO_AASM = np.array([0, 1, 2, 3, 3, 4, -1, -1, -1, -1], dtype=np.int8)
#: AASM class names, indexed by label.
AASM_LABELS: tuple[str, ...] = STAGES

SLEEP_EDF_STAGE_TEXT: dict[int, str] = {
    RK_W: "Sleep stage W", RK_S1: "Sleep stage 1", RK_S2: "Sleep stage 2", RK_S3: "Sleep stage 3",
    RK_S4: "Sleep stage 4", RK_REM: "Sleep stage R", RK_MOVEMENT: "Movement time",
    RK_UNSCORED: "Sleep stage ?",
}
NSRR_STAGE_CONCEPT: dict[int, str] = {
    RK_W: "Wake|0", RK_S1: "Stage 1 sleep|1", RK_S2: "Stage 2 sleep|2", RK_S3: "Stage 3 sleep|3",
    RK_S4: "Stage 4 sleep|4", RK_REM: "REM sleep|5", RK_MOVEMENT: "Movement|6",
    RK_UNSCORED: "Unscored|9",
}
#: The generic profile is AASM-scored: S3 and S4 are one class, movement/unscored epochs are "?".
GENERIC_STAGE_TEXT: dict[int, str] = {
    RK_W: "W", RK_S1: "N1", RK_S2: "N2", RK_S3: "N3", RK_S4: "N3", RK_REM: "R",
    RK_MOVEMENT: "?", RK_UNSCORED: "?",
}
