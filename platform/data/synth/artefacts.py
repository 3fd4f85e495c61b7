"""Recording artefacts: what may be injected, injecting it, and the report of what was injected.

:class:`ArtefactConfig` says what may happen, :func:`apply_artefacts` injects it into simulated
signals and :class:`ArtefactReport` lists every :class:`ArtefactEvent`: flat segments and flat
nights, detached electrodes, noise bursts and missing EOG channels, placed on 30-s epoch boundaries
so that the affected epochs are unambiguous.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from somnray.core.errors import ConfigError

from .channels import SynthChannel
from .codes import EPOCH_S
from .seeding import _as_rng

__all__ = ["ArtefactConfig", "ArtefactEvent", "ArtefactReport", "apply_artefacts"]


@dataclass(frozen=True)
class ArtefactConfig:
    """Which recording artefacts to inject (probabilities per recording).

    Parameters
    ----------
    flat_segment_probability : float
        A modality channel is flat (disconnected amplifier input) for 5–45 min.
    flat_night_probability : float
        A non-primary modality channel (EOG, EMG or second EEG) is flat all night.
    detached_probability : float
        An electrode comes off for 10–60 min: the channel rails (DC offset beyond the amplifier
        range) or fills with huge mains and broadband noise.
    noise_bursts_per_hour : float
        Rate of 1–4-min broadband, amplifier-saturating noise bursts on one channel.
    missing_eog_fraction : float
        Fraction of recordings whose EOG channel(s) are left out of the file altogether.
    min_noise_bursts : int
        Noise bursts every recording gets at least (so that short nights still have one).
    """

    flat_segment_probability: float = 0.0
    flat_night_probability: float = 0.0
    detached_probability: float = 0.0
    noise_bursts_per_hour: float = 0.0
    missing_eog_fraction: float = 0.0
    min_noise_bursts: int = 0

    PRESETS = ("none", "some", "all")

    def __post_init__(self) -> None:
        errors = [f"{name} must be in [0, 1]; got {getattr(self, name)}"
                  for name in ("flat_segment_probability", "flat_night_probability",
                               "detached_probability", "missing_eog_fraction")
                  if not 0.0 <= getattr(self, name) <= 1.0]
        if not self.noise_bursts_per_hour >= 0.0:
            errors.append(f"noise_bursts_per_hour must be >= 0; got {self.noise_bursts_per_hour}")
        if not self.min_noise_bursts >= 0:
            errors.append(f"min_noise_bursts must be >= 0; got {self.min_noise_bursts}")
        if errors:
            raise ConfigError("ArtefactConfig", errors)

    @classmethod
    def preset(cls, name: str, missing_eog_fraction: float | None = None) -> ArtefactConfig:
        """``none``: clean; ``some``: occasional artefacts of every kind, 10 % without EOG;
        ``all``: every kind in every recording, 25 % without EOG (``missing_eog_fraction`` overrides).
        """
        if name not in cls.PRESETS:
            raise ConfigError("artefacts", [f"preset must be one of {list(cls.PRESETS)}; got {name!r}"])
        values = {
            "none": dict(missing_eog_fraction=0.0),
            "some": dict(flat_segment_probability=0.3, flat_night_probability=0.05, detached_probability=0.2,
                         noise_bursts_per_hour=0.15, missing_eog_fraction=0.1),
            "all": dict(flat_segment_probability=1.0, flat_night_probability=1.0, detached_probability=1.0,
                        noise_bursts_per_hour=0.5, missing_eog_fraction=0.25, min_noise_bursts=1),
        }[name]
        if missing_eog_fraction is not None:
            values["missing_eog_fraction"] = missing_eog_fraction
        return cls(**values)

    @property
    def enabled(self) -> bool:
        """Whether any artefact can occur."""
        return any((self.flat_segment_probability, self.flat_night_probability, self.detached_probability,
                    self.noise_bursts_per_hour, self.missing_eog_fraction, self.min_noise_bursts))


@dataclass(frozen=True)
class ArtefactEvent:
    """One injected artefact; epochs ``[first_epoch, end_epoch)`` from the recording start."""

    kind: str  # flat | flat_night | detached_rail | detached_noise | noise_burst
    channel: str
    modality: str | None
    first_epoch: int
    end_epoch: int

    @property
    def start_s(self) -> int:
        """Start in seconds from the recording start."""
        return self.first_epoch * EPOCH_S

    @property
    def end_s(self) -> int:
        """End in seconds from the recording start."""
        return self.end_epoch * EPOCH_S


@dataclass
class ArtefactReport:
    """What :func:`apply_artefacts` did to a recording (written as ``<recording_id>.artefacts.json``)."""

    recording_id: str
    n_epochs: int
    events: list[ArtefactEvent] = field(default_factory=list)
    missing_channels: list[str] = field(default_factory=list)
    missing_modalities: list[str] = field(default_factory=list)

    def affected_epochs(self) -> dict[str, list[int]]:
        """Modality → sorted epoch indices an artefact makes unusable (a missing modality: all)."""
        out: dict[str, set[int]] = {}
        for ev in self.events:
            if ev.modality:
                out.setdefault(ev.modality, set()).update(range(ev.first_epoch, ev.end_epoch))
        for modality in self.missing_modalities:
            out[modality] = set(range(self.n_epochs))
        return {m: sorted(v) for m, v in sorted(out.items())}

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys)."""
        payload = {
            "recording_id": self.recording_id,
            "epoch_seconds": EPOCH_S,
            "n_epochs": self.n_epochs,
            "missing_channels": self.missing_channels,
            "missing_modalities": self.missing_modalities,
            "events": [dict(kind=e.kind, channel=e.channel, modality=e.modality, first_epoch=e.first_epoch,
                            end_epoch=e.end_epoch, start_s=e.start_s, end_s=e.end_s) for e in self.events],
            "affected_epochs": self.affected_epochs(),
        }
        return json.dumps(payload, indent=1, sort_keys=True) + "\n"


