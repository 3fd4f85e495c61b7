"""Synthetic polysomnography cohorts, written as the real files of real cohorts.

Tests, ``make demo`` and the benchmarks need nights that go through the whole pipeline (readers →
preprocessing → training → scoring) without shipping patient data.  This package simulates them and
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

The package is split by concept; imports between its modules point one way, in this order:

:mod:`~somnray.data.synth.codes`
    Stage codes, their texts in each file format, the 30-s epoch.
:mod:`~somnray.data.synth.identification`
    The fake identification of every EDF header.
:mod:`~somnray.data.synth.seeding`
    Seeds and generators.
:mod:`~somnray.data.synth.physiology`
    Per-stage amplitude and event-rate tables of the signal model.
:mod:`~somnray.data.synth.channels`
    Simulated signals and their EDF header fields; the montage of each profile.
:mod:`~somnray.data.synth.hypnogram`
    Scored nights and their simulation.
:mod:`~somnray.data.synth.subjects`
    Traits shared by the nights of one subject.
:mod:`~somnray.data.synth.respiratory`
    Apneas, hypopneas, desaturations and arousals.
:mod:`~somnray.data.synth.signals`
    Vectorised signal building blocks.
:mod:`~somnray.data.synth.night`
    The signals of one night.
:mod:`~somnray.data.synth.artefacts`
    Recording artefacts and their report.
:mod:`~somnray.data.synth.site`
    How a second recording site differs (gain, derivation, noise and filters, population).
:mod:`~somnray.data.synth.writers`
    EDF, EDF+ annotation, NSRR XML and CSV files.
:mod:`~somnray.data.synth.cohort`
    Whole cohorts with their manifest.
"""

from .artefacts import ArtefactConfig, ArtefactEvent, ArtefactReport, apply_artefacts
from .channels import GENERIC_CHANNELS, SHHS_CHANNELS, SLEEP_EDF_CHANNELS, SynthChannel
from .codes import (AASM_LABELS, EPOCH_S, GENERIC_STAGE_TEXT, NSRR_STAGE_CONCEPT, RK_MOVEMENT, RK_REM, RK_S1,
                    RK_S2, RK_S3, RK_S4, RK_UNSCORED, RK_W, SLEEP_EDF_STAGE_TEXT)
from .cohort import PROFILES, synthesize_cohort
from .hypnogram import Hypnogram, simulate_hypnogram
from .identification import (SYNTH_BIRTHDATE, SYNTH_EQUIPMENT, SYNTH_HOSPITAL, SYNTH_IDENTIFYING_STRINGS,
                             SYNTH_PATIENT_CODE, SYNTH_PATIENT_NAME, SYNTH_PATIENT_SEX, SYNTH_TECHNICIAN)
from .night import simulate_night
from .respiratory import RespiratoryEvent, simulate_respiratory_events
from .site import SITE_PRESETS, SiteConfig
from .subjects import SubjectTraits
from .writers import write_csv_hypnogram, write_edf, write_nsrr_xml, write_sleep_edf_hypnogram

__all__ = [
    "AASM_LABELS",
    "ArtefactConfig",
    "ArtefactEvent",
    "ArtefactReport",
    "EPOCH_S",
    "GENERIC_CHANNELS",
    "GENERIC_STAGE_TEXT",
    "Hypnogram",
    "NSRR_STAGE_CONCEPT",
    "PROFILES",
    "RK_MOVEMENT",
    "RK_REM",
    "RK_S1",
    "RK_S2",
    "RK_S3",
    "RK_S4",
    "RK_UNSCORED",
    "RK_W",
    "RespiratoryEvent",
    "SHHS_CHANNELS",
    "SITE_PRESETS",
    "SLEEP_EDF_CHANNELS",
    "SLEEP_EDF_STAGE_TEXT",
    "SYNTH_BIRTHDATE",
    "SYNTH_EQUIPMENT",
    "SYNTH_HOSPITAL",
    "SYNTH_IDENTIFYING_STRINGS",
    "SYNTH_PATIENT_CODE",
    "SYNTH_PATIENT_NAME",
    "SYNTH_PATIENT_SEX",
    "SYNTH_TECHNICIAN",
    "SiteConfig",
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
