"""Missing-modality simulation and missing-rate curricula: pure, seeded functions on numpy arrays.

Every function takes an availability mask ``present`` of shape ``(L, M)`` (one recording or one
window: ``L`` epochs, ``M`` modalities in the model's column order) or ``(..., L, M)`` (a batch of
windows, simulated independently), and returns a new mask. They only ever turn entries **off**: an
epoch a recording truly lacks stays absent, and a simulation never removes the last present
modality of an epoch.

Scenarios
---------
``partial_chunks``
    CIMSleepNet's protocol (docs/models.md §1.1.1): the missing rate ``r`` is over modality *slots*;
    ``round(r · L · M)`` slots are removed (M counting the modalities the sequence has at all) in chunks of ``chunk_epochs`` (25) consecutive epochs
    on the chunk grid, the (chunk, modality) pairs visited in random order, each removing one
    modality from the chunk where another stays present. With two modalities the maximum
    achievable rate is 0.5. The last chunk is cut short so the count is exact.
``partial_iid``
    Each slot is dropped independently with probability ``r``; an epoch that would lose every
    present modality is re-drawn. Conditioning on "not all" lowers the achieved rate below ``r``
    (for M = 2 and everything present: ``r (1 − r) / (1 − r²) = r / (1 + r)``).
``complete``
    With probability ``r`` a window loses one whole modality (one drawn at random).
``noisy``
    Slots chosen like ``partial_chunks`` are corrupted (additive Gaussian noise at a given σ or
    SNR, or a detachment-like flat line) while the mask stays **on**: the model is not told.

Masks fixed per recording (the evaluation scenarios) use :func:`recording_rng` (seed = base seed +
recording index), so a recording gets the same mask at a given rate in every run, split and
scenario. Training draws a fresh mask for every window from the loop's own generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from .config import MissingConfig

#: CIMSleepNet's base seed for fixed per-recording masks.
DEFAULT_BASE_SEED = 2024

CurriculumKind = Literal["constant", "linear", "step", "cosine"]


def recording_rng(base_seed: int, recording_index: int) -> np.random.Generator:
    """The generator of a fixed per-recording mask: seeded with ``base_seed + recording_index``."""
    return np.random.default_rng(int(base_seed) + int(recording_index))


def _check_mask(present: np.ndarray) -> np.ndarray:
    present = np.asarray(present)
    if present.ndim < 2:
        raise ValueError(f"present must have shape (..., L, M), got {present.shape}")
    return present.astype(bool, copy=True)


def _columns(columns: Sequence[int] | None, n_modalities: int) -> list[int]:
    cols = list(range(n_modalities)) if columns is None else [int(c) for c in columns]
    bad = [c for c in cols if not 0 <= c < n_modalities]
    if bad:
        raise ValueError(f"columns {bad} out of range for {n_modalities} modalities")
    return cols


def _per_sequence(fn):
    """Apply a (L, M) simulation to every sequence of a (..., L, M) batch, in order."""

    def wrapper(present: np.ndarray, *args, **kwargs) -> np.ndarray:
        mask = _check_mask(present)
        if mask.ndim == 2:
            return fn(mask, *args, **kwargs)
        flat = mask.reshape(-1, *mask.shape[-2:])  # (B', L, M)
        out = np.stack([fn(seq, *args, **kwargs) for seq in flat]) if len(flat) else flat
        return out.reshape(mask.shape)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _chunk_slots(present: np.ndarray, rate: float, rng: np.random.Generator, chunk_epochs: int,
                 columns: list[int], keep_one: bool = True) -> np.ndarray:
    """Slots (L, M) chosen by the chunk protocol among present ones.

    With ``keep_one`` a slot is only chosen if its epoch keeps another modality (dropping);
    without it any present slot may be chosen (noise, which does not remove the signal).
    """
    n_epochs, _ = present.shape
    # A modality the sequence lacks entirely (not recorded) has no slots to lose: the rate is
    # over the modalities actually there, as in CIMSleepNet where every recording has both.
    columns = [c for c in columns if present[:, c].any()]
    target = int(round(rate * n_epochs * len(columns)))
    chosen = np.zeros_like(present)
    if target == 0 or n_epochs == 0:
        return chosen
    starts = np.arange(0, n_epochs, chunk_epochs)
    pairs = [(s, c) for s in starts for c in columns]
    count = 0
    for k in rng.permutation(len(pairs)):
        start, col = pairs[k]
        stop = min(start + chunk_epochs, n_epochs)
        remaining = present[start:stop] & ~chosen[start:stop]
        others = np.delete(remaining, col, axis=1).any(axis=1) if keep_one else True
        # An epoch may lose this modality only if it has it and another one stays.
        droppable = np.flatnonzero(remaining[:, col] & others)
        take = droppable[: target - count]
        chosen[start + take, col] = True
        count += len(take)
        if count >= target:
            break
    return chosen


@_per_sequence
def drop_partial_chunks(present: np.ndarray, rate: float, rng: np.random.Generator, *,
                        chunk_epochs: int = 25, columns: Sequence[int] | None = None) -> np.ndarray:
    """CIMSleepNet's random partial missing: chunks of ``chunk_epochs`` lose one modality each.

    Parameters
    ----------
    present : ndarray
        ``(L, M)`` or ``(..., L, M)`` bool availability.
    rate : float
        Fraction of the ``L × len(columns)`` slots to remove (capped by what can be removed
        without leaving an epoch with no modality).
    rng : numpy.random.Generator
        Source of randomness (see :func:`recording_rng` for fixed masks).
    chunk_epochs : int
        Chunk length on the grid ``0, chunk_epochs, 2·chunk_epochs, ...``.
    columns : sequence of int, optional
        Modality columns that may be removed; default all.

    Returns
    -------
    ndarray
        The new mask (a copy; ``present`` is not modified).
    """
    _check_rate(rate)
    if chunk_epochs < 1:
        raise ValueError(f"chunk_epochs must be >= 1, got {chunk_epochs}")
    cols = _columns(columns, present.shape[1])
    return present & ~_chunk_slots(present, rate, rng, chunk_epochs, cols)


@_per_sequence
def drop_partial_iid(present: np.ndarray, rate: float, rng: np.random.Generator, *,
                     columns: Sequence[int] | None = None, max_redraws: int = 100) -> np.ndarray:
    """Each slot dropped independently with probability ``rate``; all-missing epochs re-drawn.

    An epoch that cannot keep a modality after ``max_redraws`` attempts (only possible when
    ``rate`` is 1) keeps its original mask.
    """
    _check_rate(rate)
    cols = _columns(columns, present.shape[1])
    drop = np.zeros_like(present)
    todo = np.arange(present.shape[0])
    for _ in range(max_redraws):
        if not len(todo):
            break
        draw = np.zeros((len(todo), present.shape[1]), dtype=bool)
        draw[:, cols] = rng.random((len(todo), len(cols))) < rate
        drop[todo] = draw
        emptied = ~(present[todo] & ~draw).any(axis=1) & present[todo].any(axis=1)
        todo = todo[emptied]
    drop[todo] = False
    return present & ~drop


@_per_sequence
def drop_complete(present: np.ndarray, rate: float, rng: np.random.Generator, *,
                  columns: Sequence[int] | None = None) -> np.ndarray:
    """With probability ``rate`` the sequence loses one modality (drawn from ``columns``) entirely.

    Epochs where that modality is the only one present keep it (never all-missing).
    """
    _check_rate(rate)
    cols = _columns(columns, present.shape[1])
    if rng.random() >= rate or not cols:
        return present
    return drop_modality(present, cols[int(rng.integers(len(cols)))])


def drop_modality(present: np.ndarray, column: int) -> np.ndarray:
    """Remove modality ``column`` everywhere it is not the epoch's only present modality.

    For the evaluation scenario "modality absent" (EEG-only, EOG-only) set the column to False
    directly instead; this function is the training-time variant that keeps every epoch usable.
    """
    mask = _check_mask(present)
    others = np.delete(mask, column, axis=-1).any(axis=-1)
    mask[..., column] &= ~others
    return mask


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")


# ------------------------------------------------------------------------------------------------
# noise (the mask stays on)
# ------------------------------------------------------------------------------------------------
def corrupt_signals(signals: Mapping[str, np.ndarray], slots: np.ndarray, modalities: Sequence[str],
                    rng: np.random.Generator, *, sigma: float | None = None,
                    snr_db: float | None = None, flatline_prob: float = 0.0) -> dict[str, np.ndarray]:
    """Corrupt the chosen slots of the signals; the availability mask is left to the caller (on).

    Parameters
    ----------
    signals : mapping of str to ndarray
        ``(..., L, S)`` float samples per modality (absent modalities may be missing from the map).
    slots : ndarray
        ``(..., L, M)`` bool: which (epoch, modality) slots to corrupt.
    modalities : sequence of str
        Column order of ``slots``.
    rng : numpy.random.Generator
        Source of randomness.
    sigma : float, optional
        Standard deviation of additive Gaussian noise, in signal units.
    snr_db : float, optional
        Instead, noise power set per epoch so that 10·log10(P_signal / P_noise) = ``snr_db``.
    flatline_prob : float
        Probability that a corrupted slot becomes a flat line at the epoch's mean (an electrode
        detachment) instead of getting noise.

    Returns
    -------
    dict of str to ndarray
        New arrays for corrupted modalities (float32); others are passed through unchanged.
    """
    if sigma is None and snr_db is None and flatline_prob < 1.0:
        raise ValueError("give sigma or snr_db (or flatline_prob = 1)")
    out = dict(signals)
    for col, name in enumerate(modalities):
        if name not in signals:
            continue
        hit = np.asarray(slots[..., col], dtype=bool)
        if not hit.any():
            continue
        x = np.array(signals[name], dtype=np.float32, copy=True)
        epochs = x[hit]  # (K, S)
        flat = rng.random(len(epochs)) < flatline_prob
        if snr_db is not None:
            power = np.mean(epochs.astype(np.float64) ** 2, axis=-1, keepdims=True)
            scale = np.sqrt(power / (10.0 ** (snr_db / 10.0)))
        else:
            scale = np.full((len(epochs), 1), float(sigma or 0.0))
        noisy = epochs + (rng.standard_normal(epochs.shape) * scale).astype(np.float32)
        flat_line = np.broadcast_to(epochs.mean(axis=-1, keepdims=True), epochs.shape)
        x[hit] = np.where(flat[:, None], flat_line, noisy)
        out[name] = x
    return out


# ------------------------------------------------------------------------------------------------
# curricula
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curriculum:
    """Missing rate as a function of the optimizer step.

    ``constant``: ``end`` always. ``linear`` / ``cosine``: ``start`` → ``end`` over
    ``ramp_steps`` (cosine eases in and out), then ``end``. ``step``: ``start`` before the first
    milestone, then equal increments, reaching ``end`` at the last milestone.
    """

    kind: CurriculumKind = "constant"
    start: float = 0.0
    end: float = 0.0
    ramp_steps: int = 0
    milestones: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, cfg: MissingConfig) -> "Curriculum":
        """The curriculum of a missing section (rates left out default to ``cfg.rate``)."""
        cur = cfg.curriculum
        start = cfg.rate if cur.start_rate is None else cur.start_rate
        end = cfg.rate if cur.end_rate is None else cur.end_rate
        return cls(cur.kind, start, end, cur.ramp_steps, tuple(cur.milestones))

    def rate_at(self, step: int) -> float:
        """The missing rate to simulate at optimizer ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "constant":
            return self.end
        if self.kind == "step":
            passed = sum(step >= m for m in self.milestones)
            return self.start + (self.end - self.start) * passed / len(self.milestones)
        progress = min(step / self.ramp_steps, 1.0) if self.ramp_steps else 1.0
        if self.kind == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start + (self.end - self.start) * progress