_ARTEFACT_KINDS = ("exg", "emg", "emg_envelope")


def apply_artefacts(signals: Mapping[str, np.ndarray], channels: Sequence[SynthChannel],
                    config: ArtefactConfig, rng: np.random.Generator | int | None, n_epochs: int,
                    recording_id: str = "") -> tuple[dict[str, np.ndarray], ArtefactReport]:
    """Inject artefacts into simulated signals and report them.

    Segments start and end on 30-s epoch boundaries, so the affected epochs are unambiguous: every
    listed epoch is flat, railed or saturated for its whole length (what an availability mask must
    flag), and no other epoch is touched.

    Parameters
    ----------
    signals : mapping of str to numpy.ndarray
        Output of :func:`simulate_night` (not modified).
    channels : sequence of SynthChannel
        The channels of ``signals`` (for rates, modalities and physical ranges).
    config : ArtefactConfig
        What may happen.
    rng : numpy.random.Generator or int
        Random source or seed.
    n_epochs : int
        Length of the recording in epochs.
    recording_id : str
        Name stored in the report.

    Returns
    -------
    (dict, ArtefactReport)
        New signals (missing channels removed) and the report.
    """
    rng = _as_rng(rng)
    out = {label: np.array(x, copy=True) for label, x in signals.items()}
    report = ArtefactReport(recording_id=recording_id, n_epochs=n_epochs)
    by_label = {ch.label: ch for ch in channels if ch.label in out}

    if rng.random() < config.missing_eog_fraction:
        for ch in by_label.values():
            if ch.modality == "eog":
                del out[ch.label]
                report.missing_channels.append(ch.label)
        if report.missing_channels:
            report.missing_modalities.append("eog")
    eligible = [ch for ch in by_label.values() if ch.label in out and ch.kind in _ARTEFACT_KINDS and ch.modality]

    # Epochs already taken per channel: artefacts never overlap, so each reported epoch shows
    # exactly the artefact the report names.
    taken = {ch.label: np.zeros(n_epochs, dtype=bool) for ch in eligible}

    def segment(ch: SynthChannel, min_epochs: int, max_epochs: int) -> tuple[int, int] | None:
        length = int(rng.integers(min_epochs, max_epochs + 1))
        length = max(1, min(length, n_epochs // 3))
        for _ in range(20):
            first = int(rng.integers(0, n_epochs - length + 1))
            if not taken[ch.label][first:first + length].any():
                taken[ch.label][first:first + length] = True
                return first, first + length
        return None

    def samples(ch: SynthChannel, first: int, end: int) -> slice:
        return slice(first * EPOCH_S * ch.fs, end * EPOCH_S * ch.fs)

    def record(kind: str, ch: SynthChannel, first: int, end: int) -> None:
        report.events.append(ArtefactEvent(kind, ch.label, ch.modality, first, end))

    if eligible and rng.random() < config.flat_night_probability:
        secondary = [ch for ch in eligible if ch.modality != "eeg"]
        if secondary:
            ch = secondary[int(rng.integers(len(secondary)))]
            out[ch.label][:] = 0.0
            taken[ch.label][:] = True
            record("flat_night", ch, 0, n_epochs)
    eligible = [ch for ch in eligible if not taken[ch.label].all()]  # a dead channel stays dead

    def pick(probability: float, min_epochs: int, max_epochs: int) -> tuple[SynthChannel, int, int] | None:
        if not eligible or rng.random() >= probability:
            return None
        ch = eligible[int(rng.integers(len(eligible)))]
        placed = segment(ch, min_epochs, max_epochs)
        return None if placed is None else (ch, *placed)

    flat = pick(config.flat_segment_probability, 10, 90)
    if flat:
        ch, first, end = flat
        sl = samples(ch, first, end)
        # A disconnected input holds the last value exactly: zero variance after quantisation.
        out[ch.label][sl] = np.float32(0.0)
        record("flat", ch, first, end)
    detached = pick(config.detached_probability, 20, 120)
    if detached:
        ch, first, end = detached
        sl = samples(ch, first, end)
        lo, hi = ch.physical_range
        seg = out[ch.label][sl]
        if rng.random() < 0.5:
            # DC offset beyond the amplifier's range, drifting: the stored signal sits on a rail.
            drift = np.linspace(0.0, 0.3, seg.size, dtype=np.float32) * (hi - lo)
            out[ch.label][sl] = np.float32(hi) + np.float32(0.1 * (hi - lo)) + drift
            record("detached_rail", ch, first, end)
        else:
            t = np.arange(seg.size) / ch.fs
            mains = 0.6 * (hi - lo) * np.sin(2 * np.pi * 50.0 * t + 0.3) if ch.fs > 100 else 0.0
            noise = rng.normal(0.0, 1.5 * (hi - lo) / 2, seg.size)
            out[ch.label][sl] = (seg + mains + noise).astype(np.float32)
            record("detached_noise", ch, first, end)
    if eligible and (config.noise_bursts_per_hour > 0 or config.min_noise_bursts > 0):
        hours = n_epochs * EPOCH_S / 3600.0
        n_bursts = max(int(rng.poisson(config.noise_bursts_per_hour * hours)), config.min_noise_bursts)
        for _ in range(n_bursts):
            ch = eligible[int(rng.integers(len(eligible)))]
            placed = segment(ch, 2, 8)
            if placed is None:
                continue
            first, end = placed
            sl = samples(ch, first, end)
            hi = max(abs(ch.physical_range[0]), abs(ch.physical_range[1]))
            out[ch.label][sl] += rng.normal(0.0, 1.2 * hi, out[ch.label][sl].size).astype(np.float32)
            record("noise_burst", ch, first, end)
    return out, report
