"""Readers for PSG signals (EDF, EDF+, BDF); hypnograms are read by :mod:`somnray.data.hypnograms`.

Signals are read with ``edfio``, which keeps every signal at its native sampling rate (MNE's
``read_raw_edf`` resamples all channels to the highest rate, which would turn Sleep-EDF's 1-Hz EMG
envelope into a fake 100-Hz signal and hide what the file really holds).  Before ``edfio`` sees a
file, its fixed header is checked here so that a file that is not EDF at all fails with a message
naming the problem, and the number of data records is taken from what the file really holds
(``edfio`` trusts the header's count and silently drops or invents records):

- a file shorter than its header declares (a download cut short) keeps its complete records, with
  a warning and ``PSG.truncated`` set, unless the caller asks for a rejection;
- a file holding more complete records than its header declares is read to its last complete
  record, with a warning;
- an EDF+D (discontinuous) file is laid out on its own time axis: the gaps between its data
  records become NaN samples, which preparation marks as unavailable epochs;
- a signal whose header gives no usable scale (a zero or inverted physical range, digital limits
  outside the format or not increasing) is kept with :attr:`ChannelData.unusable` saying why, so
  the recording stays usable when the profile does not need that signal.

Nothing identifying leaves this module: the patient and recording header fields are never copied
onto :class:`PSG`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Literal, NamedTuple, Union

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
_ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")


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
    unusable : str, optional
        Why the header makes the samples meaningless (a zero or inverted physical range,
        non-compliant digital limits); ``data`` is then all NaN.  None for a usable signal.
    """

    data: np.ndarray
    sfreq: float
    physical_range: tuple[float, float] | None = None
    resolution: float | None = None
    unit: str = ""
    unusable: str | None = None


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
    truncated : bool
        The file ended inside its data: only its complete records were read.
    """

    signals: dict[str, ChannelData]
    start: datetime | None
    duration_s: float
    annotations: list[Annotation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False

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
    n_records: int  # the records read: what the file holds, not what the header declares
    record_s: float
    n_signals: int
    labels: tuple[str, ...]
    samples_per_record: tuple[int, ...]
    truncated: bool = False
    notes: tuple[str, ...] = ()

    @property
    def record_bytes(self) -> int:
        return sum(self.samples_per_record) * self.sample_bytes

    @property
    def sample_bytes(self) -> int:
        return 3 if self.is_bdf else 2


def _header_field(raw: bytes, start: int, length: int) -> str:
    return raw[start:start + length].decode("latin-1").strip()


def _header_number(raw: bytes, start: int, length: int, name: str, source: str, kind=int):
    text = _header_field(raw, start, length)
    try:
        return kind(text)
    except ValueError:
        raise RecordingError(
            source, f"corrupt EDF header: field '{name}' is {text!r}, not a number") from None


def _check_header(raw: bytes, source: str, truncated: str = "reject") -> _HeaderLayout:
    """Validate the fixed EDF/BDF header and count the data records the file really holds.

    The rule for a record count that disagrees with the file size: every complete data record
    in the file is read, and bytes after the last one are ignored.  A file shorter than the
    header declares is truncated (``truncated="reject"`` makes it an error); one longer is read
    to its end.  Either way a note says both counts.

    Raises RecordingError for anything that is not EDF/BDF, a header that does not parse, a
    file without one complete data record, or a truncated file with ``truncated="reject"``.
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
    declared = _header_number(raw, 236, 8, "number of data records", source)
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
    layout = _HeaderLayout(is_bdf, header_bytes, declared, record_s, n_signals, labels, samples)
    if layout.record_bytes <= 0:
        raise RecordingError(source, "corrupt EDF header: data records hold no samples")
    if declared < -1:
        raise RecordingError(source, f"corrupt EDF header: {declared} data records")
    available = len(raw) - header_bytes
    complete = available // layout.record_bytes
    notes: list[str] = []
    is_truncated = False
    # EDF allows -1 while recording: the record count is whatever the file holds.
    if declared != -1 and complete < declared:
        problem = (f"file is truncated: header declares {declared} data records of "
                   f"{layout.record_bytes} bytes but only {available} bytes follow")
        if complete == 0:
            raise RecordingError(source, f"{problem}, not one complete data record")
        if truncated == "reject":
            raise RecordingError(source, problem)
        is_truncated = True
        notes.append(f"{problem}; the {complete} complete records ({complete * record_s:g} s of "
                     f"{declared * record_s:g} s) are read")
    elif declared != -1 and complete > declared:
        notes.append(f"the header declares {declared} data records but the file holds {complete} "
                     f"complete records of {layout.record_bytes} bytes; all {complete} are read "
                     f"({complete * record_s:g} s instead of {declared * record_s:g} s)")
    return _HeaderLayout(is_bdf, header_bytes, complete, record_s, n_signals, labels, samples,
                         is_truncated, tuple(notes))


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


