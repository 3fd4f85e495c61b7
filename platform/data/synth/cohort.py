"""Cohorts: whole synthetic cohorts in the file layout of a profile, with their ``manifest.csv``.

Names files as the real cohorts do, draws each night from ``(seed, index)`` alone and writes it with
:mod:`somnray.data.synth.writers`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from edfio import EdfAnnotation

from somnray.core.errors import ConfigError

from ..manifest import ManifestEntry, format_manifest_csv
from .artefacts import ArtefactConfig, apply_artefacts
from .channels import _PROFILE_CHANNELS, SynthChannel
from .codes import EPOCH_S
from .hypnogram import simulate_hypnogram
from .night import simulate_night
from .respiratory import simulate_respiratory_events
from .subjects import SubjectTraits
from .writers import (_generic_annotations, write_csv_hypnogram, write_edf, write_nsrr_xml,
                      write_sleep_edf_hypnogram)

__all__ = ["PROFILES", "synthesize_cohort"]

# The package's logger, as when the generator was one module: log configuration keyed on
# ``somnray.data.synth`` keeps applying.
logger = logging.getLogger(__package__)

#: Cohort profiles this module writes.
PROFILES: tuple[str, ...] = ("sleep-edf", "shhs", "generic")


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
        # the subject id the sleep-edf profile derives from the file name (study prefix kept)
        return _NightId(f"{stem}E0", f"SC4{subject:02d}", subject, night + 1, f"{stem}E0-PSG.edf",
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
        File layout to write (see :mod:`somnray.data.synth`).
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
