"""Hypnograms: the scored night (:class:`Hypnogram`) and its simulation with sleep-cycle structure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .codes import _RK_CODES, _RK_TO_AASM, EPOCH_S, RK_MOVEMENT, RK_REM, RK_S1, RK_S2, RK_S3, RK_S4, RK_UNSCORED, RK_W
from .seeding import _as_rng

__all__ = ["Hypnogram", "simulate_hypnogram"]


@dataclass(frozen=True, eq=False)
class Hypnogram:
    """A scored night: one R&K code per 30-s epoch.

    Parameters
    ----------
    rk : numpy.ndarray of int8
        Codes 0 W, 1 S1, 2 S2, 3 S3, 4 S4, 5 REM, 6 movement time, 9 unscored ("?").
    """

    rk: np.ndarray

    def __post_init__(self) -> None:
        rk = np.asarray(self.rk, dtype=np.int8)
        bad = np.setdiff1d(np.unique(rk), _RK_CODES)
        if rk.ndim != 1 or rk.size == 0 or bad.size:
            raise ValueError(f"Hypnogram.rk must be a non-empty 1-D array of codes {_RK_CODES}; "
                             f"got shape {rk.shape} with unknown codes {bad.tolist()}")
        object.__setattr__(self, "rk", rk)

    @property
    def n_epochs(self) -> int:
        """Number of 30-s epochs."""
        return int(self.rk.size)

    @property
    def duration_s(self) -> int:
        """Length of the night in seconds."""
        return self.n_epochs * EPOCH_S

    @property
    def aasm(self) -> np.ndarray:
        """Labels of the data contract: 0 W, 1 N1, 2 N2, 3 N3 (S3+S4), 4 REM, -1 movement/unscored."""
        return _RK_TO_AASM[self.rk]

    @classmethod
    def from_aasm(cls, labels: Sequence[int] | np.ndarray) -> Hypnogram:
        """Build a hypnogram from AASM labels (N3 becomes S3, -1 becomes unscored)."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.isin(labels, [-1, 0, 1, 2, 3, 4]).all():
            raise ValueError(f"AASM labels must be a 1-D sequence of -1..4; got {np.unique(labels)}")
        lookup = np.array([RK_W, RK_S1, RK_S2, RK_S3, RK_REM, RK_UNSCORED], dtype=np.int8)
        return cls(lookup[labels])  # -1 indexes the last entry, "unscored"


# Markov transition matrices, one per cycle-phase target (rows: current W, N1, N2, N3, REM; columns:
# next).  The time-varying target gives the sleep-cycle structure; the chain supplies the epoch-level
# irregularity of real scoring: brief awakenings followed by N1, N2/N3 alternation, REM onsets
# through N2, REM interrupted by arousals.
_T_WAKE, _T_ONSET, _T_N2, _T_N3, _T_REM = range(5)
_TRANSITIONS = np.array([
    # target wake (before lights-off sleep onset and after the final awakening)
    [[0.96, 0.04, 0.00, 0.00, 0.00],
     [0.45, 0.45, 0.10, 0.00, 0.00],
     [0.30, 0.20, 0.50, 0.00, 0.00],
     [0.10, 0.05, 0.45, 0.40, 0.00],
     [0.40, 0.15, 0.05, 0.00, 0.40]],
    # target sleep onset (first minutes of the first cycle): W → N1 → N2
    [[0.60, 0.38, 0.02, 0.00, 0.00],
     [0.08, 0.74, 0.18, 0.00, 0.00],
     [0.02, 0.10, 0.88, 0.00, 0.00],
     [0.00, 0.00, 0.30, 0.70, 0.00],
     [0.05, 0.30, 0.05, 0.00, 0.60]],
    # target light NREM (N2)
    [[0.55, 0.40, 0.05, 0.00, 0.00],
     [0.04, 0.68, 0.28, 0.00, 0.00],
     [0.011, 0.013, 0.966, 0.010, 0.00],
     [0.003, 0.002, 0.12, 0.875, 0.00],
     [0.02, 0.03, 0.12, 0.00, 0.83]],
    # target slow-wave sleep (N3)
    [[0.50, 0.45, 0.05, 0.00, 0.00],
     [0.03, 0.50, 0.47, 0.00, 0.00],
     [0.006, 0.006, 0.86, 0.128, 0.00],
     [0.004, 0.001, 0.025, 0.970, 0.00],
     [0.05, 0.05, 0.90, 0.00, 0.00]],
    # target REM
    [[0.50, 0.42, 0.03, 0.00, 0.05],
     [0.03, 0.55, 0.12, 0.00, 0.30],
     [0.006, 0.010, 0.870, 0.004, 0.110],
     [0.003, 0.002, 0.25, 0.745, 0.00],
     [0.009, 0.012, 0.009, 0.00, 0.970]],
])
_TRANSITION_CDF = np.cumsum(_TRANSITIONS / _TRANSITIONS.sum(axis=2, keepdims=True), axis=2)
_STATE_TO_RK = np.array([RK_W, RK_S1, RK_S2, RK_S3, RK_REM], dtype=np.int8)