def _open_edf(raw: bytes, source: str, truncated: str = "reject"):
    """Parse with edfio after the header check; returns (edfio object, layout).

    ``truncated`` is :func:`_check_header`'s policy for a file cut inside its data.
    """
    import edfio

    layout = _check_header(raw, source, truncated)
    # edfio reads as many records as the header declares: give it the count of complete records
    # the file holds and cut off the bytes after the last one.
    count = str(layout.n_records).ljust(8).encode("ascii")
    raw = (raw[:236] + count + raw[244:layout.header_bytes]
           + raw[layout.header_bytes:layout.header_bytes + layout.n_records * layout.record_bytes])
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


def _record_onsets(raw: bytes, layout: _HeaderLayout, source: str) -> np.ndarray:
    """Start of every data record in seconds, from the EDF+ timekeeping annotation.

    The first annotation of each record's first annotation signal is ``+onset`` followed by
    two 0x14 bytes (EDF+ specification, "Time keeping of data records").
    """
    index = next(i for i, lbl in enumerate(layout.labels) if lbl in _ANNOTATION_LABELS)
    offset = sum(layout.samples_per_record[:index]) * layout.sample_bytes
    width = layout.samples_per_record[index] * layout.sample_bytes
    onsets = np.empty(layout.n_records)
    for r in range(layout.n_records):
        at = layout.header_bytes + r * layout.record_bytes + offset
        tal = raw[at:at + width]
        try:
            onsets[r] = float(tal[:tal.index(b"\x14")].decode("ascii"))
        except ValueError:
            raise RecordingError(
                source, f"EDF+D data record {r + 1} has no time-keeping annotation, so its place "
                "in time is unknown") from None
    return onsets


def _lay_out(x: np.ndarray, per_record: int, starts: np.ndarray, length: int) -> np.ndarray:
    """Place each record's samples at its start sample of a NaN-filled time axis."""
    out = np.full(length, np.nan)
    for r, at in enumerate(starts):
        out[at:at + per_record] = x[r * per_record:(r + 1) * per_record]
    return out


def _discontinuous_axis(onsets: np.ndarray, record_s: float, source: str
                        ) -> tuple[np.ndarray, float, str]:
    """Record starts in seconds on the recording's axis, its duration, and a note on the gaps."""
    # Sub-second start offsets are part of the start time edfio reports (annotations are relative
    # to it), so record times are taken relative to the same instant.
    starts = onsets - (onsets[0] % 1)
    ends = starts + record_s
    for r in range(1, len(starts)):
        if starts[r] < ends[r - 1] - 1e-6:
            raise RecordingError(
                source, f"EDF+D data records overlap or go back in time: record {r + 1} starts at "
                f"{starts[r]:g} s, before record {r} ends at {ends[r - 1]:g} s")
    gaps = starts[1:] - ends[:-1]
    n_gaps = int((gaps > 1e-6).sum()) + int(starts[0] > 1e-6)
    lost = float(gaps.sum() + starts[0])
    note = (f"EDF+D (discontinuous) recording: {n_gaps} gap(s) between data records, {lost:g} s "
            "in all, hold no data; their epochs are marked unavailable")
    return starts, float(ends[-1]), note


def _signal_problem(pmin: float, pmax: float, dmin: int, dmax: int, unit: str,
                    is_bdf: bool) -> str | None:
    """Why a signal's header gives its samples no physical meaning, or None."""
    low, high = (-(2 ** 23), 2 ** 23 - 1) if is_bdf else (-(2 ** 15), 2 ** 15 - 1)
    if dmin >= dmax:
        return (f"digital minimum {dmin} is not below digital maximum {dmax}, so its samples "
                "cannot be scaled to physical values")
    if dmin < low or dmax > high:
        kind = "24-bit BDF" if is_bdf else "16-bit EDF"
        return (f"digital limits [{dmin}, {dmax}] lie outside the {kind} range [{low}, {high}], "
                "so its samples cannot be scaled to physical values")
    if pmin == pmax:
        return (f"physical minimum equals physical maximum ({pmin:g} {unit}".rstrip() +
                "): the header gives no scale from digital to physical values")
    if pmin > pmax:
        return (f"physical minimum {pmin:g} is above physical maximum {pmax:g} (an inverted "
                "physical range): the sign of its samples is ambiguous")
    return None


