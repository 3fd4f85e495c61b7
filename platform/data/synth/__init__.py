"""Synthetic polysomnography cohorts, written as the real files of real cohorts.

Tests, ``make demo`` and the benchmarks need nights that go through the whole pipeline (readers →
preprocessing → training → scoring) without shipping patient data.  This module simulates them and
writes them in the formats of three cohort profiles (see ``docs/synthetic-data.md``):

``sleep-edf``
    Sleep-EDF Expanded, sleep-cassette study: ``SC4ssNE0-PSG.edf`` (``EEG Fpz-Cz``, ``EEG Pz-Oz``,
    ``EOG horizontal`` at 100 Hz; ``Resp oro-nasal``, ``EMG submental`` (a 1-Hz envelope),
    ``Temp rectal``, ``Event marker`` at 1 Hz; 30-s data records) and ``SC4ssN<L><L>-Hypnogram.edf``
    (EDF+ annotations, R&K stages, last annotation running past the signal end).  Two nights per
    subject.
``shhs``
    SHHS-1 as distributed by the NSRR: ``shhs1-2NNNNN.edf`` (``EEG`` C4-A1 and ``EEG(sec)`` C3-A2 at
    125 Hz, ``EOG(L)``/``EOG(R)`` at 50 Hz, ``EMG`` and ``ECG`` at 125 Hz, slow channels) and
    ``shhs1-2NNNNN-nsrr.xml`` (run-length stage events tiling the recording, plus respiratory and
    arousal events a reader must skip).  One night per subject.
``generic``
    An EDF+ with AASM-style derivations (``C4-M1``, ``E1-M2`` at 256 Hz, ``Chin1-Chin2`` at 512 Hz)
    and an ``onset,duration,stage`` CSV hypnogram, or the stages embedded as EDF+ annotations.

The signal model is deliberately physiological rather than a lookup of one spectrum per stage:
each stage is a mixture of latent cortical rhythms (1/f background, delta, theta, alpha, spindles,
K-complexes, vertex waves, sawtooth waves), eye movements (saccades, slow rolling movements,
blinks) and muscle tone, with per-subject gains, individual alpha/spindle frequencies, per-night and
per-epoch amplitude jitter, and channel-specific mixing (frontal EEG picks up eye movements,
horizontal-EOG electrodes pick up frontal delta, left and right EOG carry the eye dipole with
opposite signs).  Stages are therefore learnable in minutes on a CPU, but not from amplitude alone.

Every function is deterministic given its seed: the same arguments produce byte-identical files.
Every EDF header carries a fake but identifying-looking patient and recording identification
(:data:`SYNTH_IDENTIFYING_STRINGS`) so that privacy tests can assert these strings never reach any
output or log.

Time parameters are in seconds (``*_s``) or minutes (``*_min``); amplitudes are in µV unless a
name says otherwise (ECG in mV, SpO2 in %).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording
from scipy import fft as sfft
from scipy import signal as ssig
from scipy.ndimage import uniform_filter1d

from somnray.core.errors import ConfigError

from ..manifest import ManifestEntry, format_manifest_csv

__all__ = [
    "AASM_LABELS",
    "ArtefactConfig",
    "ArtefactEvent",
    "ArtefactReport",
    "EPOCH_S",
    "GENERIC_CHANNELS",
    "Hypnogram",
    "PROFILES",
    "RespiratoryEvent",
    "SHHS_CHANNELS",
    "SLEEP_EDF_CHANNELS",
    "SYNTH_BIRTHDATE",
    "SYNTH_EQUIPMENT",
    "SYNTH_HOSPITAL",
    "SYNTH_IDENTIFYING_STRINGS",
    "SYNTH_PATIENT_CODE",
    "SYNTH_PATIENT_NAME",
    "SYNTH_PATIENT_SEX",
    "SYNTH_TECHNICIAN",
    "SubjectTraits",
    "SynthChannel",
    "apply_artefacts",
    "simulate_hypnogram",
    "simulate_night",
    "simulate_respiratory_events",
    "synthesize_cohort",
    "write_csv_hypnogram",
    "write_edf",
    "write_nsrr_xml",
    "write_sleep_edf_hypnogram",
]

logger = logging.getLogger(__name__)

#: Scoring epoch length (R&K and AASM).
EPOCH_S = 30

#: Cohort profiles this module writes.
PROFILES: tuple[str, ...] = ("sleep-edf", "shhs", "generic")

# --- fake identification written into every EDF header -------------------------------------------
# Made up, but shaped like the real thing, so a privacy test that greps outputs and logs for them
# proves that header fields are never copied.  EDF+ subfields may not contain spaces.
SYNTH_PATIENT_CODE = "SYNPID-80417"
SYNTH_PATIENT_SEX = "F"
SYNTH_BIRTHDATE = dt.date(1970, 1, 1)
SYNTH_PATIENT_NAME = "Jane_Synthetic_Doe"
SYNTH_HOSPITAL = "StNowhere_Sleep_Clinic"
SYNTH_TECHNICIAN = "Tech_J_Fakename"
SYNTH_EQUIPMENT = "SynthPSG-3000"
#: Every identifying string of the fake header, as it appears in the file.
SYNTH_IDENTIFYING_STRINGS: tuple[str, ...] = (
    SYNTH_PATIENT_CODE,
    SYNTH_PATIENT_NAME,
    "01-JAN-1970",
    SYNTH_HOSPITAL,
    SYNTH_TECHNICIAN,
)

# --- stage codes -----------------------------------------------------------------------------------
# Hypnograms are simulated in R&K codes, numbered like the NSRR concepts (``Wake|0`` … ``REM
# sleep|5``, ``Movement|6``, ``Unscored|9``), because two of the three formats are R&K-scored and
# AASM labels follow from them without loss.
RK_W, RK_S1, RK_S2, RK_S3, RK_S4, RK_REM, RK_MOVEMENT, RK_UNSCORED = 0, 1, 2, 3, 4, 5, 6, 9
_RK_CODES = (RK_W, RK_S1, RK_S2, RK_S3, RK_S4, RK_REM, RK_MOVEMENT, RK_UNSCORED)
#: R&K code → AASM label of the data contract (0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored).
_RK_TO_AASM = np.array([0, 1, 2, 3, 3, 4, -1, -1, -1, -1], dtype=np.int8)
#: AASM class names, indexed by label.
AASM_LABELS: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")

SLEEP_EDF_STAGE_TEXT: dict[int, str] = {
    RK_W: "Sleep stage W", RK_S1: "Sleep stage 1", RK_S2: "Sleep stage 2", RK_S3: "Sleep stage 3",
    RK_S4: "Sleep stage 4", RK_REM: "Sleep stage R", RK_MOVEMENT: "Movement time",
    RK_UNSCORED: "Sleep stage ?",
}
NSRR_STAGE_CONCEPT: dict[int, str] = {
    RK_W: "Wake|0", RK_S1: "Stage 1 sleep|1", RK_S2: "Stage 2 sleep|2", RK_S3: "Stage 3 sleep|3",
    RK_S4: "Stage 4 sleep|4", RK_REM: "REM sleep|5", RK_MOVEMENT: "Movement|6",
    RK_UNSCORED: "Unscored|9",
}
#: The generic profile is AASM-scored: S3 and S4 are one class, movement/unscored epochs are "?".
GENERIC_STAGE_TEXT: dict[int, str] = {
    RK_W: "W", RK_S1: "N1", RK_S2: "N2", RK_S3: "N3", RK_S4: "N3", RK_REM: "R",
    RK_MOVEMENT: "?", RK_UNSCORED: "?",
}

# Render class of each R&K code: the index into the per-stage amplitude tables below.  "?" epochs
# are drawn as wake (in real files they are mostly lights-on or electrode-handling periods).
_RC_W, _RC_N1, _RC_N2, _RC_S3, _RC_S4, _RC_REM, _RC_MT = range(7)
_RENDER_CLASS = np.array([0, 1, 2, 3, 4, 5, 6, 0, 0, 0], dtype=np.intp)


def _table(w: float, n1: float, n2: float, s3: float, s4: float, rem: float, mt: float) -> np.ndarray:
    return np.array([w, n1, n2, s3, s4, rem, mt], dtype=np.float64)


# Per render class (W, N1, N2, S3, S4, REM, movement time).  Amplitudes are RMS µV of the latent
# rhythm at a central site before subject gains; event rates are expected counts per 30-s epoch.
# Values follow the AASM/R&K stage definitions: posterior alpha in relaxed wake, theta and vertex
# waves in N1, spindles and K-complexes in N2, > 75 µV peak-to-peak delta in N3 (S4: > 50 % of the
# epoch), low-voltage mixed theta with sawtooth waves, rapid eye movements and atonia in REM.
_DELTA_UV = _table(6.0, 9.0, 16.0, 36.0, 50.0, 8.0, 10.0)
_THETA_UV = _table(5.0, 12.0, 9.0, 8.0, 8.0, 11.0, 6.0)
_ALPHA_UV = _table(15.0, 4.0, 2.5, 1.5, 1.5, 3.5, 5.0)
_BACKGROUND_GAIN = _table(1.1, 1.0, 0.95, 0.95, 0.95, 0.85, 1.1)
_SPINDLE_RATE = _table(0.0, 0.2, 2.5, 1.0, 0.5, 0.0, 0.0)
_KCOMPLEX_RATE = _table(0.0, 0.1, 1.0, 0.4, 0.2, 0.0, 0.0)
_VERTEX_RATE = _table(0.0, 1.5, 0.3, 0.0, 0.0, 0.0, 0.0)
_SAWTOOTH_RATE = _table(0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0)
_SACCADE_RATE = _table(6.0, 0.3, 0.0, 0.0, 0.0, 0.0, 4.0)  # REM saccades are drawn per phasic epoch
_BLINK_RATE = _table(5.0, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0)
_SLOW_EYE_UV = _table(8.0, 55.0, 6.0, 0.0, 0.0, 3.0, 0.0)
_EMG_TONE_UV = _table(14.0, 8.0, 5.5, 5.0, 5.0, 1.6, 40.0)
_TWITCH_RATE = _table(0.0, 0.0, 0.1, 0.0, 0.0, 2.0, 0.0)
_MOVEMENT_RATE = _table(0.25, 0.02, 0.0, 0.0, 0.0, 0.0, 3.0)
_HEART_RATE_DELTA = _table(6.0, 2.0, -2.0, -5.0, -6.0, 3.0, 10.0)  # bpm around the subject's mean
_RESP_RATE_DELTA = _table(1.5, 0.5, -0.5, -1.0, -1.2, 1.5, 2.0)  # breaths/min
_APNEA_RATE_FACTOR = _table(0.0, 1.0, 1.0, 0.3, 0.2, 1.6, 0.0)

# Latent cortical sources are simulated once per night at this rate (all their content is below
# 30 Hz) and resampled to each channel's native rate with a polyphase filter.
_LATENT_FS = 100


# =====================================================================================================
# Hypnograms
# =====================================================================================================


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


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def simulate_hypnogram(n_epochs: int, rng: np.random.Generator | int | None = 0) -> Hypnogram:
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
        n3_len = round(nrem * 0.6 * n3_strength)
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


# =====================================================================================================
# Subjects and scored events
# =====================================================================================================


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


# =====================================================================================================
# Channels
# =====================================================================================================


@dataclass(frozen=True)
class SynthChannel:
    """One signal of a simulated recording and how it is stored in the EDF.

    Parameters
    ----------
    label : str
        EDF signal label, as the real cohort spells it.
    kind : str
        What is simulated: ``exg`` (EEG or EOG: a mixture of latent sources), ``emg``,
        ``emg_envelope`` (1-s RMS of chin EMG), ``ecg``, ``airflow``, ``effort``, ``spo2``,
        ``heart_rate``, ``position``, ``light``, ``temperature`` or ``marker``.
    fs : int
        Native sampling rate in Hz.
    modality : str, optional
        Canonical modality the channel feeds (``eeg``, ``eeg2``, ``eog``, ``emg``, ``ecg``); used to
        report which modality an artefact makes unavailable.
    mix : tuple of (str, float)
        For ``exg``: weight of each latent source (``delta``, ``theta``, ``alpha``, ``spindle``,
        ``kcomplex``, ``vertex``, ``sawtooth``, ``eye``, ``blink``, ``movement``, ``ecg``).
    background_uv : float
        For ``exg``: RMS of the channel's own 1/f background (independent between channels).
    muscle : float
        For ``exg``: fraction of the chin-EMG envelope that leaks in as high-frequency noise.
    unit, physical_range, digital_range, transducer, prefilter
        EDF header fields; samples outside the physical range are clipped (amplifier saturation).
    """

    label: str
    kind: str
    fs: int
    modality: str | None = None
    mix: tuple[tuple[str, float], ...] = ()
    background_uv: float = 0.0
    muscle: float = 0.0
    unit: str = "uV"
    physical_range: tuple[float, float] = (-500.0, 500.0)
    digital_range: tuple[int, int] = (-32768, 32767)
    transducer: str = ""
    prefilter: str = ""


# Source weights by electrode site.  Frontal leads see eye movements and more delta, parietal
# leads most of the alpha; mastoid-referenced central leads pick up the ECG.
_FRONTAL = (("delta", 1.15), ("theta", 0.9), ("alpha", 0.45), ("spindle", 0.7), ("kcomplex", 1.1),
            ("vertex", 0.9), ("sawtooth", 0.8), ("eye", 0.12), ("blink", 0.35), ("movement", 0.7))
_PARIETAL = (("delta", 0.7), ("theta", 0.8), ("alpha", 1.5), ("spindle", 0.7), ("kcomplex", 0.5),
             ("vertex", 0.5), ("sawtooth", 0.6), ("eye", 0.02), ("blink", 0.03), ("movement", 0.5))
_CENTRAL = (("delta", 1.0), ("theta", 1.0), ("alpha", 0.85), ("spindle", 1.0), ("kcomplex", 1.0),
            ("vertex", 1.0), ("sawtooth", 1.0), ("eye", 0.05), ("blink", 0.1), ("movement", 0.6),
            ("ecg", 4.0))


def _eog_mix(eye: float, blink: float) -> tuple[tuple[str, float], ...]:
    # Common-mode content (frontal delta, K-complexes, blinks) is the same in left and right
    # electrodes, so it cancels in their difference while the eye dipole (opposite signs) adds up.
    return (("eye", eye), ("blink", blink), ("delta", 0.35), ("kcomplex", 0.3), ("theta", 0.15),
            ("alpha", 0.1), ("movement", 0.9))


_SC_EEG = dict(physical_range=(-250.0, 250.0), digital_range=(-2048, 2047),
               transducer="Ag-AgCl electrodes", prefilter="HP:0.5Hz LP:100Hz [enhanced cassette BW]")

#: Sleep-EDF Expanded, sleep-cassette study (12-bit samples and header texts as in the SC files).
SLEEP_EDF_CHANNELS: tuple[SynthChannel, ...] = (
    SynthChannel("EEG Fpz-Cz", "exg", 100, "eeg", _FRONTAL, 8.0, 0.5, **_SC_EEG),
    SynthChannel("EEG Pz-Oz", "exg", 100, "eeg2", _PARIETAL, 7.0, 0.15, **_SC_EEG),
    SynthChannel("EOG horizontal", "exg", 100, "eog", _eog_mix(1.0, 0.25), 5.0, 0.3, unit="uV",
                 physical_range=(-600.0, 600.0), digital_range=(-2048, 2047),
                 transducer="Ag-AgCl electrodes", prefilter="HP:0.5Hz LP:100Hz [enhanced cassette BW]"),
    SynthChannel("Resp oro-nasal", "airflow", 1, None, unit="", physical_range=(-2048.0, 2047.0),
                 digital_range=(-2048, 2047), transducer="Oral-nasal thermistors", prefilter="HP:0.03Hz LP:0.9Hz"),
    SynthChannel("EMG submental", "emg_envelope", 1, "emg", unit="uV", physical_range=(0.0, 200.0),
                 digital_range=(-2048, 2047), transducer="Ag-AgCl electrodes",
                 prefilter="HP:16Hz Rectification LP:0.7Hz"),
    SynthChannel("Temp rectal", "temperature", 1, None, unit="DegC", physical_range=(34.0, 40.0),
                 digital_range=(-2048, 2047), transducer="Rectal thermistor", prefilter="LP:0.1Hz (first order)"),
    SynthChannel("Event marker", "marker", 1, None, unit="", physical_range=(-2048.0, 2047.0),
                 digital_range=(-2048, 2047), transducer="Marker button", prefilter="No filtering"),
)

_SHHS_EXG = dict(unit="uV", physical_range=(-250.0, 250.0), transducer="", prefilter="")

#: SHHS-1 (NSRR), in the channel order of the visit-1 EDFs.
SHHS_CHANNELS: tuple[SynthChannel, ...] = (
    SynthChannel("SaO2", "spo2", 1, None, unit="%", physical_range=(0.0, 100.0)),
    SynthChannel("H.R.", "heart_rate", 1, None, unit="bpm", physical_range=(0.0, 250.0)),
    SynthChannel("EEG(sec)", "exg", 125, "eeg2", _CENTRAL, 8.0, 0.3, **_SHHS_EXG),
    SynthChannel("ECG", "ecg", 125, "ecg", unit="mV", physical_range=(-2.5, 2.5)),
    SynthChannel("EMG", "emg", 125, "emg", unit="uV", physical_range=(-250.0, 250.0)),
    SynthChannel("EOG(L)", "exg", 50, "eog", _eog_mix(0.5, 0.5), 5.0, 0.2, **_SHHS_EXG),
    SynthChannel("EOG(R)", "exg", 50, "eog", _eog_mix(-0.5, 0.5), 5.0, 0.2, **_SHHS_EXG),
    SynthChannel("EEG", "exg", 125, "eeg", _CENTRAL, 8.0, 0.3, **_SHHS_EXG),
    SynthChannel("THOR RES", "effort", 10, None, unit="", physical_range=(-1.0, 1.0)),
    SynthChannel("POSITION", "position", 1, None, unit="", physical_range=(0.0, 3.0)),
    SynthChannel("LIGHT", "light", 1, None, unit="", physical_range=(0.0, 1.0)),
)

#: A generic AASM montage (mastoid-referenced derivations, chin EMG at a higher rate).
GENERIC_CHANNELS: tuple[SynthChannel, ...] = (
    SynthChannel("C4-M1", "exg", 256, "eeg", _CENTRAL, 8.0, 0.3, unit="uV", physical_range=(-400.0, 400.0)),
    SynthChannel("E1-M2", "exg", 256, "eog", _eog_mix(0.5, 0.5), 5.0, 0.2, unit="uV",
                 physical_range=(-400.0, 400.0)),
    SynthChannel("Chin1-Chin2", "emg", 512, "emg", unit="uV", physical_range=(-300.0, 300.0)),
)

_PROFILE_CHANNELS: dict[str, tuple[SynthChannel, ...]] = {
    "sleep-edf": SLEEP_EDF_CHANNELS, "shhs": SHHS_CHANNELS, "generic": GENERIC_CHANNELS,
}


# =====================================================================================================
# Signal building blocks (all vectorised over the whole night)
# =====================================================================================================


def _child_rng(base: int, key: str) -> np.random.Generator:
    # One independent stream per named component: a channel's noise does not depend on which other
    # channels were simulated before it (dropping the EOG leaves the EEG bit-identical).
    return np.random.default_rng([base, zlib.crc32(key.encode())])


def _shaped_noise(rng: np.random.Generator, n: int, fs: float,
                  amplitude: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gaussian noise of ``n`` samples with spectral amplitude ``amplitude(f)``, unit RMS.

    Only the bins below ``amplitude.f_max`` (when the shape has one) are drawn: a delta-band source
    of an 8-h night then costs one inverse FFT rather than millions of random numbers.
    """
    nfft = sfft.next_fast_len(n, real=True)
    m = nfft // 2 + 1
    f_max = getattr(amplitude, "f_max", None)
    used = m if f_max is None else min(m, int(np.ceil(f_max * nfft / fs)) + 1)
    freqs = np.arange(used, dtype=np.float64) * (fs / nfft)
    spectrum = np.zeros(m, dtype=np.complex64)
    spectrum[:used] = (rng.standard_normal(used, dtype=np.float32)
                       + 1j * rng.standard_normal(used, dtype=np.float32)) * amplitude(freqs).astype(np.float32)
    spectrum[0] = 0.0  # no DC offset
    # Parseval: the RMS of the irfft follows from the spectrum (irfft divides by nfft).
    power = 2.0 * float(np.sum(np.abs(spectrum[:used].astype(np.complex128)) ** 2))
    rms = math.sqrt(power) / nfft
    x = sfft.irfft(spectrum, nfft)[:n]
    return (x / np.float32(rms) if rms > 0 else x).astype(np.float32, copy=False)


