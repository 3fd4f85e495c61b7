"""Readers for PSG signals (EDF, EDF+, BDF); hypnograms are read by :mod:`somnray.data.hypnograms`.

Signals are read with ``edfio``, which keeps every signal at its native sampling rate (MNE's
``read_raw_edf`` resamples all channels to the highest rate, which would turn Sleep-EDF's 1-Hz EMG
envelope into a fake 100-Hz signal and hide what the file really holds).  Before ``edfio`` sees a
file, its fixed header is checked here so that a truncated download or a file that is not EDF at
all fails with a message naming the problem (``edfio`` itself silently drops incomplete records).

Nothing identifying leaves this module: the patient and recording header fields are never copied
onto :class:`PSG`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, NamedTuple, Union

import numpy as np

from somnray.core.errors import RecordingError

__all__ = [
    "Annotation",
    "ChannelData",
    "PSG",
    "read_psg",
]


PathOrData = Union[str, os.PathLike, bytes, bytearray, BinaryIO]

_EDF_VERSION = b"0       "
_BDF_VERSION = b"\xffBIOSEMI"


class Annotation(NamedTuple):
    """One EDF+ annotation: onset and duration in seconds from the recording start, and its text.

    ``duration_s`` is NaN when the annotation has no duration.
    """

    onset_s: float
    duration_s: float
    text: str


@dataclass
class ChannelData:
    """One signal at its native rate, in physical units.

    Parameters
    ----------
    data : ndarray
        float64 samples in the channel's physical unit.
    sfreq : float
        Native sampling rate in Hz.
    physical_range : (float, float), optional
        The EDF physical minimum and maximum: the amplifier's rails, used to detect clipping.
    resolution : float, optional
        Physical value of one digital step (quantisation), used to detect flat lines
        independently of the unit.
    unit : str
        Physical dimension from the header (``uV``, ``mV``...), empty when unknown.
    """

    data: np.ndarray
    sfreq: float
    physical_range: tuple[float, float] | None = None
    resolution: float | None = None
    unit: str = ""


@dataclass
class PSG:
    """The signals of one recording, without any identifying header field.

    Parameters
    ----------
    signals : dict of str to ChannelData
        EDF signal label → samples at the native rate (annotation signals excluded).
    start : datetime, optional
        Recording start (for aligning a hypnogram); None when the header's date is unusable.
    duration_s : float
        Number of data records × record duration.
    annotations : list of Annotation
        EDF+/BDF+ annotations embedded in the file (empty for plain EDF).
    warnings : list of str
        Non-fatal oddities found while reading.
    """

    signals: dict[str, ChannelData]
    start: datetime | None
    duration_s: float
    annotations: list[Annotation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Signal labels in file order."""
        return list(self.signals)


# --------------------------------------------------------------------------------------------
# Raw bytes


