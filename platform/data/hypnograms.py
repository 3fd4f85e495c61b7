"""Readers for hypnograms: EDF+ annotations, NSRR XML, CSV/TSV tables, stage-code signals, and
their mapping onto the 30-s epoch grid.

Signals are read by :mod:`somnray.data.readers`; this module turns a scoring file (or the
annotations embedded in a PSG) into :class:`Hypnogram` runs and maps them onto the recording's
30-s epochs.  Label strings stay the source's until :func:`hypnogram_to_epochs` applies the
profile's ``label_map``.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from somnray.core.constants import EPOCH_SECONDS
from somnray.core.errors import RecordingError

from .profiles import AnnotationSpec, normalize_label
from .readers import (
    PSG,
    Annotation,
    ChannelData,
    PathOrData,
    _annotations,
    _default_source,
    _open_edf,
    _read_bytes,
    _start_datetime,
    read_psg,
)

__all__ = [
    "Hypnogram",
    "hypnogram_from_annotations",
    "hypnogram_from_signal",
    "hypnogram_to_epochs",
    "read_hypnogram",
    "stage_code_runs",
]


@dataclass
class Hypnogram:
    """Stage annotations as found in the file (labels still the source's strings).

    Parameters
    ----------
    onsets_s, durations_s : ndarray
        float64 seconds from the recording start; a NaN duration means "one epoch".
    labels : list of str
        Source label strings (``Sleep stage W``, ``Wake|0``, ``N2`` ...), whitespace-stripped.
    start : datetime, optional
        Start time the hypnogram file declares (EDF+), None when the format has none.
    """

    onsets_s: np.ndarray
    durations_s: np.ndarray
    labels: list[str]
    start: datetime | None = None

    def __len__(self) -> int:
        return len(self.labels)




def _ignored(text: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


def hypnogram_from_annotations(annotations: list[Annotation], spec: AnnotationSpec,
                               start: datetime | None = None) -> Hypnogram:
    """Stage annotations out of a list of EDF+ annotations (skipping ``spec.ignore`` texts)."""
    kept = [a for a in annotations if a.text and not _ignored(a.text, spec.ignore)]
    return Hypnogram(
        onsets_s=np.array([a.onset_s for a in kept], dtype=np.float64),
        durations_s=np.array([a.duration_s for a in kept], dtype=np.float64),
        labels=[a.text for a in kept],
        start=start,
    )


def _read_edf_hypnogram(raw: bytes, spec: AnnotationSpec, source: str) -> Hypnogram:
    rec, layout = _open_edf(raw, source)
    if not any(lbl in ("EDF Annotations", "BDF Annotations") for lbl in layout.labels):
        raise RecordingError(
            source, "the file has no EDF+ annotation signal ('EDF Annotations'), so it holds no "
            "stage annotations; is it a plain EDF PSG rather than a hypnogram?")
    return hypnogram_from_annotations(_annotations(rec, source), spec, _start_datetime(rec, raw))


def _child_text(element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _read_nsrr_xml(raw: bytes, spec: AnnotationSpec, source: str) -> Hypnogram:
    from defusedxml import ElementTree  # XML from users: no entity expansion or external DTDs
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.fromstring(raw)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise RecordingError(source, f"not a valid NSRR XML annotation file ({exc})") from None
    events = list(root.iter("ScoredEvent"))
    if not events:
        raise RecordingError(
            source, f"no ScoredEvent elements (expected PSGAnnotation/ScoredEvents/ScoredEvent); "
            f"root element is <{root.tag}>")
    onsets, durations, labels = [], [], []
    for i, ev in enumerate(events, start=1):
        if _child_text(ev, "EventType") != spec.event_type:
            continue
        concept, start, duration = (_child_text(ev, t) for t in ("EventConcept", "Start", "Duration"))
        try:
            onsets.append(float(start))  # type: ignore[arg-type]
            durations.append(float(duration))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise RecordingError(
                source, f"ScoredEvent #{i} ({concept!r}) has Start {start!r} and Duration "
                f"{duration!r}; both must be numbers of seconds") from None
        labels.append(concept or "")
    if not labels:
        types = sorted({_child_text(ev, "EventType") or "" for ev in events})
        raise RecordingError(
            source, f"no sleep-stage events: no ScoredEvent has EventType {spec.event_type!r} "
            f"(event types found: {types})")
    return Hypnogram(np.array(onsets), np.array(durations), labels, start=None)


def _read_table(raw: bytes, spec: AnnotationSpec, source: str) -> Hypnogram:
    delimiter = spec.delimiter or ("\t" if spec.format == "tsv" else ",")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    if spec.header:
        if not rows:
            raise RecordingError(source, "the hypnogram table is empty")
        columns = [c.strip() for c in rows[0]]
        wanted = ([spec.stage_column] if spec.table_layout == "epochs"
                  else [spec.onset_column, spec.duration_column, spec.stage_column])
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise RecordingError(
                source, f"hypnogram table lacks column(s) {missing}; columns found: {columns} "
                "(set annotations.onset_column/duration_column/stage_column in the profile)")
        index = [columns.index(c) for c in wanted]
        body, first_line = rows[1:], 2
    else:
        index = [0] if spec.table_layout == "epochs" else [0, 1, 2]
        body, first_line = rows, 1
    if not body:
        raise RecordingError(source, "the hypnogram table has no rows")
    onsets, durations, labels = [], [], []
    for line_no, row in enumerate(body, start=first_line):
        if len(row) <= max(index):
            raise RecordingError(
                source, f"line {line_no}: {len(row)} column(s), expected at least {max(index) + 1}")
        cells = [row[i].strip() for i in index]
        if spec.table_layout == "epochs":
            onsets.append(float((line_no - first_line) * spec.label_period))
            durations.append(float(spec.label_period))
            labels.append(cells[0])
            continue
        try:
            onsets.append(float(cells[0]))
            durations.append(float(cells[1]) if cells[1] else math.nan)
        except ValueError:
            raise RecordingError(
                source, f"line {line_no}: onset {cells[0]!r} and duration {cells[1]!r} must be "
                "numbers of seconds") from None
        labels.append(cells[2])
    return Hypnogram(np.array(onsets, dtype=np.float64), np.array(durations, dtype=np.float64),
                     labels, start=None)


def read_hypnogram(path: PathOrData, spec: AnnotationSpec, source: str | None = None) -> Hypnogram:
    """Read stage annotations in the format ``spec.format`` names.

    Parameters
    ----------
    path : str, path-like, bytes or binary file
        Local path, fsspec URI, or content of the hypnogram (for ``embedded``, the PSG itself).
    spec : AnnotationSpec
        The profile's annotation section.
    source : str, optional
        Name used in error messages; defaults to ``path``.

    Returns
    -------
    Hypnogram
        Runs of source labels; map them with :func:`hypnogram_to_epochs`.

    Raises
    ------
    RecordingError
        Unreadable or malformed file, or no stage events in it.
    """
    source = source if source is not None else _default_source(path)
    raw = _read_bytes(path, source)
    if spec.format in ("edf_annotations", "embedded"):
        return _read_edf_hypnogram(raw, spec, source)
    if spec.format == "nsrr_xml":
        return _read_nsrr_xml(raw, spec, source)
    if spec.format == "edf_signal":
        return hypnogram_from_signal(read_psg(raw, source), spec, source)
    return _read_table(raw, spec, source)


def _code_text(value: float, resolution: float) -> str:
    # Stage codes are stored as physical values of a digitised signal: 2 comes back as the
    # representable value nearest to 2, up to half a quantisation step away.
    nearest = round(value)
    return str(int(nearest)) if abs(value - nearest) <= max(1e-3, resolution / 2) else f"{value:g}"


def hypnogram_from_signal(psg: PSG, spec: AnnotationSpec, source: str) -> Hypnogram:
    """Stage runs out of a signal whose samples are stage codes (format ``edf_signal``).

    Consecutive samples with one code form one run; each code becomes the label text
    (``2.0`` → ``"2"``) that ``label_map`` maps.

    Raises
    ------
    RecordingError
        No signal matches ``spec.signal``.
    """
    wanted = normalize_label(spec.signal or "")
    label = next((lbl for lbl in psg.signals if normalize_label(lbl) == wanted), None)
    if label is None:
        raise RecordingError(
            source, f"no hypnogram signal {spec.signal!r} (annotations.signal); the file has "
            f"signals {psg.labels}")
    return stage_code_runs(psg.signals[label], start=psg.start)


def stage_code_runs(ch: ChannelData, start: datetime | None = None) -> Hypnogram:
    """The runs of one code in a signal of stage codes, each code as the label text that
    ``label_map`` maps (``2.0`` → ``"2"``; :func:`hypnogram_from_signal`, ``somnray inspect``).

    Parameters
    ----------
    ch : ChannelData
        The signal, samples being stage codes at any rate.
    start : datetime, optional
        Start time the runs' file declares.
    """
    values = ch.data
    if values.size == 0:
        return Hypnogram(np.array([]), np.array([]), [], start=start)
    change = np.flatnonzero(np.diff(values) != 0) + 1  # a run is a stretch of one code
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [values.size]])
    return Hypnogram(
        onsets_s=starts / ch.sfreq,
        durations_s=(stops - starts) / ch.sfreq,
        labels=[_code_text(float(values[i]), ch.resolution or 0.0) for i in starts],
        start=start,
    )


#: Marks a stretch of the label grid that no stage annotation covers (class codes are -1..4).
_UNCOVERED = -2
#: Problems of one kind quoted in a reject; the rest are counted, so a hypnogram read with the
#: wrong settings gives one readable line instead of thousands.
_QUOTED = 3


def _on_grid(seconds: float, step: float) -> bool:
    return abs(seconds / step - round(seconds / step)) <= 1e-3


def _quote_first(found: list[str]) -> list[str]:
    if len(found) <= _QUOTED:
        return found
    return found[:_QUOTED] + [f"{len(found) - _QUOTED} more like these"]


def hypnogram_to_epochs(hyp: Hypnogram, n_epochs: int, label_map: dict[str, int], source: str,
                        *, min_coverage: float = 0.0, label_period: int = EPOCH_SECONDS,
                        min_purity: float = 0.5, max_overrun_s: float | None = None
                        ) -> tuple[np.ndarray, list[str]]:
    """Map stage runs onto one class per 30-s epoch of the signal.

    Runs are laid on a grid of ``gcd(label_period, 30)`` seconds; each 30-s epoch then takes the
    stage that covers most of its duration (majority by duration).  An epoch whose two largest
    stages cover it equally long (a tie), or whose majority stage covers less than
    ``min_purity`` of its 30 s, is unscored (-1).  With 30-s scoring every epoch is one run's, as
    a scorer labelled it.

    Parameters
    ----------
    hyp : Hypnogram
        Runs as read from the file.
    n_epochs : int
        Complete 30-s epochs in the signal.
    label_map : dict of str to int
        Source label → class (-1 = unscored); keys are compared whitespace-stripped.
    source : str
        The hypnogram's name for error messages.
    min_coverage : float
        Reject when fewer than this fraction of the signal's epochs are covered by a run.
    label_period : int
        Seconds between two labels of the scoring; onsets and durations must be multiples of it
        (the last run may be cut short by the end of the recording).  A run without a duration
        lasts one period.
    min_purity : float
        Share of an epoch's 30 s its majority stage must cover.
    max_overrun_s : float, optional
        Reject when labels run more than this many seconds past the signal's last complete
        epoch; None drops any overrun with a warning.

    Returns
    -------
    labels : ndarray
        ``(n_epochs,)`` int8; epochs no run covers are -1.
    warnings : list of str
        Runs dropped at the signal end, mixed epochs left unscored, uncovered epochs.

    Raises
    ------
    RecordingError
        Every problem found at once: unknown label strings, onsets or durations off the label
        grid, overlapping runs that disagree, labels running past the signal beyond
        ``max_overrun_s``, coverage below ``min_coverage``.
    """
    lookup = {k.strip(): int(v) for k, v in label_map.items()}
    problems: list[str] = []
    unknown = sorted({lbl for lbl in hyp.labels if lbl not in lookup})
    if unknown:
        problems.append(
            f"unknown stage label(s) {unknown}; the profile's label_map knows "
            f"{sorted(lookup)}. Add them to annotations.label_map (or to annotations.ignore if "
            "they are not stages)")
    period = float(label_period)
    grid_what = (f"the {EPOCH_SECONDS:g}-s epoch grid of the recording" if period == EPOCH_SECONDS
                 else f"the {period:g}-s label grid (annotations.label_period)")
    step = math.gcd(int(label_period), EPOCH_SECONDS)  # seconds of one cell of the grid
    per_epoch = EPOCH_SECONDS // step
    n_cells = n_epochs * per_epoch
    cells = np.full(n_cells, _UNCOVERED, dtype=np.int8)
    off_grid: list[str] = []
    off_length: list[str] = []
    clash_at: int | None = None
    past_end = 0  # cells
    end_s = 0.0
    last = len(hyp) - 1
    for i, (onset, duration, text) in enumerate(zip(hyp.onsets_s, hyp.durations_s, hyp.labels)):
        onset, duration = float(onset), float(duration)
        if not _on_grid(onset, period):
            off_grid.append(f"stage annotation {text!r} starts at {onset:g} s, which is not on {grid_what}")
            continue
        if math.isnan(duration):  # an instant stage marker labels the one period it starts
            duration = period
        elif not _on_grid(duration, period):
            if i != last:
                off_length.append(f"stage annotation {text!r} at {onset:g} s lasts {duration:g} s, "
                                  f"which is not a multiple of {period:g} s")
                continue
            duration = math.floor(duration / period) * period  # a final run cut by the recording end
        end_s = max(end_s, onset + duration)
        start_c = int(round(onset / step))
        stop_c = start_c + int(round(duration / step))
        if stop_c > n_cells:
            past_end += stop_c - max(start_c, n_cells)
        lo, hi = max(start_c, 0), min(stop_c, n_cells)
        if hi <= lo or text not in lookup:
            continue
        value = lookup[text]
        clash = (cells[lo:hi] != _UNCOVERED) & (cells[lo:hi] != value)
        if clash.any():
            if clash_at is None:
                at = lo + int(np.argmax(clash))
                clash_at = at
                problems.append(
                    f"overlapping stage annotations disagree at epoch {at // per_epoch} "
                    f"({at * step:g} s): {text!r} overlaps an earlier annotation with another stage")
            continue
        cells[lo:hi] = value
    problems.extend(_quote_first(off_grid) + _quote_first(off_length))
    warns: list[str] = []
    past_s = past_end * step
    if past_end and max_overrun_s is not None and past_s > max_overrun_s:
        problems.append(
            f"the hypnogram runs {past_s:g} s past the end of the signal: its labels last "
            f"{end_s:g} s, the signal {n_epochs * EPOCH_SECONDS:g} s ({n_epochs} epochs), more than "
            f"annotations.max_overrun_s ({max_overrun_s:g} s) allows. Is annotations.label_period "
            f"({period:g} s) the scoring's, and is this the scoring of this recording? (max_overrun_s: "
            "null keeps the recording and drops the labels past its end)")
    elif past_end:
        how_far = (f"{past_s // EPOCH_SECONDS:g} epochs ({past_s:g} s)" if past_s % EPOCH_SECONDS == 0
                   else f"{past_s:g} s")
        warns.append(
            f"the hypnogram runs {how_far} past the end of the signal ({n_epochs} epochs); the "
            "labels beyond the signal were dropped")

    labels, covered, mixed_out = _majority(cells.reshape(n_epochs, per_epoch), min_purity)
    n_covered = int(covered.sum())
    if not problems and n_epochs and n_covered < min_coverage * n_epochs:
        problems.append(
            f"the hypnogram covers only {n_covered} of the signal's {n_epochs} epochs "
            f"({n_covered / n_epochs:.0%}, below annotations.min_coverage {min_coverage:.0%}); "
            "is it the scoring of another recording?")
    if problems:
        raise RecordingError.of_problems(source, problems)
    if mixed_out:
        warns.append(f"{mixed_out} epoch(s) have no stage covering at least {min_purity:.0%} of their "
                     f"{EPOCH_SECONDS:g} s alone (mixed, tied or partly scored) and are unscored (-1)")
    if n_covered < n_epochs:
        warns.append(f"{n_epochs - n_covered} of {n_epochs} epochs are not covered by the "
                     "hypnogram and are unscored (-1)")
    return labels, warns


def _majority(cells: np.ndarray, min_purity: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Per epoch (row of grid cells): the majority class, whether any cell is covered, and how
    many covered epochs were left unscored by a tie or a majority below ``min_purity``."""
    classes = np.arange(-1, 5, dtype=np.int8)
    seconds = (cells[:, :, None] == classes[None, None, :]).sum(axis=1)  # (n_epochs, 6) cells
    best = seconds.max(axis=1)
    covered = best > 0
    tie = (seconds == best[:, None]).sum(axis=1) > 1
    pure = best >= min_purity * cells.shape[1] - 1e-9
    decided = covered & ~tie & pure
    labels = np.where(decided, classes[np.argmax(seconds, axis=1)], -1).astype(np.int8)
    return labels, covered, int((covered & ~decided).sum())
