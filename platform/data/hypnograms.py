"""Readers for hypnograms: EDF+ annotations, NSRR XML, CSV/TSV tables, and their 30-s epoch grid.

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

from .profiles import AnnotationSpec
from .readers import Annotation, PathOrData, _annotations, _default_source, _open_edf, _read_bytes, _start_datetime

__all__ = [
    "Hypnogram",
    "hypnogram_from_annotations",
    "hypnogram_to_epochs",
    "read_hypnogram",
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
            onsets.append(float((line_no - first_line) * EPOCH_SECONDS))
            durations.append(float(EPOCH_SECONDS))
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
    return _read_table(raw, spec, source)


def _grid_index(seconds: float) -> float:
    return seconds / EPOCH_SECONDS


def hypnogram_to_epochs(hyp: Hypnogram, n_epochs: int, label_map: dict[str, int], source: str,
                        *, min_coverage: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """Expand stage runs into one class per 30-s epoch of the signal.

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

    Returns
    -------
    labels : ndarray
        ``(n_epochs,)`` int8; epochs no run covers are -1.
    warnings : list of str
        Runs truncated at the signal end, uncovered epochs.

    Raises
    ------
    RecordingError
        Unknown label strings, onsets or durations off the 30-s grid, overlapping runs that
        disagree, or coverage below ``min_coverage``.
    """
    lookup = {k.strip(): int(v) for k, v in label_map.items()}
    unknown = sorted({lbl for lbl in hyp.labels if lbl not in lookup})
    if unknown:
        raise RecordingError(
            source, f"unknown stage label(s) {unknown}; the profile's label_map knows "
            f"{sorted(lookup)}. Add them to annotations.label_map (or to annotations.ignore if "
            "they are not stages)")
    labels = np.full(n_epochs, -1, dtype=np.int8)
    covered = np.zeros(n_epochs, dtype=bool)
    warns: list[str] = []
    past_end = 0
    last = len(hyp) - 1
    for i, (onset, duration, text) in enumerate(zip(hyp.onsets_s, hyp.durations_s, hyp.labels)):
        start = _grid_index(float(onset))
        if abs(start - round(start)) > 1e-3:
            raise RecordingError(
                source, f"stage annotation {text!r} starts at {float(onset):g} s, which is not on "
                f"the {EPOCH_SECONDS:g}-s epoch grid of the recording")
        start_i = int(round(start))
        if math.isnan(duration):  # an instant stage marker labels the one epoch it starts
            count = 1
        else:
            count_f = float(duration) / EPOCH_SECONDS
            if abs(count_f - round(count_f)) > 1e-3:
                if i != last:
                    raise RecordingError(
                        source, f"stage annotation {text!r} at {float(onset):g} s lasts "
                        f"{float(duration):g} s, which is not a multiple of {EPOCH_SECONDS:g} s")
                count_f = math.floor(count_f)  # a final run cut by the end of the recording
            count = int(round(count_f))
        stop_i = start_i + count
        if stop_i > n_epochs:
            past_end += stop_i - max(start_i, n_epochs)
        lo, hi = max(start_i, 0), min(stop_i, n_epochs)
        if hi <= lo:
            continue
        value = lookup[text]
        clash = covered[lo:hi] & (labels[lo:hi] != value)
        if clash.any():
            at = lo + int(np.argmax(clash))
            raise RecordingError(
                source, f"overlapping stage annotations disagree at epoch {at} ({at * EPOCH_SECONDS:g} s): "
                f"{text!r} overlaps an earlier annotation with another stage")
        labels[lo:hi] = value
        covered[lo:hi] = True
    if past_end:
        warns.append(
            f"the hypnogram runs {past_end} epochs ({past_end * EPOCH_SECONDS:g} s) past the end of the "
            f"signal ({n_epochs} epochs); the labels beyond the signal were dropped")
    n_covered = int(covered.sum())
    if n_epochs and n_covered < min_coverage * n_epochs:
        raise RecordingError(
            source, f"the hypnogram covers only {n_covered} of the signal's {n_epochs} epochs "
            f"({n_covered / n_epochs:.0%}, below annotations.min_coverage {min_coverage:.0%}); "
            "is it the scoring of another recording?")
    if n_covered < n_epochs:
        warns.append(f"{n_epochs - n_covered} of {n_epochs} epochs are not covered by the "
                     "hypnogram and are unscored (-1)")
    return labels, warns

