"""Small EDF/EDF+ files written with edfio for reader and preparation tests.

Kept apart from the full synthetic PSG generator (``somnray.data.synth``) on purpose: these tests
need exact control over labels, rates, ranges and header fields, and must not depend on it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import edfio
import numpy as np

START = dt.datetime(2001, 2, 3, 22, 30, 0)


def sine(freq: float, sfreq: float, seconds: float, amplitude: float = 50.0, phase: float = 0.0,
         seed: int | None = None) -> np.ndarray:
    """A sinusoid, plus small noise when ``seed`` is given (so no epoch is flat)."""
    t = np.arange(int(round(seconds * sfreq))) / sfreq
    x = amplitude * np.sin(2 * np.pi * freq * t + phase)
    if seed is not None:
        x = x + np.random.default_rng(seed).normal(0, amplitude / 10, len(t))
    return x


def write_edf(path: Path, signals: dict[str, tuple[np.ndarray, float]], *,
              start: dt.datetime = START, annotations: list[tuple[float, float, str]] | None = None,
              physical_range: tuple[float, float] = (-500.0, 500.0),
              record_s: float | None = None) -> Path:
    """Write an EDF (EDF+C when ``annotations`` is given) with one signal per (data, sfreq)."""
    edf_signals = [
        edfio.EdfSignal(np.asarray(data, dtype=np.float64), sfreq, label=label,
                        physical_dimension="uV", physical_range=physical_range)
        for label, (data, sfreq) in signals.items()
    ]
    anns = None if annotations is None else [edfio.EdfAnnotation(o, d, t) for o, d, t in annotations]
    edf = edfio.Edf(edf_signals, recording=edfio.Recording(startdate=start.date()),
                    starttime=start.time(), annotations=anns, data_record_duration=record_s)
    edf.write(path)
    return path


def write_hypnogram(path: Path, stages: list[tuple[float, float, str]], *,
                    start: dt.datetime = START) -> Path:
    """Write an annotation-only EDF+ file like Sleep-EDF's ``*-Hypnogram.edf``."""
    edf = edfio.Edf([], recording=edfio.Recording(startdate=start.date()), starttime=start.time(),
                    annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in stages])
    edf.write(path)
    return path


def shhs_like(path: Path, seconds: float = 600.0, **overrides) -> Path:
    """SHHS-style mixed rates: EEG 125 Hz, EOG(L)/EOG(R) 50 Hz, EMG 125 Hz, SaO2 1 Hz."""
    signals = {
        "EEG": (sine(10, 125, seconds, seed=1), 125.0),
        "EEG(sec)": (sine(9, 125, seconds, seed=2), 125.0),
        "EOG(L)": (sine(0.5, 50, seconds, seed=3), 50.0),
        "EOG(R)": (sine(0.5, 50, seconds, amplitude=20, phase=1.0, seed=4), 50.0),
        "EMG": (sine(30, 125, seconds, amplitude=10, seed=5), 125.0),
        "SaO2": (np.full(int(seconds), 95.0) + np.random.default_rng(6).normal(0, 0.5, int(seconds)), 1.0),
    }
    signals.update(overrides)
    return write_edf(path, {k: v for k, v in signals.items() if v is not None})


def patch_header(path: Path, offset: int, width: int, value: str) -> Path:
    """Overwrite one fixed-width ASCII header field in place (for deliberately broken headers)."""
    raw = bytearray(path.read_bytes())
    raw[offset:offset + width] = value.ljust(width).encode("ascii")
    path.write_bytes(bytes(raw))
    return path


def patch_signal_header(path: Path, field_offset: int, index: int, value: str) -> Path:
    """Overwrite an 8-byte per-signal header field, e.g. ``field_offset=104`` physical minimum.

    Offsets per signal block (times the signal count): 104 physical min, 112 physical max,
    120 digital min, 128 digital max.
    """
    n_signals = int(path.read_bytes()[252:256].decode("ascii"))
    return patch_header(path, 256 + n_signals * field_offset + 8 * index, 8, value)


def make_discontinuous(path: Path, record_starts: list[float]) -> Path:
    """Turn an EDF+C file into EDF+D whose data records start at ``record_starts`` (seconds).

    Rewrites each record's time-keeping annotation (``+onset`` 0x14 0x14 0x00) and the header's
    ``EDF+C`` mark; the annotation signal must be the last signal (as edfio writes it).
    """
    raw = bytearray(path.read_bytes())
    n_signals = int(raw[252:256].decode("ascii"))
    header = 256 * (n_signals + 1)
    spr_at = 256 + n_signals * 216
    spr = [int(raw[spr_at + 8 * i:spr_at + 8 * i + 8].decode("ascii")) for i in range(n_signals)]
    record_bytes = 2 * sum(spr)
    n_records = (len(raw) - header) // record_bytes
    assert len(record_starts) == n_records, (len(record_starts), n_records)
    ann_offset, ann_width = 2 * sum(spr[:-1]), 2 * spr[-1]
    for r, onset in enumerate(record_starts):
        at = header + r * record_bytes + ann_offset
        tal = raw[at:at + ann_width]
        rest = tal[tal.index(b"\x14\x14\x00") + 3:]  # the record's other annotations
        new = f"+{onset:g}".encode("ascii") + b"\x14\x14\x00" + rest
        raw[at:at + ann_width] = new[:ann_width].ljust(ann_width, b"\x00")
    raw[192:197] = b"EDF+D"
    path.write_bytes(bytes(raw))
    return path