def _read_bytes(path: PathOrData, source: str) -> bytes:
    """Whole file content; paths may be local or any fsspec URI (``s3://...``)."""
    if isinstance(path, (bytes, bytearray)):
        return bytes(path)
    if hasattr(path, "read"):
        return path.read()  # type: ignore[union-attr]
    text = os.fspath(path)
    try:
        if "://" in text and not text.startswith("file://"):
            import fsspec  # imported lazily: local reads need no fsspec

            with fsspec.open(text, "rb") as fh:
                return fh.read()
        with open(text.removeprefix("file://"), "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise RecordingError(source, "file not found") from None
    except IsADirectoryError:
        raise RecordingError(source, "is a directory, not a file") from None
    except OSError as exc:
        raise RecordingError(source, f"cannot read the file ({exc.__class__.__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------
# EDF/BDF header checks


@dataclass(frozen=True)
class _HeaderLayout:
    is_bdf: bool
    header_bytes: int
    n_records: int
    record_s: float
    n_signals: int
    labels: tuple[str, ...]
    samples_per_record: tuple[int, ...]

    @property
    def record_bytes(self) -> int:
        return sum(self.samples_per_record) * (3 if self.is_bdf else 2)


def _header_field(raw: bytes, start: int, length: int) -> str:
    return raw[start:start + length].decode("latin-1").strip()


def _header_number(raw: bytes, start: int, length: int, name: str, source: str, kind=int):
    text = _header_field(raw, start, length)
    try:
        return kind(text)
    except ValueError:
        raise RecordingError(
            source, f"corrupt EDF header: field '{name}' is {text!r}, not a number") from None


def _check_header(raw: bytes, source: str) -> _HeaderLayout:
    """Validate the fixed EDF/BDF header against the file size.

    Raises RecordingError for anything that is not EDF/BDF, a header that does not parse, or
    data shorter than the header declares.
    """
    if raw[:8] == _BDF_VERSION:
        is_bdf = True
    elif raw[:8] == _EDF_VERSION:
        is_bdf = False
    else:
        raise RecordingError(
            source, f"not an EDF/BDF file (header does not start with '0       '; "
            f"found {raw[:8]!r})")
    if len(raw) < 256:
        raise RecordingError(
            source, f"file is truncated: {len(raw)} bytes, shorter than the 256-byte EDF header")
    header_bytes = _header_number(raw, 184, 8, "number of bytes in header", source)
    n_records = _header_number(raw, 236, 8, "number of data records", source)
    record_s = _header_number(raw, 244, 8, "duration of a data record", source, float)
    n_signals = _header_number(raw, 252, 4, "number of signals", source)
    if n_signals < 0 or header_bytes != 256 * (n_signals + 1):
        raise RecordingError(
            source, f"corrupt EDF header: {n_signals} signals need a {256 * (n_signals + 1)}-byte "
            f"header but the header declares {header_bytes} bytes")
    if len(raw) < header_bytes:
        raise RecordingError(
            source, f"file is truncated: the header declares {header_bytes} header bytes but the "
            f"file has only {len(raw)} bytes")
    labels = tuple(_header_field(raw, 256 + 16 * i, 16) for i in range(n_signals))
    # edfio converts these lazily, on first data access; check them here for a clear message.
    for name, width, kind in (("physical minimum", 104, float), ("physical maximum", 112, float),
                              ("digital minimum", 120, int), ("digital maximum", 128, int)):
        for i, label in enumerate(labels):
            _header_number(raw, 256 + n_signals * width + 8 * i, 8,
                           f"{name} of signal {i + 1} ({label!r})", source, kind)
    spr_offset = 256 + n_signals * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
    samples = tuple(
        _header_number(raw, spr_offset + 8 * i, 8, f"number of samples of signal {i + 1}", source)
        for i in range(n_signals))
    layout = _HeaderLayout(is_bdf, header_bytes, n_records, record_s, n_signals, labels, samples)
    available = len(raw) - header_bytes
    if layout.record_bytes <= 0:
        raise RecordingError(source, "corrupt EDF header: data records hold no samples")
    if n_records == -1:
        # EDF allows -1 while recording; the record count is whatever the file holds.
        n_records = available // layout.record_bytes
        layout = _HeaderLayout(is_bdf, header_bytes, n_records, record_s, n_signals, labels, samples)
    elif n_records < 0:
        raise RecordingError(source, f"corrupt EDF header: {n_records} data records")
    expected = n_records * layout.record_bytes
    if available < expected:
        raise RecordingError(
            source, f"file is truncated: header declares {n_records} data records of "
            f"{layout.record_bytes} bytes but only {available} bytes follow")
    return layout


def _parse_legacy_start(raw: bytes) -> datetime | None:
    """Start from the fixed ``dd.mm.yy`` / ``hh.mm.ss`` fields (EDF's 1985-2084 year window)."""
    try:
        day, month, year = (int(p) for p in _header_field(raw, 168, 8).split("."))
        hour, minute, second = (int(p) for p in _header_field(raw, 176, 8).split("."))
        year += 1900 if year >= 85 else 2000
        return datetime(year, month, day, hour, minute, second)
    except (ValueError, TypeError):
        return None


def _start_datetime(rec, raw: bytes) -> datetime | None:
    # edfio prefers the EDF+ recording field and refuses anonymised dates ("Startdate X"); the
    # legacy fields are always present, so fall back to them.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rec.startdatetime
    except Exception:  # noqa: BLE001 - any header quirk: use the legacy fields
        return _parse_legacy_start(raw)


def _annotations(rec, source: str) -> list[Annotation]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = rec.annotations
    except Exception as exc:  # noqa: BLE001 - edfio raises assorted errors on bad TALs
        raise RecordingError(
            source, f"cannot decode the EDF+ annotations ({exc.__class__.__name__}: {exc})") from exc
    return [Annotation(float(a.onset), math.nan if a.duration is None else float(a.duration),
                       a.text.strip()) for a in found]


def _open_edf(raw: bytes, source: str):
    """Parse with edfio after the header check; returns (edfio object, layout)."""
    import edfio

    layout = _check_header(raw, source)
    # Cut off trailing bytes past the declared records: edfio would otherwise take them as data.
    raw = raw[: layout.header_bytes + layout.n_records * layout.record_bytes]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = edfio.read_bdf if layout.is_bdf else edfio.read_edf
            kwargs = {} if layout.is_bdf else {"lazy_load_data": False}
            # latin-1 never fails to decode; the header's free-text fields are never used anyway.
            rec = reader(raw, header_encoding="latin-1", **kwargs)
    except Exception as exc:  # noqa: BLE001 - edfio's errors are ValueErrors of many kinds
        raise RecordingError(
            source, f"corrupt EDF header: {exc.__class__.__name__}: {_redact(str(exc), raw)}") from None
    return rec, layout


def _redact(text: str, raw: bytes) -> str:
    """Remove the identifying header fields (patient, recording, start date) from a message."""
    for start, length in ((8, 80), (88, 80), (168, 8)):
        value = _header_field(raw, start, length)
        if len(value) >= 2:
            text = text.replace(value, "<redacted>")
            for part in value.split():
                if len(part) >= 3 and part not in ("Startdate", "X"):
                    text = text.replace(part, "<redacted>")
    return text


def read_psg(path: PathOrData, source: str | None = None) -> PSG:
    """Read every signal of an EDF, EDF+ or BDF file at its native rate.

    Parameters
    ----------
    path : str, path-like, bytes or binary file
        Local path, fsspec URI, or the file's content.
    source : str, optional
        Name used in error messages (the user's URI); defaults to ``path``.

    Returns
    -------
    PSG
        Signals in physical units keyed by label, start time, duration and embedded annotations.

    Raises
    ------
    RecordingError
        Not an EDF/BDF file, a corrupt or truncated file, an EDF+D (discontinuous) recording, or no
        data records.
    """
    source = source if source is not None else _default_source(path)
    raw = _read_bytes(path, source)
    rec, layout = _open_edf(raw, source)
    if layout.n_records == 0:
        raise RecordingError(source, "the file holds no data records (empty recording)")
    if layout.record_s == 0:
        raise RecordingError(
            source, "data records last 0 s: this is an annotation-only EDF+ file (a hypnogram?), "
            "not a PSG with signals")
    if layout.record_s < 0:
        raise RecordingError(
            source, f"corrupt EDF header: data record duration {layout.record_s:g} s")
    warns: list[str] = []
    has_annotation_signal = any(lbl in ("EDF Annotations", "BDF Annotations") for lbl in layout.labels)
    if has_annotation_signal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            continuous = rec.is_continuous
        if not continuous:
            raise RecordingError(
                source, "EDF+D (discontinuous) recordings are not supported: the data records "
                "have gaps between them; export the recording as continuous EDF+C (gaps filled)")
    signals: dict[str, ChannelData] = {}
    for sig in rec.signals:
        label = sig.label.strip()
        if label in signals:
            warns.append(f"signal label {label!r} appears more than once; the first one is used")
            continue
        pmin, pmax = float(sig.physical_min), float(sig.physical_max)
        dmin, dmax = int(sig.digital_min), int(sig.digital_max)
        resolution = abs(pmax - pmin) / (dmax - dmin) if dmax != dmin else None
        signals[label] = ChannelData(
            # edfio hands out read-only views; callers own their arrays.
            data=np.array(sig.data, dtype=np.float64),
            sfreq=float(sig.sampling_frequency),
            physical_range=(min(pmin, pmax), max(pmin, pmax)),
            resolution=resolution,
            unit=sig.physical_dimension.strip(),
        )
    annotations = _annotations(rec, source) if has_annotation_signal else []
    return PSG(
        signals=signals,
        start=_start_datetime(rec, raw),
        duration_s=float(layout.n_records * layout.record_s),
        annotations=annotations,
        warnings=warns,
    )


def _default_source(path: PathOrData) -> str:
    if isinstance(path, (bytes, bytearray)):
        return "<bytes>"
    if hasattr(path, "read"):
        return str(getattr(path, "name", "<stream>"))
    return os.fspath(path)