def _bump(center: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    def amp(f: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((f - center) / width) ** 2)
    amp.f_max = center + 6.0 * width  # type: ignore[attr-defined]  # exp(-18): nothing left above
    return amp


def _aperiodic(exponent: float, fs: float) -> Callable[[np.ndarray], np.ndarray]:
    # 1/f^exponent power with the recorder's 0.3-Hz high-pass and a gentle roll-off near Nyquist,
    # plus a small beta bump (15–30 Hz) that real background activity has.
    def amp(f: np.ndarray) -> np.ndarray:
        f_safe = np.maximum(f, 0.3)
        a = f_safe ** (-exponent / 2.0) / (1.0 + (0.3 / np.maximum(f, 1e-3)) ** 2)
        a += 0.08 * np.exp(-0.5 * ((f - 21.0) / 5.0) ** 2)
        return a / (1.0 + (f / (0.42 * fs)) ** 8)
    return amp


def _highband(low: float, fs: float) -> Callable[[np.ndarray], np.ndarray]:
    # Muscle activity: broadband above ~low Hz, rolled off just below Nyquist.
    return lambda f: 1.0 / (1.0 + (low / np.maximum(f, 1e-3)) ** 6) / (1.0 + (f / (0.45 * fs)) ** 8)


def _per_sample(values: np.ndarray, n: int, fs: int, smooth_s: int = 3) -> np.ndarray:
    """Per-epoch values → a per-sample envelope with transitions of ``smooth_s`` seconds.

    The envelope changes once a second: amplitude steps that small and that slow are invisible
    in the signal, and repeating is ten times faster than interpolating hours of samples.
    """
    per_second = np.repeat(np.asarray(values, dtype=np.float32), EPOCH_S)
    if smooth_s > 1:
        per_second = uniform_filter1d(per_second, size=smooth_s, mode="nearest")
    return np.repeat(per_second, fs)[:n]


def _draw_times(rng: np.random.Generator, rates: np.ndarray) -> np.ndarray:
    """Event times (s) of a Poisson process whose expected count per epoch is ``rates``."""
    counts = rng.poisson(rates)
    epochs = np.repeat(np.arange(rates.size), counts)
    return (epochs + rng.random(epochs.size)) * EPOCH_S


def _render_events(times_s: np.ndarray, weights: np.ndarray, template: np.ndarray, n: int,
                   fs: float) -> np.ndarray:
    """Place ``template`` (scaled by ``weights``) starting at each event time; ``n`` samples out."""
    times_s = np.asarray(times_s, dtype=np.float64)
    if times_s.size == 0:
        return np.zeros(n, dtype=np.float32)
    # Events are sparse: summing shifted copies directly beats an FFT convolution of the night.
    idx = (times_s * fs).astype(np.int64)[:, None] + np.arange(template.size)
    values = np.asarray(weights, dtype=np.float64)[:, None] * template[None, :]
    inside = idx < n
    return np.bincount(idx[inside], weights=values[inside], minlength=n)[:n].astype(np.float32)


def _t(duration_s: float, fs: float) -> np.ndarray:
    return np.arange(int(round(duration_s * fs))) / fs


def _gauss(t: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sd) ** 2)