def simulate_hypnogram(n_epochs: int, rng: np.random.Generator | int | None = 0, *, n3_scale: float = 1.0,
                       fragmentation: float = 0.0) -> Hypnogram:
    """Simulate an R&K-scored night with sleep-cycle structure.

    The night has a wake period before sleep onset (6–15 % of the recording), a sleep period of
    ~90-min NREM–REM cycles (compressed for recordings under ~3 h so that every stage appears) and a
    final wake period (4–10 %).  Within a cycle the target stage goes N2 → N3 → N2 → REM; N3 is
    plentiful in the first cycles and absent from the last, REM periods lengthen across the night.
    Epochs follow a Markov chain whose transition matrix depends on that target, which adds brief
    awakenings, stage flicker and REM interruptions.  Deep N3 in early cycles is scored S4, a few
    awakenings are scored movement time and a few isolated epochs "?".

    Parameters
    ----------
    n_epochs : int
        Length of the recording in 30-s epochs (at least 20).
    rng : numpy.random.Generator or int
        Random source or seed.
    n3_scale : float
        Multiplies each cycle's slow-wave sleep (a population with less N3 below 1).
    fragmentation : float
        Probability that a sleep epoch becomes a brief awakening followed by one N1 epoch. The
        defaults draw nothing more from ``rng``, so they leave the night as it always was.

    Returns
    -------
    Hypnogram
        Typical 8-h proportions: W 15–30 %, N1 5–10 %, N2 40–50 %, N3 10–20 %, REM 15–25 %.
    """
    if n_epochs < 20:
        raise ValueError(f"simulate_hypnogram: n_epochs must be >= 20 (10 min); got {n_epochs}")
    rng = _as_rng(rng)
    lead = max(2, round(n_epochs * rng.uniform(0.06, 0.15)))
    tail = max(2, round(n_epochs * rng.uniform(0.04, 0.10)))
    sleep = n_epochs - lead - tail
    targets = np.full(n_epochs, _T_WAKE, dtype=np.intp)
    depth = np.zeros(n_epochs)  # N3 strength of the cycle an epoch belongs to (for S3/S4 scoring)

    n_cycles = max(1, round(sleep / 180))  # ~90-min cycles
    weights = rng.uniform(0.85, 1.15, n_cycles)
    bounds = lead + np.round(np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * sleep)
    bounds = bounds.astype(int)
    for k in range(n_cycles):
        c0, c1 = bounds[k], bounds[k + 1]
        pos = k / (n_cycles - 1) if n_cycles > 1 else 0.0
        rem_fraction = 0.2 if n_cycles == 1 else 0.12 + 0.33 * pos
        n3_strength = 1.0 if n_cycles == 1 else float(np.clip(1.0 - 1.4 * pos, 0.0, 1.0))
        length = c1 - c0
        nrem = length - round(length * rem_fraction * rng.uniform(0.8, 1.2))
        targets[c0:c0 + nrem] = _T_N2
        n3_start = c0 + round(nrem * rng.uniform(0.18, 0.3))
        n3_len = round(nrem * 0.6 * n3_strength * n3_scale)
        targets[n3_start:n3_start + n3_len] = _T_N3
        depth[c0:c1] = n3_strength
        targets[c0 + nrem:c1] = _T_REM
        if k == 0:
            targets[c0:c0 + int(rng.integers(4, 10))] = _T_ONSET

    # The chain itself: a loop over epochs (about a thousand a night), not over samples.
    draws = rng.random(n_epochs)
    states = np.empty(n_epochs, dtype=np.intp)
    state = 0
    for i in range(n_epochs):
        state = int(np.searchsorted(_TRANSITION_CDF[targets[i], state], draws[i], side="right"))
        state = min(state, 4)
        states[i] = state
    # Recordings start before lights-off and end after lights-on: the subject is awake at both.
    states[0] = states[-2:] = 0
    rk = _STATE_TO_RK[states].copy()

    # R&K S4 (delta > 50 % of the epoch): the inside of N3 runs in deep (early) cycles.
    n3 = rk == RK_S3
    inner = n3 & np.r_[False, n3[:-1]] & np.r_[n3[1:], False]
    rk[inner & (rng.random(n_epochs) < 0.8 * depth)] = RK_S4
    # Movement time: some awakenings out of sleep are obscured by movement artefact.
    in_sleep = np.zeros(n_epochs, dtype=bool)
    in_sleep[lead:n_epochs - tail] = True
    after_sleep = np.r_[False, (rk[:-1] != RK_W)]
    rk[in_sleep & after_sleep & (rk == RK_W) & (rng.random(n_epochs) < 0.2)] = RK_MOVEMENT
    # A few epochs the scorer could not stage.
    rk[in_sleep & (rng.random(n_epochs) < 0.002)] = RK_UNSCORED
    if fragmentation > 0:
        # Drawn last, so that the rest of the night is the one the same seed gives without it.
        woken = np.flatnonzero(in_sleep & (rk != RK_W) & (rng.random(n_epochs) < fragmentation))
        rk[woken] = RK_W
        after = woken[woken + 1 < n_epochs - tail] + 1
        rk[after[rk[after] != RK_W]] = RK_S1
    return Hypnogram(rk)


def _runs(codes: Sequence) -> list[tuple[int, int, object]]:
    """Run-length encoding: ``(first_epoch, n_epochs, value)`` for each run of equal values."""
    codes = list(codes)
    out: list[tuple[int, int, object]] = []
    start = 0
    for i in range(1, len(codes) + 1):
        if i == len(codes) or codes[i] != codes[start]:
            out.append((start, i - start, codes[start]))
            start = i
    return out