# ------------------------------------------------------------------------------------------------
# the simulator the input pipeline calls
# ------------------------------------------------------------------------------------------------
class MissingSimulator:
    """Applies a :class:`~somnray.train.config.MissingConfig` to batches at a given step.

    Parameters
    ----------
    cfg : MissingConfig
        The phase's missing section.
    modalities : sequence of str
        Column order of the batches' ``present`` masks.
    """

    def __init__(self, cfg: MissingConfig, modalities: Sequence[str]):
        self.cfg = cfg
        self.modalities = tuple(modalities)
        wanted = cfg.modalities or self.modalities
        self.columns = [self.modalities.index(m) for m in wanted if m in self.modalities]
        self.curriculum = Curriculum.from_config(cfg)

    def __call__(self, present: np.ndarray, signals: Mapping[str, np.ndarray], step: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Simulate on a ``(..., L, M)`` mask and the matching signals; return both, new."""
        rate = self.curriculum.rate_at(step)
        kind = self.cfg.kind
        signals = dict(signals)
        if kind == "none" or rate == 0.0:
            return _check_mask(present), signals
        if kind == "partial_chunks":
            return drop_partial_chunks(present, rate, rng, chunk_epochs=self.cfg.chunk_epochs,
                                       columns=self.columns), signals
        if kind == "partial_iid":
            return drop_partial_iid(present, rate, rng, columns=self.columns), signals
        if kind == "complete":
            return drop_complete(present, rate, rng, columns=self.columns), signals
        # noisy: choose slots like the chunk protocol but keep the mask on
        mask = _check_mask(present)
        flat = mask.reshape(-1, *mask.shape[-2:])
        slots = np.stack([_chunk_slots(seq, rate, rng, self.cfg.chunk_epochs, self.columns, keep_one=False)
                          for seq in flat]).reshape(mask.shape) if len(flat) else np.zeros_like(mask)
        sigma = self.cfg.noise_sigma
        if sigma is None and self.cfg.noise_snr_db is None:
            sigma = 1.0  # one standard deviation of a z-scored recording
        return mask, corrupt_signals(signals, slots, self.modalities, rng, sigma=sigma,
                                     snr_db=self.cfg.noise_snr_db, flatline_prob=self.cfg.flatline_prob)
