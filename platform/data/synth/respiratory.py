"""Scored respiratory events: apneas and hypopneas with their desaturations and arousals.

The events shape the airflow, effort and SpO2 channels of a night and are written as the non-stage
events of an NSRR XML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .codes import EPOCH_S
from .hypnogram import Hypnogram
from .physiology import _APNEA_RATE_FACTOR, _RENDER_CLASS
from .seeding import _as_rng
from .subjects import SubjectTraits

__all__ = ["RespiratoryEvent", "simulate_respiratory_events"]


@dataclass(frozen=True)
class RespiratoryEvent:
    """A scored non-stage event (apnea, hypopnea, desaturation, arousal), in seconds from start."""

    concept: str  # NSRR EventConcept, e.g. "Obstructive apnea|Obstructive Apnea"
    event_type: str  # NSRR EventType, e.g. "Respiratory|Respiratory"
    start_s: float
    duration_s: float
    spo2_nadir: float | None = None
    spo2_baseline: float | None = None

    @property
    def end_s(self) -> float:
        """End time in seconds from recording start."""
        return self.start_s + self.duration_s


_APNEA = "Obstructive apnea|Obstructive Apnea"
_HYPOPNEA = "Hypopnea|Hypopnea"
_DESATURATION = "SpO2 desaturation|SpO2 desaturation"
_AROUSAL = "Arousal|Arousal ()"
_RESPIRATORY = "Respiratory|Respiratory"


def simulate_respiratory_events(hypnogram: Hypnogram, subject: SubjectTraits,
                                rng: np.random.Generator | int | None = 0) -> list[RespiratoryEvent]:
    """Apneas and hypopneas during sleep at the subject's AHI, each with its desaturation and arousal.

    Rates are higher in REM and lower in N3, as in obstructive sleep apnoea.  The events drive the
    airflow, effort and SpO2 channels and are written as the non-stage events of an NSRR XML.
    """
    rng = _as_rng(rng)
    rc = _RENDER_CLASS[hypnogram.rk]
    expected = subject.apnea_hypopnea_index / 120.0 * _APNEA_RATE_FACTOR[rc]
    counts = rng.poisson(expected)
    epochs = np.repeat(np.arange(hypnogram.n_epochs), counts)
    starts = np.sort((epochs + rng.random(epochs.size)) * EPOCH_S)
    events: list[RespiratoryEvent] = []
    last_end = -math.inf
    end_of_night = hypnogram.duration_s
    for start in starts:
        duration = float(rng.uniform(10.0, 40.0))
        if start < last_end + 15.0 or start + duration + 60.0 > end_of_night:
            continue  # events do not overlap, and their consequences stay inside the recording
        start = round(float(start), 1)
        apnea = rng.random() < 0.4
        events.append(RespiratoryEvent(_APNEA if apnea else _HYPOPNEA, _RESPIRATORY, start, round(duration, 1)))
        drop = float(rng.uniform(4.0, 9.0) if apnea else rng.uniform(3.0, 5.0))
        baseline = round(subject.spo2_baseline)
        events.append(RespiratoryEvent(_DESATURATION, _RESPIRATORY, round(start + duration + 5.0, 1),
                                       round(float(rng.uniform(15.0, 35.0)), 1),
                                       spo2_nadir=float(round(baseline - drop)), spo2_baseline=float(baseline)))
        if rng.random() < 0.6:
            events.append(RespiratoryEvent(_AROUSAL, "Arousals|Arousals", round(start + duration, 1),
                                           round(float(rng.uniform(3.0, 15.0)), 1)))
        last_end = start + duration
    return events
