"""The domain facts every part of somnray agrees on: the scoring epoch, the stages, the modalities,
and the names of the environment variables more than one package reads.

Pure Python, no dependencies, so that :mod:`somnray.models` (pure PyTorch) can import it too.
"""

from __future__ import annotations

#: Length of one scoring epoch (AASM and R&K both score in 30-s epochs).
EPOCH_SECONDS = 30
#: Rate every signal is resampled to before it is stored or modelled.
SAMPLING_RATE_HZ = 100
#: Samples in one stored epoch (``SAMPLING_RATE_HZ * EPOCH_SECONDS``).
EPOCH_SAMPLES = SAMPLING_RATE_HZ * EPOCH_SECONDS

#: The five AASM stages in class-index order (0 W, 1 N1, 2 N2, 3 N3, 4 REM).
STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
N_CLASSES = len(STAGES)
#: Label of an epoch that is not scored (movement, unscored, unknown); ignored by every loss.
IGNORE_INDEX = -1
#: Class index → name, including the ignored label.
STAGE_NAMES: dict[int, str] = {IGNORE_INDEX: "unscored", **dict(enumerate(STAGES))}

#: Modalities a cohort profile maps channels to, in the order the stored dataset keeps them.
CANONICAL_MODALITIES: tuple[str, ...] = ("eeg", "eog", "emg")
#: Every modality name a model may be built for (the canonical ones plus a second EEG and ECG).
KNOWN_MODALITIES: tuple[str, ...] = (*CANONICAL_MODALITIES, "eeg2", "ecg")

#: Per-recording outcome of a cohort run (preparation or scoring).
STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_REJECTED = "rejected"

#: Comma-separated modules that register extra architectures (``somnray.models.registry``). Every
#: process that builds a model reads it, so ``somnray.core.session`` forwards it to Ray workers.
MODEL_MODULES_ENV = "SOMNRAY_MODEL_MODULES"
