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
    ``round(r · L · M)`` slots are removed (M counting the modalities the sequence has at all; a
    half rounds down) in chunks of ``chunk_epochs`` (25) consecutive epochs on the chunk grid, the (chunk, modality) pairs visited in random order, each removing one
    modality from the chunk where another stays present. With two modalities the maximum
    achievable rate is 0.5. The last chunk is cut short so the count is exact.
``partial_iid``
    Each slot is dropped independently with probability ``r``; where every present modality of
    an epoch could go, the one with the largest draw stays. That lowers the achieved rate below
    ``r`` (for M = 2 and everything present: ``r − r²/2``).
``complete``
    With probability ``r`` a recording loses one whole modality (one drawn at random).
``noisy``
    Slots chosen like ``partial_chunks`` are corrupted (additive Gaussian noise at a given σ or
    SNR, or a detachment-like flat line) while the mask stays **on**: the model is not told.

Every mask is drawn **once per recording**, before windows are cut, by
:func:`recording_drop_keys`: training windows, masked validation and the evaluation scenarios all
call it, seeded with ``missing.seed`` (or evaluation's base seed; both default to 2024) and the
recording id (:func:`recording_rng`). It gives each (epoch, modality) slot a *drop key* in
``[0, 1)`` (or ``inf``: never dropped), and the mask at rate ``r`` drops the slots whose key is
below ``r`` (:func:`mask_at`). The keys do not depend on the rate, so the masks of one recording
are nested (every slot missing at 0.2 is missing at 0.3): a curriculum changes the rate, never
the draw, and a training window at rate ``r`` sees exactly the slice of the recording's
``missing_<r>`` evaluation mask.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from somnray.core.errors import ConfigError

from .config import MissingConfig

#: CIMSleepNet's base seed for fixed per-recording masks.
DEFAULT_BASE_SEED = 2024
#: Drop key of a slot no rate removes (truly absent, or the last modality of its epoch).
NEVER = np.inf

CurriculumKind = Literal["constant", "linear", "step", "cosine"]
DropKind = Literal["partial_chunks", "partial_iid", "complete", "noisy"]


def recording_rng(base_seed: int, recording: int | str) -> np.random.Generator:
    """The generator of one recording's masks: seeded with ``base_seed`` and the recording.

    ``recording`` is its manifest id (a stable hash of the string is used, so the draw does not
    depend on the split, the run or the process) or an integer key.
    """
    if isinstance(recording, str):
        key = int.from_bytes(hashlib.blake2b(recording.encode(), digest_size=8).digest(), "little")
    else:
        key = int(recording)
    return np.random.default_rng([int(base_seed), key])


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
    """Apply a (L, M) function to every sequence of a (..., L, M) batch, in order."""

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


def _chunk_keys(present: np.ndarray, rng: np.random.Generator, chunk_epochs: int, columns: list[int],
                keep_one: bool) -> np.ndarray:
    """Drop keys of the chunk protocol: the order in which slots go as the rate grows.

    The (chunk, modality) pairs are visited in one random order and each gives up its slots in
    epoch order; the ``k``-th slot given up (of ``N`` = epochs × modalities the sequence has) gets
    key ``(k + 0.5) / N``, so rate ``r`` removes ``round(r·N)`` slots (halves rounded down). With
    ``keep_one`` a slot is only given up if its epoch keeps another modality (dropping); without
    it any present slot may be (noise, which does not remove the signal).
    """
    n_epochs, _ = present.shape
    keys = np.full(present.shape, NEVER, dtype=np.float32)
    # A modality the sequence lacks entirely (not recorded) has no slots to lose: the rate is
    # over the modalities actually there, as in CIMSleepNet where every recording has both.
    columns = [c for c in columns if present[:, c].any()]
    n_slots = n_epochs * len(columns)
    if n_slots == 0:
        return keys
    chosen = np.zeros_like(present)
    pairs = [(s, c) for s in range(0, n_epochs, chunk_epochs) for c in columns]
    count = 0
    for k in rng.permutation(len(pairs)):
        start, col = pairs[k]
        stop = min(start + chunk_epochs, n_epochs)
        remaining = present[start:stop] & ~chosen[start:stop]
        others = np.delete(remaining, col, axis=1).any(axis=1) if keep_one else True
        # An epoch may lose this modality only if it has it and another one stays.
        take = np.flatnonzero(remaining[:, col] & others)
        chosen[start + take, col] = True
        keys[start + take, col] = (count + np.arange(len(take)) + 0.5) / n_slots
        count += len(take)
    return keys


def _iid_keys(present: np.ndarray, rng: np.random.Generator, columns: list[int]) -> np.ndarray:
    """Independent uniform keys; an epoch whose every present slot may go keeps its largest-key one."""
    keys = np.full(present.shape, NEVER, dtype=np.float32)
    draw = rng.random(present.shape).astype(np.float32)
    droppable = np.zeros_like(present)
    droppable[:, columns] = present[:, columns]
    keys[droppable] = draw[droppable]
    # Where nothing outside ``columns`` is present, the slot drawn last (largest key) is the one
    # a rate of 1 would leave: it is never dropped, so no epoch loses its last modality.
    guarded = ~(present & ~droppable).any(axis=1) & droppable.any(axis=1)
    last = np.argmax(np.where(droppable, draw, -1.0), axis=1)
    keys[np.flatnonzero(guarded), last[guarded]] = NEVER
    return keys


def _complete_keys(present: np.ndarray, rng: np.random.Generator, columns: list[int]) -> np.ndarray:
    """One key for the whole sequence, on one modality drawn from ``columns``."""
    keys = np.full(present.shape, NEVER, dtype=np.float32)
    key = rng.random()
    if not columns:
        return keys
    col = columns[int(rng.integers(len(columns)))]
    # Epochs where that modality is the only one present keep it (never all-missing).
    keys[:, col] = np.where(drop_modality(present, col)[:, col], NEVER, key)
    return keys


@_per_sequence
def drop_keys(present: np.ndarray, kind: DropKind, rng: np.random.Generator, *, chunk_epochs: int = 25,
              columns: Sequence[int] | None = None) -> np.ndarray:
    """Each slot's drop key for ``kind``: the mask at rate ``r`` drops the slots whose key is below ``r``.

    Parameters
    ----------
    present : ndarray
        ``(L, M)`` or ``(..., L, M)`` bool availability (a batch gets independent draws per sequence).
    kind : {"partial_chunks", "partial_iid", "complete", "noisy"}
        The protocol (module docstring); ``noisy`` chooses slots like ``partial_chunks`` but may
        choose every modality of an epoch, since noise does not remove a signal.
    rng : numpy.random.Generator
        Source of randomness (:func:`recording_rng` for a recording's masks).
    chunk_epochs : int
        Chunk length of ``partial_chunks`` and ``noisy``.
    columns : sequence of int, optional
        Modality columns that may be removed; default all.

    Returns
    -------
    ndarray
        ``present``'s shape, float32: keys in ``[0, 1)``, :data:`NEVER` for slots never removed.
    """
    if chunk_epochs < 1:
        raise ValueError(f"chunk_epochs must be >= 1, got {chunk_epochs}")
    cols = _columns(columns, present.shape[1])
    if kind in ("partial_chunks", "noisy"):
        return _chunk_keys(present, rng, chunk_epochs, cols, keep_one=kind == "partial_chunks")
    if kind == "partial_iid":
        return _iid_keys(present, rng, cols)
    if kind == "complete":
        return _complete_keys(present, rng, cols)
    raise ValueError(f"unknown missing-modality kind {kind!r}")


def recording_drop_keys(present: np.ndarray, kind: DropKind, base_seed: int, recording: int | str, *,
                        chunk_epochs: int = 25, columns: Sequence[int] | None = None) -> np.ndarray:
    """A whole recording's drop keys: the one draw training, validation and evaluation share.

    ``present`` is the recording's ``(n, M)`` mask; the draw comes from
    ``recording_rng(base_seed, recording)`` (see :func:`drop_keys` for the other parameters).
    """
    return drop_keys(present, kind, recording_rng(base_seed, recording), chunk_epochs=chunk_epochs,
                     columns=columns)


def incomplete_training_plan(recording_ids: Sequence[str], multimodal: int, unimodal: int | None,
                             keep: Sequence[str], seed: int) -> dict[str, str | None]:
    """Which training recordings keep every modality (``None``) and which keep one (its name).

    The sorted ids are shuffled with ``seed``: the first ``multimodal`` keep everything, the next
    ``unimodal`` (default: all the others) keep one modality of ``keep``, drawn per recording.
    Recordings beyond both counts are not in the plan: they are left out of training.
    """
    ids = sorted(recording_ids)
    if multimodal > len(ids):
        raise ConfigError("missing.incomplete", [f"multimodal: {multimodal} multimodal recordings asked for, "
                                                 f"the training split has {len(ids)}"])
    rng = np.random.default_rng([int(seed), len(ids)])
    order = [ids[i] for i in rng.permutation(len(ids))]
    rest = order[multimodal:] if unimodal is None else order[multimodal:multimodal + unimodal]
    kept = rng.integers(len(keep), size=len(rest))
    return {**{rid: None for rid in order[:multimodal]}, **{rid: keep[int(k)] for rid, k in zip(rest, kept)}}


def mask_at(present: np.ndarray, keys: np.ndarray, rate: float) -> np.ndarray:
    """The mask at ``rate``: ``present`` without the slots whose drop key is below ``rate``."""
    _check_rate(rate)
    return _check_mask(present) & ~(np.asarray(keys) < rate)


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
    return mask_at(present, drop_keys(present, "partial_chunks", rng, chunk_epochs=chunk_epochs, columns=columns),
                   rate)


def drop_partial_iid(present: np.ndarray, rate: float, rng: np.random.Generator, *,
                     columns: Sequence[int] | None = None) -> np.ndarray:
    """Each slot dropped independently with probability ``rate``, never an epoch's last modality.

    Where every present modality of an epoch may go, the one drawn last stays, so with two
    modalities the achieved rate is ``r − r²/2`` (a slot goes when its draw is below ``r`` and
    below the other's).
    """
    return mask_at(present, drop_keys(present, "partial_iid", rng, columns=columns), rate)


def drop_complete(present: np.ndarray, rate: float, rng: np.random.Generator, *,
                  columns: Sequence[int] | None = None) -> np.ndarray:
    """With probability ``rate`` the sequence loses one modality (drawn from ``columns``) entirely.

    Epochs where that modality is the only one present keep it (never all-missing).
    """
    return mask_at(present, drop_keys(present, "complete", rng, columns=columns), rate)


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

    @property
    def validation_rate(self) -> float:
        """The rate masked validation uses: the curriculum's end point (the protocol's target rate)."""
        return self.curriculum.end

    def recording_keys(self, present: np.ndarray, recording_id: str) -> np.ndarray:
        """One recording's ``(n, M)`` drop keys (:func:`recording_drop_keys` with ``missing.seed``)."""
        if self.cfg.kind == "none":
            return np.full(np.shape(present), NEVER, dtype=np.float32)
        return recording_drop_keys(present, self.cfg.kind, self.cfg.seed, recording_id,
                                   chunk_epochs=self.cfg.chunk_epochs, columns=self.columns)

    def __call__(self, present: np.ndarray, keys: np.ndarray, signals: Mapping[str, np.ndarray], rate: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Simulate at ``rate`` on a ``(..., L, M)`` mask, its drop keys and the signals; return both, new.

        ``keys`` are the windows' slices of their recordings' :meth:`recording_keys`; ``rng`` only
        draws the noise of ``noisy`` slots (which slots is the keys' business).
        """
        signals = dict(signals)
        if self.cfg.kind == "none" or rate == 0.0:
            return _check_mask(present), signals
        if self.cfg.kind != "noisy":
            return mask_at(present, keys, rate), signals
        # noisy: the chosen slots are corrupted, the mask stays on
        mask = _check_mask(present)
        slots = mask & (np.asarray(keys) < rate)
        sigma = self.cfg.noise_sigma
        if sigma is None and self.cfg.noise_snr_db is None:
            sigma = 1.0  # one standard deviation of a z-scored recording
        return mask, corrupt_signals(signals, slots, self.modalities, rng, sigma=sigma,
                                     snr_db=self.cfg.noise_snr_db, flatline_prob=self.cfg.flatline_prob)
