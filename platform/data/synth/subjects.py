"""Subjects: what stays the same across the nights of one person.

:class:`SubjectTraits` holds the individual gains, peak frequencies, heart and breathing rates,
apnea-hypopnea index and SpO2 baseline; :meth:`SubjectTraits.draw` draws a plausible adult.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seeding import _as_rng

__all__ = ["SubjectTraits"]


@dataclass(frozen=True)
class SubjectTraits:
    """What stays the same across the nights of one subject.

    Gains multiply the corresponding signals; frequencies are the individual peak frequencies.
    """

    eeg_gain: float = 1.0
    alpha_gain: float = 1.0
    eog_gain: float = 1.0
    emg_gain: float = 1.0
    alpha_hz: float = 10.0
    theta_hz: float = 5.5
    spindle_hz: float = 13.0
    sawtooth_hz: float = 3.0
    aperiodic_exponent: float = 1.5
    heart_rate_bpm: float = 64.0
    resp_rate_bpm: float = 14.5
    apnea_hypopnea_index: float = 5.0
    spo2_baseline: float = 96.0

    @classmethod
    def draw(cls, rng: np.random.Generator | int | None) -> SubjectTraits:
        """Draw a plausible adult (individual gains lognormal, frequencies within normal ranges)."""
        rng = _as_rng(rng)
        return cls(
            eeg_gain=float(np.exp(rng.normal(0.0, 0.25))),
            # Some people hardly produce alpha: stage W must be recognisable from EOG/EMG too.
            alpha_gain=float(np.exp(rng.normal(0.0, 0.35))),
            eog_gain=float(np.exp(rng.normal(0.0, 0.2))),
            emg_gain=float(np.exp(rng.normal(0.0, 0.35))),
            alpha_hz=float(rng.uniform(8.5, 11.5)),
            theta_hz=float(rng.uniform(4.8, 6.5)),
            spindle_hz=float(rng.uniform(12.0, 14.0)),
            sawtooth_hz=float(rng.uniform(2.5, 4.0)),
            aperiodic_exponent=float(rng.uniform(1.2, 2.0)),
            heart_rate_bpm=float(rng.normal(64.0, 7.0)),
            resp_rate_bpm=float(rng.uniform(12.5, 17.0)),
            apnea_hypopnea_index=float(np.exp(rng.normal(np.log(5.0), 0.8))),
            spo2_baseline=float(rng.uniform(94.5, 97.5)),
        )
