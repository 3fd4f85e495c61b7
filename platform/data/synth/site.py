"""Sites: how a second recording site differs from the default one (a domain shift to adapt to).

A :class:`SiteConfig` changes what one clinic's recordings look like while keeping the file
layout of the profile (so the same cohort profile reads them): the amplifier's gain, the EEG
derivation actually recorded under the EEG label (its morphology: how much eye movement, delta,
spindle and ECG it picks up), added noise and the amplifier's filters, and the population (less
slow-wave sleep, more fragmented sleep). ``SiteConfig()`` is the default site and changes nothing:
its cohorts are byte-identical to those written without a site.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from .channels import _CENTRAL, _FRONTAL, _PARIETAL, SynthChannel

__all__ = ["SITE_PRESETS", "SiteConfig"]

#: Electrode-site morphologies an EEG channel can be recorded with (latent-source weights).
DERIVATIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "frontal": _FRONTAL, "central": _CENTRAL, "parietal": _PARIETAL}


@dataclass(frozen=True)
class SiteConfig:
    """What makes a site's recordings differ; the defaults are the default site.

    Parameters
    ----------
    gain : float
        Amplifier gain multiplying every EEG and EOG channel (1: the profile's usual µV scale).
    eeg_derivation : {"profile", "frontal", "central", "parietal"}
        Morphology of the channels feeding ``eeg``: ``profile`` keeps the profile's montage;
        another value records them like that electrode site (e.g. ``central``: C4-M1-like, less
        eye-movement pick-up, more spindles and K-complexes, ECG artefact) under the same label.
    noise_uv : float
        RMS of white noise added to EEG and EOG channels (electrode and amplifier noise), in µV.
    highpass_hz, lowpass_hz : float, optional
        Corner frequencies of the amplifier's first-order (high-pass) and fourth-order
        Butterworth (low-pass) filters, applied causally as hardware does; None: no filter.
    n3_scale : float
        Multiplies the slow-wave sleep of every cycle (below 1: an older population).
    fragmentation : float
        Probability that a sleep epoch becomes a brief awakening followed by N1 (arousals,
        fragmented sleep); 0: none beyond the default night's.
    """

    gain: float = 1.0
    eeg_derivation: Literal["profile", "frontal", "central", "parietal"] = "profile"
    noise_uv: float = 0.0
    highpass_hz: float | None = None
    lowpass_hz: float | None = None
    n3_scale: float = 1.0
    fragmentation: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not self.gain > 0:
            problems.append(f"gain must be > 0; got {self.gain}")
        if self.eeg_derivation != "profile" and self.eeg_derivation not in DERIVATIONS:
            problems.append(f"eeg_derivation must be 'profile' or one of {sorted(DERIVATIONS)}; "
                            f"got {self.eeg_derivation!r}")
        if self.noise_uv < 0:
            problems.append(f"noise_uv must be >= 0; got {self.noise_uv}")
        for name in ("highpass_hz", "lowpass_hz"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 50:
                problems.append(f"{name} must lie in (0, 50) Hz; got {value}")
        if not 0 <= self.n3_scale <= 2:
            problems.append(f"n3_scale must lie in [0, 2]; got {self.n3_scale}")
        if not 0 <= self.fragmentation < 0.5:
            problems.append(f"fragmentation must lie in [0, 0.5); got {self.fragmentation}")
        if problems:
            raise ValueError("SiteConfig: " + "; ".join(problems))

    @property
    def is_default(self) -> bool:
        """Whether this is the default site (nothing changed)."""
        return self == SiteConfig()

    @classmethod
    def preset(cls, name: str) -> "SiteConfig":
        """A named site: ``a`` (the default) or ``b`` (see :data:`SITE_PRESETS`)."""
        try:
            return SITE_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown site {name!r}; sites are {sorted(SITE_PRESETS)}") from None

    def montage(self, channels: Sequence[SynthChannel]) -> tuple[SynthChannel, ...]:
        """``channels`` with the EEG derivation's morphology (labels and header fields unchanged)."""
        if self.eeg_derivation == "profile":
            return tuple(channels)
        mix = DERIVATIONS[self.eeg_derivation]
        return tuple(dataclasses.replace(ch, mix=mix) if ch.kind == "exg" and ch.modality == "eeg" else ch
                     for ch in channels)

    def apply(self, signals: Mapping[str, np.ndarray], channels: Sequence[SynthChannel],
              rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The night's signals as this site's amplifiers record them: noise, filters, gain (EEG/EOG)."""
        from scipy.signal import butter, sosfilt

        out = dict(signals)
        for ch in channels:
            if ch.kind != "exg" or ch.label not in out:
                continue
            x = np.asarray(out[ch.label], dtype=np.float64)
            if self.noise_uv:
                x = x + self.noise_uv * rng.standard_normal(len(x))
            if self.highpass_hz is not None:
                x = sosfilt(butter(1, self.highpass_hz, "highpass", fs=ch.fs, output="sos"), x)
            if self.lowpass_hz is not None and self.lowpass_hz < ch.fs / 2:
                x = sosfilt(butter(4, self.lowpass_hz, "lowpass", fs=ch.fs, output="sos"), x)
            out[ch.label] = (x * self.gain).astype(np.float32)
        return out


#: Named sites. ``b``: half the gain, EEG recorded with a central derivation's morphology,
#: 3 µV of noise and a 0.3-30 Hz amplifier, an older population (40 % of the slow-wave sleep,
#: 8 % of sleep epochs broken by brief awakenings).
SITE_PRESETS: dict[str, SiteConfig] = {
    "a": SiteConfig(),
    "b": SiteConfig(gain=0.5, eeg_derivation="central", noise_uv=3.0, highpass_hz=0.3, lowpass_hz=30.0,
                    n3_scale=0.4, fragmentation=0.08),
}
