"""Builders of scored nights for the serve tests (no model involved: probabilities are made up).

Imported by name (`from night_factory import ...`): tests/serve is on sys.path (no package)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from somnray.serve.scored import ModelInfo, ScoredNight

MODEL = ModelInfo("coresleep_tiny", "file:///models/coresleep_tiny/checkpoint_000003", "9.9.9")


def night_from_stages(stages: Sequence[int], *, recording_id: str = "night-01",
                      epoch_index: Sequence[int] | None = None,
                      modalities: tuple[str, ...] = ("eeg", "eog"),
                      available: np.ndarray | None = None, confidence: float = 0.8,
                      **kwargs) -> ScoredNight:
    """A night whose argmax reproduces ``stages`` (-1 rows get no modality and NaN probabilities)."""
    st = np.asarray(stages, dtype=np.int64)
    n = st.size
    probs = np.full((n, 5), (1 - confidence) / 4, dtype=np.float32)
    probs[np.arange(n), np.clip(st, 0, 4)] = confidence
    probs[st < 0] = np.nan
    if available is None:
        available = np.ones((n, len(modalities)), dtype=bool)
        available[st < 0] = False
    idx = np.arange(n) if epoch_index is None else np.asarray(epoch_index)
    return ScoredNight(recording_id, idx, probs, modalities, available, MODEL, **kwargs)


def realistic_stages(hours: float = 8.0) -> np.ndarray:
    """A plausible night: 15 min wake, ~90-min NREM/REM cycles, 10 min final wake."""
    n = int(hours * 120)
    cycle = [1] * 6 + [2] * 40 + [3] * 40 + [2] * 30 + [4] * 30 + [0] * 2
    seq = [0] * 30
    while len(seq) < n:
        seq += cycle
    st = np.array(seq[:n])
    st[-20:] = 0
    return st



def realistic_night() -> ScoredNight:
    """An 8-h night with noisy probabilities, an EOG dropout and a short total signal loss."""
    rng = np.random.default_rng(0)
    st = realistic_stages()
    n = st.size
    probs = np.full((n, 5), 0.05, np.float32)
    probs[np.arange(n), st] = 0.8
    probs += rng.uniform(0, 0.3, probs.shape).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    avail = np.ones((n, 3), bool)
    avail[300:340, 1] = False            # EOG detached for 20 min
    avail[500:504, :] = False            # everything lost for 2 min: unscored
    avail[:, 2] &= rng.uniform(size=n) > 0.05
    return ScoredNight("psg-0001", np.arange(n), probs, ("eeg", "eog", "emg"), avail, MODEL)