def read_psg(path: PathOrData, source: str | None = None, *,
             truncated: Literal["keep", "reject"] = "keep") -> PSG:
    """Read every signal of an EDF, EDF+ or BDF file at its native rate.

    Parameters
    ----------
    path : str, path-like, bytes or binary file
        Local path, fsspec URI, or the file's content.
    source : str, optional
        Name used in error messages (the user's URI); defaults to ``path``.
    truncated : {"keep", "reject"}
        A file that ends inside its data: ``keep`` reads its complete records (with a warning and
        ``PSG.truncated``), ``reject`` raises.

    Returns
    -------
    PSG
        Signals in physical units keyed by label, start time, duration, embedded annotations and
        the warnings of reading (record counts, gaps).  An EDF+D file's gaps are NaN samples.

    Raises
    ------
    RecordingError
        Not an EDF/BDF file, a corrupt header, a file without one complete data record (or
        truncated, with ``truncated="reject"``), EDF+D records that overlap, or no data records.
    """
    source = source if source is not None else _default_source(path)
    raw = _read_bytes(path, source)
    rec, layout = _open_edf(raw, source, truncated)
    if layout.n_records == 0:
        raise RecordingError(source, "the file holds no data records (empty recording)")
    if layout.record_s == 0:
        raise RecordingError(
            source, "data records last 0 s: this is an annotation-only EDF+ file (a hypnogram?), "
            "not a PSG with signals")
    if layout.record_s < 0:
        raise RecordingError(
            source, f"corrupt EDF header: data record duration {layout.record_s:g} s")
    warns: list[str] = list(layout.notes)
    duration_s = float(layout.n_records * layout.record_s)
    record_starts = None
    has_annotation_signal = any(lbl in _ANNOTATION_LABELS for lbl in layout.labels)
    if has_annotation_signal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            continuous = rec.is_continuous
        if not continuous:
            record_starts, duration_s, note = _discontinuous_axis(
                _record_onsets(raw, layout, source), layout.record_s, source)
            warns.append(note)
    signals: dict[str, ChannelData] = {}
    for sig in rec.signals:
        label = sig.label.strip()
        if label in signals:
            warns.append(f"signal label {label!r} appears more than once; the first one is used")
            continue
        pmin, pmax = float(sig.physical_min), float(sig.physical_max)
        dmin, dmax = int(sig.digital_min), int(sig.digital_max)
        unit = sig.physical_dimension.strip()
        sfreq = float(sig.sampling_frequency)
        per_record = int(sig.samples_per_data_record)
        problem = _signal_problem(pmin, pmax, dmin, dmax, unit, layout.is_bdf)
        if problem is not None:
            data = np.full(layout.n_records * per_record, np.nan)
        else:
            # edfio hands out read-only views; callers own their arrays.
            data = np.array(sig.data, dtype=np.float64)
        if record_starts is not None:
            data = _lay_out(data, per_record, np.round(record_starts * sfreq).astype(np.int64),
                            int(round(duration_s * sfreq)))
        signals[label] = ChannelData(
            data=data,
            sfreq=sfreq,
            physical_range=(min(pmin, pmax), max(pmin, pmax)),
            resolution=abs(pmax - pmin) / (dmax - dmin) if dmax != dmin else None,
            unit=unit,
            unusable=problem,
        )
    annotations = _annotations(rec, source) if has_annotation_signal else []
    return PSG(
        signals=signals,
        start=_start_datetime(rec, raw),
        duration_s=duration_s,
        annotations=annotations,
        warnings=warns,
        truncated=layout.truncated,
    )


def _default_source(path: PathOrData) -> str:
    if isinstance(path, (bytes, bytearray)):
        return "<bytes>"
    if hasattr(path, "read"):
        return str(getattr(path, "name", "<stream>"))
    return os.fspath(path)
