"""Writers: signals and hypnograms as the files of real cohorts.

EDF/EDF+ signal files carrying the fake identification of :mod:`somnray.data.synth.identification`,
Sleep-EDF ``*-Hypnogram.edf`` annotation files, NSRR ``*-nsrr.xml`` event files and generic
``onset,duration,stage`` CSV hypnograms.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording

from .channels import SynthChannel
from .codes import EPOCH_S, GENERIC_STAGE_TEXT, NSRR_STAGE_CONCEPT, SLEEP_EDF_STAGE_TEXT
from .hypnogram import Hypnogram, _runs
from .identification import (SYNTH_BIRTHDATE, SYNTH_EQUIPMENT, SYNTH_HOSPITAL, SYNTH_PATIENT_CODE, SYNTH_PATIENT_NAME,
                             SYNTH_PATIENT_SEX, SYNTH_TECHNICIAN)
from .respiratory import _RESPIRATORY, RespiratoryEvent

__all__ = ["write_csv_hypnogram", "write_edf", "write_nsrr_xml", "write_sleep_edf_hypnogram"]


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