def _kcomplex_template(fs: float) -> np.ndarray:
    # A sharp negative wave followed by a slower positive one (EEG convention: negative is up).
    t = _t(1.3, fs)
    w = -_gauss(t, 0.3, 0.07) + 0.6 * _gauss(t, 0.68, 0.16)
    return w / np.ptp(w)


def _vertex_template(fs: float) -> np.ndarray:
    t = _t(0.5, fs)
    w = -_gauss(t, 0.12, 0.035) + 0.35 * _gauss(t, 0.28, 0.06)
    return w / np.ptp(w)


def _saccade_template(fs: float, time_constant_s: float = 1.0) -> np.ndarray:
    # A step of eye position (30-ms rise) seen through the EOG amplifier's first-order high-pass.
    t = _t(5.0 * time_constant_s, fs)
    return (1.0 - np.exp(-t / 0.03)) * np.exp(-t / time_constant_s)


def _hann(duration_s: float, fs: float) -> np.ndarray:
    return np.hanning(max(3, int(round(duration_s * fs))))


def _ecg_template(fs: float) -> np.ndarray:
    # P, Q, R, S, T waves (mV); the R peak sits 0.3 s after the template start.
    t = _t(0.8, fs)
    return (0.12 * _gauss(t, 0.14, 0.025) - 0.10 * _gauss(t, 0.28, 0.008) + 1.0 * _gauss(t, 0.30, 0.009)
            - 0.25 * _gauss(t, 0.325, 0.01) + 0.30 * _gauss(t, 0.55, 0.045))


