"""The in-memory result of preparing one recording (before it becomes a Parquet row)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PreparedRecording:
    """One recording after reading, channel derivation, resampling, filtering, epoching,
    label mapping, trimming and normalisation.

    Parameters
    ----------
    recording_id : str
        Manifest id; the only name outputs ever use (never EDF header fields).
    subject_id : str
        Subject the night belongs to (splits are subject-wise).
    cohort : str
        Name of the cohort profile used.
    signals : dict of str to ndarray or None
        ``(n_epochs, 3000)`` float32 per canonical modality of the profile, at 100 Hz, normalised;
        None when the recording lacks the modality entirely.
    available : dict of str to ndarray
        ``(n_epochs,)`` bool per modality: false where the epoch is unusable (flat, detached,
        clipped, NaN) or the modality is absent.
    labels : ndarray
        ``(n_epochs,)`` int8: 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 movement/unscored.
    epoch_index : ndarray
        ``(n_epochs,)`` int32: position of each kept epoch in the original recording (after
        trimming the indices are not contiguous from 0), so outputs can be aligned to the source.
    info : dict
        Non-identifying facts for the dataset manifest: native sampling rates, duration,
        epochs trimmed, warnings.  Never EDF patient or recording header fields.
    """

    recording_id: str
    subject_id: str
    cohort: str
    signals: dict[str, np.ndarray | None]
    available: dict[str, np.ndarray]
    labels: np.ndarray
    epoch_index: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_epochs(self) -> int:
        """Number of 30-s epochs kept."""
        return int(self.labels.shape[0])