def _resample(x: np.ndarray, fs_from: int, fs_to: int, n_out: int) -> np.ndarray:
    if fs_from == fs_to:
        return x[:n_out]
    ratio = Fraction(fs_to, fs_from)
    y = ssig.resample_poly(x, ratio.numerator, ratio.denominator)
    return y[:n_out].astype(np.float32)


# =====================================================================================================
# One night
# =====================================================================================================


class _Night:
    """The rate-independent plan of one night (per-epoch amplitudes, event times) and a cache of its
    latent sources at :data:`_LATENT_FS`.  Channels are rendered from it by :func:`simulate_night`.
    """

    def __init__(self, hypnogram: Hypnogram, subject: SubjectTraits, base: int,
                 respiratory_events: Sequence[RespiratoryEvent]):
        self.hyp = hypnogram
        self.subject = subject
        self.base = base
        self.events = list(respiratory_events)
        self.n_epochs = hypnogram.n_epochs
        self.duration_s = float(hypnogram.duration_s)
        self.rc = _RENDER_CLASS[hypnogram.rk]
        self._cache: dict[object, np.ndarray] = {}
        rng = _child_rng(base, "plan")
        n_ep = self.n_epochs

        def per_epoch(table: np.ndarray, jitter: float = 0.2) -> np.ndarray:
            # Stage value × per-night factor × per-epoch jitter: stages overlap in amplitude.
            return table[self.rc] * np.exp(rng.normal(0.0, 0.12)) * np.exp(rng.normal(0.0, jitter, n_ep))

        self.delta_uv = per_epoch(_DELTA_UV)
        self.theta_uv = per_epoch(_THETA_UV)
        self.alpha_uv = per_epoch(_ALPHA_UV, 0.3) * subject.alpha_gain
        self.background = per_epoch(_BACKGROUND_GAIN, 0.1)
        self.slow_eye_uv = per_epoch(_SLOW_EYE_UV, 0.35)
        self.emg_tone_uv = per_epoch(_EMG_TONE_UV, 0.3) * subject.emg_gain
        self.heart_rate = subject.heart_rate_bpm + _HEART_RATE_DELTA[self.rc] + rng.normal(0, 1.5, n_ep)
        self.resp_rate = subject.resp_rate_bpm + _RESP_RATE_DELTA[self.rc] + rng.normal(0, 0.4, n_ep)
        self.resp_rate[self.rc == _RC_REM] += rng.normal(0, 1.5, int((self.rc == _RC_REM).sum()))
        # Drowsiness blurs the W/N1 boundary as it does for human scorers: wake epochs next to N1
        # lose alpha and gain slow eye movements, N1 epochs next to wake keep some alpha.
        is_w, is_n1 = self.rc == _RC_W, self.rc == _RC_N1
        near_n1 = np.convolve(is_n1, np.ones(5), mode="same") > 0
        near_w = np.convolve(is_w, np.ones(3), mode="same") > 0
        drowsy = is_w & near_n1 & (rng.random(n_ep) < 0.7)
        self.alpha_uv[drowsy] *= rng.uniform(0.25, 0.7, int(drowsy.sum()))
        self.slow_eye_uv[drowsy] = _SLOW_EYE_UV[_RC_N1] * rng.uniform(0.3, 0.8, int(drowsy.sum()))
        # Slow rolling eye movements come and go: many N1 epochs have none.
        no_sem = is_n1 & (rng.random(n_ep) < 0.4)
        self.slow_eye_uv[no_sem] *= 0.15
        light = is_n1 & near_w
        self.alpha_uv[light] = _ALPHA_UV[_RC_W] * subject.alpha_gain * rng.uniform(0.3, 0.6, int(light.sum()))

        # Discrete events: (times in s, weights).  Templates are applied at render time, per rate.
        self.spindles = self._amplitudes(rng, _draw_times(rng, _SPINDLE_RATE[self.rc]), 22.0, 0.25)
        self.spindle_len = rng.choice([0.7, 1.0, 1.5], size=self.spindles[0].size)
        self.kcomplexes = self._amplitudes(rng, _draw_times(rng, _KCOMPLEX_RATE[self.rc]), 110.0, 0.25)
        self.vertex = self._amplitudes(rng, _draw_times(rng, _VERTEX_RATE[self.rc]), 55.0, 0.25)
        self.sawtooth = self._amplitudes(rng, _draw_times(rng, _SAWTOOTH_RATE[self.rc]), 25.0, 0.25)
        # REM saccades cluster in phasic epochs; in wake they follow gaze shifts in both directions.
        phasic = (self.rc == _RC_REM) & (rng.random(n_ep) < 0.55)
        rem_rate = np.where(self.rc == _RC_REM, np.where(phasic, 14.0, 1.0), 0.0)
        wake_sacc = self._amplitudes(rng, _draw_times(rng, _SACCADE_RATE[self.rc]), 90.0, 0.4)
        rem_sacc = self._amplitudes(rng, _draw_times(rng, rem_rate), 150.0, 0.4)
        times = np.concatenate([wake_sacc[0], rem_sacc[0]])
        signs = rng.choice([-1.0, 1.0], size=times.size)
        self.saccades = (times, np.concatenate([wake_sacc[1], rem_sacc[1]]) * signs)
        self.blinks = self._amplitudes(rng, _draw_times(rng, _BLINK_RATE[self.rc]), 150.0, 0.3)
        self.twitches = self._amplitudes(rng, _draw_times(rng, _TWITCH_RATE[self.rc]), 15.0, 0.4)
        self.movements = self._amplitudes(rng, _draw_times(rng, _MOVEMENT_RATE[self.rc]), 1.0, 0.4)
        self.movement_len = rng.choice([2.0, 4.0, 8.0], size=self.movements[0].size)
        self.mt_tone = np.where(self.rc == _RC_MT, 1.0, 0.0)
        # Body position changes with some of the movements.
        moves = self.movements[0]
        keep = rng.random(moves.size) < 0.5
        self.position_times = np.sort(moves[keep])
        self.position_values = rng.integers(0, 4, size=self.position_times.size + 1).astype(np.float64)
        # Lights: off shortly before sleep onset, on at the end of the final wake period.
        first_sleep = np.flatnonzero(hypnogram.aasm > 0)
        onset_s = float(first_sleep[0] * EPOCH_S) if first_sleep.size else self.duration_s / 2
        self.lights_off_s = onset_s * float(rng.uniform(0.3, 0.8))
        self.lights_on_s = self.duration_s - float(rng.uniform(60.0, 300.0))
        # Heart beats: integrate the instantaneous rate (with respiratory sinus arrhythmia).
        grid = np.arange(0.0, self.duration_s, 0.05)
        hr = np.interp(grid, (np.arange(n_ep) + 0.5) * EPOCH_S, self.heart_rate)
        hr += 3.0 * np.sin(2 * np.pi * grid * subject.resp_rate_bpm / 60.0)
        self.hr_grid, self.hr_curve = grid, hr
        phase = np.concatenate([[0.0], np.cumsum(hr / 60.0 * 0.05)])[:-1] + rng.random()
        beats = np.arange(math.ceil(phase[0]), math.floor(phase[-1]) + 1)
        self.beat_times = np.interp(beats, phase, grid)

    @staticmethod
    def _amplitudes(rng: np.random.Generator, times: np.ndarray, mean: float,
                    sd_log: float) -> tuple[np.ndarray, np.ndarray]:
        return times, mean * np.exp(rng.normal(0.0, sd_log, times.size))

    # ---- envelopes and latent sources --------------------------------------------------------------

    def n_samples(self, fs: float) -> int:
        """Samples of a channel sampled at ``fs`` over the whole night."""
        return int(round(self.duration_s * fs))

    def emg_envelope(self, fs: int) -> np.ndarray:
        """Chin-muscle activity (RMS µV) over time: tone by stage + REM twitches + movements."""
        key = ("emg_env", fs)
        if key not in self._cache:
            n = self.n_samples(fs)
            env = _per_sample(self.emg_tone_uv, n, fs, smooth_s=4)
            env += _render_events(*self.twitches, _hann(0.2, fs), n, fs)
            times, weights = self.movements
            for length in (2.0, 4.0, 8.0):
                sel = self.movement_len == length
                env += _render_events(times[sel], weights[sel] * 60.0 * self.subject.emg_gain,
                                      _hann(length, fs), n, fs)
            env += _per_sample(self.mt_tone * 50.0 * self.subject.emg_gain, n, fs, smooth_s=1)
            self._cache[key] = env
        return self._cache[key]

    def shared_noise(self, kind: str, fs: int, rng: np.random.Generator) -> np.ndarray:
        """A channel's own ``background`` (1/f) or ``muscle`` noise at ``fs``.

        One realisation per rate is simulated and each channel takes it circularly shifted by a
        random offset of minutes to hours: the channels' noises are then uncorrelated at every lag
        that matters, for one FFT per rate instead of one per channel.
        """
        key = (kind, fs)
        if key not in self._cache:
            n = self.n_samples(fs)
            shape = (_aperiodic(self.subject.aperiodic_exponent, fs) if kind == "background"
                     else _highband(20.0 if kind == "muscle" else 15.0, fs))
            self._cache[key] = _shaped_noise(_child_rng(self.base, f"noise/{kind}/{fs}"), n, fs, shape)
        noise = self._cache[key]
        return np.roll(noise, int(rng.integers(noise.size)))

    def latent(self, name: str) -> np.ndarray:
        """A latent source at :data:`_LATENT_FS` (µV; ``ecg`` in mV)."""
        if name not in self._cache:
            self._cache[name] = self._make_latent(name)
        return self._cache[name]

    def _make_latent(self, name: str) -> np.ndarray:
        fs = _LATENT_FS
        n = self.n_samples(fs)
        rng = _child_rng(self.base, f"latent/{name}")
        s = self.subject
        if name == "delta":
            return _shaped_noise(rng, n, fs, _bump(0.9, 0.45)) * _per_sample(self.delta_uv, n, fs)
        if name == "theta":
            return _shaped_noise(rng, n, fs, _bump(s.theta_hz, 0.9)) * _per_sample(self.theta_uv, n, fs)
        if name == "alpha":
            # Alpha waxes and wanes with eye closure over tens of seconds.
            slow = _shaped_noise(rng, int(self.duration_s), 1.0, _bump(0.0, 0.03))
            modulation = np.repeat(0.3 + 1.4 / (1.0 + np.exp(-2.5 * slow)), fs).astype(np.float32)
            return (_shaped_noise(rng, n, fs, _bump(s.alpha_hz, 0.6)) * modulation
                    * _per_sample(self.alpha_uv, n, fs))
        if name == "spindle":
            carrier = _shaped_noise(rng, n, fs, _bump(s.spindle_hz, 0.5)) * np.float32(np.sqrt(2.0))
            times, weights = self.spindles
            env = np.zeros(n, dtype=np.float32)
            for length in (0.7, 1.0, 1.5):
                sel = self.spindle_len == length
                env += _render_events(times[sel], weights[sel], _hann(length, fs), n, fs)
            return carrier * env
        if name == "kcomplex":
            return _render_events(*self.kcomplexes, _kcomplex_template(fs), n, fs)
        if name == "vertex":
            return _render_events(*self.vertex, _vertex_template(fs), n, fs)
        if name == "sawtooth":
            env = _render_events(*self.sawtooth, _hann(2.5, fs), n, fs)
            inside = np.flatnonzero(env)  # the wave only exists inside bursts
            frac = (inside / fs * s.sawtooth_hz) % 1.0
            rise = 0.15  # fast rise, slow fall: the "sawtooth" shape
            wave = np.where(frac < rise, frac / rise, (1.0 - frac) / (1.0 - rise)) * 2.0 - 1.0
            env[inside] *= wave.astype(np.float32)
            return env
        if name == "eye":
            saccades = _render_events(*self.saccades, _saccade_template(fs), n, fs)
            rolling = _shaped_noise(rng, n, fs, _bump(0.3, 0.15)) * _per_sample(self.slow_eye_uv, n, fs, 10)
            return (saccades + rolling) * np.float32(s.eog_gain)
        if name == "blink":
            t = _t(0.5, fs)
            return _render_events(*self.blinks, _gauss(t, 0.2, 0.07), n, fs) * np.float32(s.eog_gain)
        if name == "movement":
            env = self.emg_envelope(fs) / np.float32(max(s.emg_gain, 1e-3))
            env = np.maximum(env - _per_sample(self.emg_tone_uv / s.emg_gain, n, fs, 4), 0.0)
            return _shaped_noise(rng, n, fs, _bump(1.0, 1.5)) * env * np.float32(1.5)
        if name == "ecg":
            return self.ecg(fs)
        raise ValueError(f"unknown latent source {name!r}")

    def ecg(self, fs: int) -> np.ndarray:
        """ECG (mV) at ``fs``: one P-QRS-T complex per beat."""
        key = ("ecg", fs)
        if key not in self._cache:
            n = self.n_samples(fs)
            weights = 1.0 + 0.05 * np.sin(2 * np.pi * self.beat_times * self.subject.resp_rate_bpm / 60.0)
            self._cache[key] = _render_events(np.maximum(self.beat_times - 0.3, 0.0), weights,
                                              _ecg_template(fs), n, fs)
        return self._cache[key]

    def breathing(self, fs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Breathing waveform at ``fs`` and the airflow/effort attenuation of scored events."""
        n = self.n_samples(fs)
        t = np.arange(n) / fs
        rate = np.interp(t, (np.arange(self.n_epochs) + 0.5) * EPOCH_S, self.resp_rate)
        phase = 2 * np.pi * np.cumsum(rate / 60.0 / fs)
        wave = np.sin(phase) + 0.25 * np.sin(2 * phase + 0.7)
        flow = np.ones(n)
        effort = np.ones(n)
        for ev in self.events:
            if ev.event_type != _RESPIRATORY or ev.concept == _DESATURATION:
                continue
            sl = slice(int(ev.start_s * fs), int(ev.end_s * fs))
            flow[sl] = 0.05 if ev.concept == _APNEA else 0.4  # obstructive: no flow, effort goes on
            effort[sl] = 1.2 if ev.concept == _APNEA else 0.6
        return wave, flow, effort


def _render_exg(ch: SynthChannel, night: _Night, rng: np.random.Generator) -> np.ndarray:
    mixed = np.zeros(night.n_samples(_LATENT_FS), dtype=np.float32)
    for source, weight in ch.mix:
        mixed += np.float32(weight) * night.latent(source)
    n = night.n_samples(ch.fs)
    x = _resample(mixed, _LATENT_FS, ch.fs, n)
    x = x + night.shared_noise("background", ch.fs, rng) * _per_sample(night.background * ch.background_uv, n, ch.fs)
    if ch.muscle:
        x = x + night.shared_noise("muscle", ch.fs, rng) * night.emg_envelope(ch.fs) * np.float32(ch.muscle)
    # Electrode impedance and placement differ per subject and channel.
    gain = night.subject.eeg_gain * float(np.exp(_child_rng(night.base, f"gain/{ch.label}").normal(0.0, 0.1)))
    return x * np.float32(gain)


def _render(ch: SynthChannel, night: _Night) -> np.ndarray:
    rng = _child_rng(night.base, f"channel/{ch.label}")
    n = night.n_samples(ch.fs)
    if ch.kind == "exg":
        return _render_exg(ch, night, rng)
    if ch.kind == "emg":
        return night.shared_noise("emg", ch.fs, rng) * night.emg_envelope(ch.fs)
    if ch.kind == "emg_envelope":
        # The SC recorder stored the chin EMG as a rectified, smoothed 1-Hz envelope.
        fs_raw = _LATENT_FS
        raw = night.shared_noise("emg", fs_raw, rng) * night.emg_envelope(fs_raw)
        per_second = np.sqrt(np.mean(np.square(raw.reshape(-1, fs_raw), dtype=np.float64), axis=1))
        return np.repeat(per_second, ch.fs).astype(np.float32)[:n] if ch.fs > 1 else per_second.astype(np.float32)
    if ch.kind == "ecg":
        wander = 0.08 * _shaped_noise(rng, n, ch.fs, _bump(0.0, 0.3))
        return night.ecg(ch.fs) + wander + 0.01 * rng.standard_normal(n, dtype=np.float32)
    if ch.kind in ("airflow", "effort"):
        wave, flow, effort = night.breathing(ch.fs)
        if ch.kind == "airflow":
            scale = 0.55 * ch.physical_range[1]
            return (wave * flow * scale + 0.05 * scale * rng.standard_normal(n)).astype(np.float32)
        return (0.5 * wave * effort + 0.02 * rng.standard_normal(n)).astype(np.float32)
    if ch.kind == "spo2":
        t = np.arange(n) / ch.fs
        spo2 = night.subject.spo2_baseline + 0.4 * _shaped_noise(rng, n, ch.fs, _bump(0.0, 0.01))
        for ev in night.events:
            if ev.concept == _DESATURATION and ev.spo2_nadir is not None and ev.spo2_baseline is not None:
                drop = ev.spo2_baseline - ev.spo2_nadir
                spo2 = spo2 - drop * _gauss(t, ev.start_s + ev.duration_s / 2, ev.duration_s / 3)
        return np.clip(np.round(spo2, 1), 50.0, 100.0).astype(np.float32)
    if ch.kind == "heart_rate":
        t = (np.arange(n) + 0.5) / ch.fs
        return np.round(np.interp(t, night.hr_grid, night.hr_curve)).astype(np.float32)
    if ch.kind == "position":
        t = np.arange(n) / ch.fs
        return night.position_values[np.searchsorted(night.position_times, t)].astype(np.float32)
    if ch.kind == "light":
        t = np.arange(n) / ch.fs
        return ((t < night.lights_off_s) | (t >= night.lights_on_s)).astype(np.float32)
    if ch.kind == "temperature":
        t = np.arange(n) / ch.fs
        curve = 37.1 - 0.6 * np.sin(np.pi * np.clip(t / night.duration_s, 0.0, 1.0))
        return (curve + 0.03 * _shaped_noise(rng, n, ch.fs, _bump(0.0, 0.005))).astype(np.float32)
    if ch.kind == "marker":
        x = np.zeros(n, dtype=np.float32)
        x[int(night.lights_off_s * ch.fs):int(night.lights_off_s * ch.fs) + 2] = 1000.0  # lights-off press
        return x
    raise ValueError(f"channel {ch.label!r}: unknown kind {ch.kind!r}")


def simulate_night(hypnogram: Hypnogram, channels: Sequence[SynthChannel],
                   rng: np.random.Generator | int | None = 0, subject: SubjectTraits | None = None,
                   respiratory_events: Sequence[RespiratoryEvent] = ()) -> dict[str, np.ndarray]:
    """Simulate the signals of one night.

    Parameters
    ----------
    hypnogram : Hypnogram
        The stages the signals must show.
    channels : sequence of SynthChannel
        What to simulate, e.g. :data:`SLEEP_EDF_CHANNELS`; each at its native rate.
    rng : numpy.random.Generator or int
        Random source or seed (one integer is drawn from it; every channel then has its own stream).
    subject : SubjectTraits, optional
        The subject's traits (drawn from ``rng`` when omitted); reuse them for nights of one subject.
    respiratory_events : sequence of RespiratoryEvent
        Apneas/hypopneas/desaturations shaping the airflow, effort and SpO2 channels.

    Returns
    -------
    dict of str to numpy.ndarray
        Channel label → float32 samples (``hypnogram.duration_s × fs`` of them), in the channel's
        physical unit, not yet clipped to its physical range.
    """
    rng = _as_rng(rng)
    base = int(rng.integers(2**62))
    if subject is None:
        subject = SubjectTraits.draw(_child_rng(base, "subject"))
    night = _Night(hypnogram, subject, base, respiratory_events)
    return {ch.label: _render(ch, night) for ch in channels}


# =====================================================================================================
# Artefacts
# =====================================================================================================


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


# =====================================================================================================
# Writers
# =====================================================================================================


def _patient() -> Patient:
    return Patient(code=SYNTH_PATIENT_CODE, sex=SYNTH_PATIENT_SEX, birthdate=SYNTH_BIRTHDATE,
                   name=SYNTH_PATIENT_NAME)


def _recording(start: dt.datetime) -> Recording:
    return Recording(startdate=start.date(), hospital_administration_code=SYNTH_HOSPITAL,
                     investigator_technician_code=SYNTH_TECHNICIAN, equipment_code=SYNTH_EQUIPMENT)


def write_edf(path: str | Path, signals: Mapping[str, np.ndarray], channels: Sequence[SynthChannel],
              start: dt.datetime, data_record_duration: float = 1.0,
              annotations: Iterable[EdfAnnotation] | None = None) -> Path:
    """Write signals as an EDF (or EDF+C when ``annotations`` is given) with the fake identification.

    Channels absent from ``signals`` are skipped (a missing modality).  Samples are clipped to each
    channel's physical range, as a saturating amplifier would, then quantised to its digital range.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file.
    signals : mapping of str to numpy.ndarray
        Channel label → samples in physical units.
    channels : sequence of SynthChannel
        Header information and the order of signals in the file.
    start : datetime.datetime
        Recording start (date and time written to the header).
    data_record_duration : float
        Seconds per EDF data record (Sleep-EDF SC: 30; SHHS: 1).
    annotations : iterable of EdfAnnotation, optional
        EDF+ annotations to embed.
    """
    edf_signals = []
    for ch in channels:
        if ch.label not in signals:
            continue
        x = np.clip(np.asarray(signals[ch.label], dtype=np.float64), *ch.physical_range)
        edf_signals.append(EdfSignal(x, ch.fs, label=ch.label, transducer_type=ch.transducer,
                                     physical_dimension=ch.unit, physical_range=ch.physical_range,
                                     digital_range=ch.digital_range, prefiltering=ch.prefilter))
    edf = Edf(edf_signals, patient=_patient(), recording=_recording(start), starttime=start.time(),
              data_record_duration=data_record_duration,
              annotations=list(annotations) if annotations is not None else None)
    path = Path(path)
    edf.write(path)
    return path


def write_sleep_edf_hypnogram(path: str | Path, hypnogram: Hypnogram, start: dt.datetime,
                              overrun_epochs: int = 0) -> Path:
    """Write a Sleep-EDF ``*-Hypnogram.edf``: an annotation-only EDF+ of R&K stage runs.

    Runs of equal stages are one annotation (duration a multiple of 30 s); the last one is extended
    by ``overrun_epochs`` so that it runs past the end of the signal, as in the real files.
    """
    runs = _runs(hypnogram.rk.tolist())
    annotations = []
    for i, (first, length, code) in enumerate(runs):
        if i == len(runs) - 1:
            length += overrun_epochs
        annotations.append(EdfAnnotation(float(first * EPOCH_S), float(length * EPOCH_S),
                                         SLEEP_EDF_STAGE_TEXT[int(code)]))
    edf = Edf([], patient=_patient(), recording=_recording(start), starttime=start.time(),
              annotations=annotations)
    path = Path(path)
    edf.write(path)
    return path


def _fmt_seconds(x: float) -> str:
    return f"{x:.1f}"


def write_nsrr_xml(path: str | Path, hypnogram: Hypnogram, start: dt.datetime,
                   events: Sequence[RespiratoryEvent] = ()) -> Path:
    """Write an NSRR ``*-nsrr.xml``: ``Recording Start Time``, then stage runs and scored events.

    Stage events (``Stages|Stages``) are run-length encoded and tile the recording exactly; the
    respiratory, desaturation and arousal events are interleaved by start time, as in NSRR exports.
    """
    duration = float(hypnogram.duration_s)
    items: list[tuple[float, int, str]] = []
    for first, length, code in _runs(hypnogram.rk.tolist()):
        body = (f"<EventType>Stages|Stages</EventType>\n"
                f"<EventConcept>{NSRR_STAGE_CONCEPT[int(code)]}</EventConcept>\n"
                f"<Start>{_fmt_seconds(first * EPOCH_S)}</Start>\n"
                f"<Duration>{_fmt_seconds(length * EPOCH_S)}</Duration>\n")
        items.append((first * EPOCH_S, 0, body))
    for ev in events:
        body = (f"<EventType>{ev.event_type}</EventType>\n<EventConcept>{ev.concept}</EventConcept>\n"
                f"<Start>{_fmt_seconds(ev.start_s)}</Start>\n<Duration>{_fmt_seconds(ev.duration_s)}</Duration>\n")
        if ev.spo2_nadir is not None:
            body += (f"<SpO2Nadir>{ev.spo2_nadir:.1f}</SpO2Nadir>\n"
                     f"<SpO2Baseline>{ev.spo2_baseline:.1f}</SpO2Baseline>\n"
                     "<SignalLocation>SaO2</SignalLocation>\n")
        elif ev.event_type == _RESPIRATORY:
            body += "<SignalLocation>NEW AIR</SignalLocation>\n"
        items.append((ev.start_s, 1, body))
    items.sort(key=lambda item: (item[0], item[1]))
    clock = f"00.00.00 {start:%H.%M.%S}"
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<PSGAnnotation>\n'
        "<SoftwareVersion>Compumedics</SoftwareVersion>\n<EpochLength>30</EpochLength>\n<ScoredEvents>\n",
        f"<ScoredEvent>\n<EventType/>\n<EventConcept>Recording Start Time</EventConcept>\n<Start>0</Start>\n"
        f"<Duration>{_fmt_seconds(duration)}</Duration>\n<ClockTime>{clock}</ClockTime>\n</ScoredEvent>\n",
    ]
    parts += [f"<ScoredEvent>\n{body}</ScoredEvent>\n" for _, _, body in items]
    parts.append("</ScoredEvents>\n</PSGAnnotation>\n")
    path = Path(path)
    path.write_text("".join(parts), encoding="utf-8", newline="\n")
    return path


def _generic_annotations(hypnogram: Hypnogram) -> list[tuple[float, float, str]]:
    texts = [GENERIC_STAGE_TEXT[int(c)] for c in hypnogram.rk.tolist()]
    return [(float(first * EPOCH_S), float(length * EPOCH_S), str(text)) for first, length, text in _runs(texts)]


def write_csv_hypnogram(path: str | Path, hypnogram: Hypnogram) -> Path:
    """Write an ``onset,duration,stage`` CSV (seconds; AASM labels W, N1, N2, N3, R; "?" unscored)."""
    lines = ["onset,duration,stage"]
    lines += [f"{onset:g},{duration:g},{text}" for onset, duration, text in _generic_annotations(hypnogram)]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return path


# =====================================================================================================
# Cohorts
# =====================================================================================================


@dataclass(frozen=True)
class _NightId:
    recording_id: str
    subject_id: str
    subject_index: int
    night: int  # 1-based
    psg: str
    hypnogram: str | None


_SC_TECHNICIAN_LETTERS = "CHJMPUVW"


def _night_id(profile: str, index: int, rng: np.random.Generator, embed: bool) -> _NightId:
    if profile == "sleep-edf":
        subject, night = divmod(index, 2)
        stem = f"SC4{subject:02d}{night + 1}"
        letter = _SC_TECHNICIAN_LETTERS[int(rng.integers(len(_SC_TECHNICIAN_LETTERS)))]
        return _NightId(f"{stem}E0", f"{subject:02d}", subject, night + 1, f"{stem}E0-PSG.edf",
                        f"{stem}E{letter}-Hypnogram.edf")
    if profile == "shhs":
        nsrrid = 200001 + index
        return _NightId(f"shhs1-{nsrrid}", str(nsrrid), index, 1, f"shhs1-{nsrrid}.edf",
                        f"shhs1-{nsrrid}-nsrr.xml")
    stem = f"gen{index + 1:04d}_night1"
    return _NightId(stem, f"gen{index + 1:04d}", index, 1, f"{stem}-psg.edf",
                    None if embed else f"{stem}-hypnogram.csv")


def _start_time(profile: str, subject_index: int, night: int, seed: int) -> dt.datetime:
    rng = np.random.default_rng([seed, 4, subject_index, night])
    clock = dt.time(int(rng.integers(21, 24)), int(rng.integers(0, 60)),
                    0 if profile == "sleep-edf" else int(rng.integers(0, 60)))
    if profile == "shhs":
        day = dt.date(1985, 1, 1)  # NSRR de-identified EDFs all carry this date
    else:
        # Both nights of a subject are consecutive (subject-level draw, night offset).
        first = dt.date(1989, 4, 1) if profile == "sleep-edf" else dt.date(2021, 1, 1)
        day = first + dt.timedelta(days=int(np.random.default_rng([seed, 5, subject_index]).integers(0, 1500)))
        day += dt.timedelta(days=night - 1)
    return dt.datetime.combine(day, clock)


def _validate(profile: str, n_nights: int, hours: float, embed: bool) -> None:
    errors = []
    if profile not in PROFILES:
        errors.append(f"profile: {profile!r} is not one of {list(PROFILES)}")
    if not isinstance(n_nights, (int, np.integer)) or n_nights < 1:
        errors.append(f"n_nights must be a positive integer; got {n_nights!r}")
    elif profile == "sleep-edf" and n_nights > 200:
        errors.append(f"n_nights: Sleep-EDF names hold subjects 00-99 (2 nights each), at most 200; got {n_nights}")
    elif profile == "shhs" and n_nights > 99999:
        errors.append(f"n_nights: SHHS ids hold at most 99999 nights; got {n_nights}")
    if not (isinstance(hours, (int, float)) and 1 / 6 <= hours <= 48):
        errors.append(f"hours must be between 1/6 (10 min) and 48; got {hours!r}")
    if embed and profile != "generic":
        errors.append(f"embed_annotations applies to the generic profile only; got profile {profile!r}")
    if errors:
        raise ConfigError("synth", errors)


def synthesize_cohort(profile: str, out_dir: str | Path, n_nights: int, seed: int = 0, hours: float = 8.0,
                      artefacts: ArtefactConfig | None = None, *, embed_annotations: bool = False,
                      progress: bool = False) -> list[ManifestEntry]:
    """Write a synthetic cohort in the file formats of ``profile`` plus its ``manifest.csv``.

    Parameters
    ----------
    profile : {"sleep-edf", "shhs", "generic"}
        File layout to write (see the module docstring).
    out_dir : str or pathlib.Path
        Local folder (created if needed); file names in the manifest are relative to it.
    n_nights : int
        Number of recordings.  Sleep-EDF: two nights per subject (subject ``i // 2``); SHHS and
        generic: one night per subject.
    seed : int
        Everything is a function of ``seed``: the same call writes byte-identical files.  Night
        ``i`` depends only on ``(seed, i)``, so a larger cohort starts with the smaller one's nights.
    hours : float
        Recording length; rounded to whole 30-s epochs.
    artefacts : ArtefactConfig, optional
        Artefacts to inject; when enabled, every recording gets a ``<recording_id>.artefacts.json``
        sidecar listing them (never inside the EDF).
    embed_annotations : bool
        Generic profile only: stages as EDF+ annotations inside the PSG instead of a CSV.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list of ManifestEntry
        The rows written to ``manifest.csv``.
    """
    _validate(profile, n_nights, hours, embed_annotations)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    channels = _PROFILE_CHANNELS[profile]
    n_epochs = max(20, int(round(hours * 3600 / EPOCH_S)))
    entries: list[ManifestEntry] = []
    indices: Iterable[int] = range(n_nights)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, total=n_nights, desc=f"synth {profile}", unit="night")
    for index in indices:
        entries.append(_write_night(profile, out, index, seed, n_epochs, channels, artefacts, embed_annotations))
    (out / "manifest.csv").write_text(format_manifest_csv(entries), encoding="utf-8", newline="\n")
    logger.info("wrote %d synthetic %s recordings to %s", len(entries), profile, out)
    return entries


def _write_night(profile: str, out: Path, index: int, seed: int, n_epochs: int,
                 channels: Sequence[SynthChannel], artefacts: ArtefactConfig | None, embed: bool) -> ManifestEntry:
    naming_rng = np.random.default_rng([seed, 0, index])
    ids = _night_id(profile, index, naming_rng, embed)
    subject = SubjectTraits.draw(np.random.default_rng([seed, 1, ids.subject_index]))
    night_rng = np.random.default_rng([seed, 2, index])
    hypnogram = simulate_hypnogram(n_epochs, night_rng)
    events = simulate_respiratory_events(hypnogram, subject, night_rng)
    signals = simulate_night(hypnogram, channels, night_rng, subject=subject, respiratory_events=events)
    if artefacts is not None and artefacts.enabled:
        signals, report = apply_artefacts(signals, channels, artefacts, np.random.default_rng([seed, 3, index]),
                                          n_epochs, ids.recording_id)
        (out / f"{ids.recording_id}.artefacts.json").write_text(report.to_json(), encoding="utf-8", newline="\n")
    start = _start_time(profile, ids.subject_index, ids.night, seed)

    if profile == "sleep-edf":
        write_edf(out / ids.psg, signals, channels, start, data_record_duration=EPOCH_S)
        write_sleep_edf_hypnogram(out / ids.hypnogram, hypnogram, start,
                                  overrun_epochs=int(naming_rng.integers(2, 120)))
    elif profile == "shhs":
        write_edf(out / ids.psg, signals, channels, start, data_record_duration=1.0)
        write_nsrr_xml(out / ids.hypnogram, hypnogram, start, events)
    else:
        annotations = None
        if embed:
            annotations = [EdfAnnotation(onset, duration, text)
                           for onset, duration, text in _generic_annotations(hypnogram)]
            # Exporters add non-stage annotations that a reader must skip.
            first_sleep = int(np.flatnonzero(hypnogram.aasm > 0)[0]) if (hypnogram.aasm > 0).any() else 0
            annotations += [EdfAnnotation(float(first_sleep * EPOCH_S // 2), None, "Lights off"),
                            EdfAnnotation(float(hypnogram.duration_s - 120), None, "Lights on")]
        else:
            write_csv_hypnogram(out / ids.hypnogram, hypnogram)
        write_edf(out / ids.psg, signals, channels, start, data_record_duration=1.0,
                  annotations=annotations if annotations is not None else [])
    return ManifestEntry(recording_id=ids.recording_id, subject_id=ids.subject_id, psg=ids.psg,
                         hypnogram=ids.hypnogram, profile=profile, split=None)
