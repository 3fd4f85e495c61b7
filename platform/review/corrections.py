"""Import a technician's corrected hypnograms into a scored cohort's review.

A technician corrects in EDFbrowser (or any scoring program) and saves the stages as

* **EDF+ annotations** — as EDFbrowser saves them: onset, duration and a text ``Sleep stage W``,
  ``N1``, ``N2``, ``N3``, ``R`` (also R&K ``Sleep stage 1`` … ``4``, ``4`` being N3); the
  ``Review …`` marks of ``<id>_review.edf`` and any other annotation are ignored;
* **CSV** — either a corrections file (``epoch,stage``, the layout of ``<id>_hypnogram.csv``:
  every row is a reviewed epoch) or an annotation export (``onset,duration,annotation`` or
  ``…,stage``, read like EDF+ annotations).

Annotations are laid on the scored night's 30-s grid as the data readers do
(:func:`somnray.data.hypnograms.hypnogram_to_epochs`): onsets are seconds from the recording
start, rounded to the second; each epoch takes the stage covering most of it (a tie, or less than
half of it covered, leaves it out).  An annotation file usually stages the whole night, the
model's stages included, so only these epochs count as **reviewed** from it: the night's queued
epochs (``review/queue.csv``) and every epoch whose stage differs from the model's (the technician
changed it).  ``all_epochs=True`` counts every staged epoch (a full rescoring).

Each file becomes (is merged into) its night's ``<id>_corrections.csv``
(:func:`somnray.serve.review_files.write_corrections`): imported epochs replace earlier
corrections of the same epochs, others are kept.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np

from somnray.core.constants import EPOCH_SECONDS
from somnray.core.errors import ConfigError, RecordingError, reject_reason
from somnray.core.storage import StorageLocation, resolve
from somnray.data.hypnograms import Hypnogram, hypnogram_to_epochs, read_hypnogram
from somnray.data.profiles import AnnotationSpec
from somnray.serve import review_files as rf
from somnray.serve.outputs import EDF_STAGE_TEXT, OUTPUT_SUFFIXES, read_epochs

#: Stage texts an annotation file may use → class (-1: unscored, not a correction).
STAGE_LABELS: dict[str, int] = {
    **{text: code for code, text in EDF_STAGE_TEXT.items()},
    "Sleep stage 1": 1, "Sleep stage 2": 2, "Sleep stage 3": 3, "Sleep stage 4": 3, "Sleep stage REM": 4,
    "Movement time": -1,
    **{name: code for name, code in (("W", 0), ("Wake", 0), ("N1", 1), ("N2", 2), ("N3", 3), ("R", 4),
                                      ("REM", 4), ("S1", 1), ("S2", 2), ("S3", 3), ("S4", 3), ("?", -1))},
}
#: File-name endings stripped to find the night a file belongs to (``SC4001E0_review.edf`` → ``SC4001E0``).
NAME_SUFFIXES = ("_corrections", "_review", "_annotations", "_hypnogram", "-Hypnogram", "_corrected")


@dataclass(frozen=True)
class ImportedNight:
    """What one imported file did.

    Attributes
    ----------
    recording_id : str
    source : str
        The file's name.
    reviewed : int
        Epochs the file counts as reviewed.
    changed : int
        Of those, epochs whose stage differs from the model's.
    uri : str
        The night's corrections file.
    """

    recording_id: str
    source: str
    reviewed: int
    changed: int
    uri: str


def night_of_file(name: str) -> str:
    """The recording id a file name stands for: its stem without a review/export suffix."""
    stem = os.path.splitext(os.path.basename(name))[0]
    for suffix in NAME_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def annotations_to_epochs(hyp: Hypnogram, n_epochs: int, start_offset_s: float, source: str) -> dict[int, int]:
    """``{epoch: stage}`` of stage annotations on a night's grid (epoch ``i`` starts at
    ``start_offset_s + 30 i``); texts that are not stages, and unscored epochs, are left out.

    Raises
    ------
    RecordingError
        Overlapping stage annotations that disagree.
    """
    keep = [i for i, text in enumerate(hyp.labels) if text.strip() in STAGE_LABELS]
    if not keep:
        return {}
    onsets = np.round(hyp.onsets_s[keep] - start_offset_s)
    durations = np.where(np.isnan(hyp.durations_s[keep]), EPOCH_SECONDS, np.round(hyp.durations_s[keep]))
    # The coarsest grid every onset and duration sits on (a whole number of seconds dividing 30):
    # each 30-s epoch then takes the stage covering most of it.
    period = reduce(math.gcd, [int(abs(v)) for v in np.concatenate([onsets, durations])], EPOCH_SECONDS) or 1
    inside = onsets + durations > 0
    start = np.maximum(onsets, 0)  # an annotation starting before epoch 0 counts from it
    grid = Hypnogram(start[inside], (onsets + durations - start)[inside],
                     [hyp.labels[k].strip() for k, ok in zip(keep, inside) if ok])
    labels, _ = hypnogram_to_epochs(grid, n_epochs, STAGE_LABELS, source, label_period=period,
                                    max_overrun_s=None)
    return {int(i): int(code) for i, code in enumerate(labels) if code >= 0}


def read_correction_file(data: bytes, name: str, n_epochs: int, start_offset_s: float
                         ) -> tuple[dict[int, int], bool]:
    """``{epoch: stage}`` of a corrected hypnogram, and whether every epoch it lists is reviewed.

    EDF/BDF files are read as EDF+ annotations; a CSV with an ``epoch`` column as a corrections
    file (every row reviewed); any other CSV/TSV as an annotation table (``onset``, ``duration``
    and ``stage`` or ``annotation``/``description``).

    Raises
    ------
    RecordingError
        Unreadable or malformed, naming the file.
    """
    lower = name.lower()
    if lower.endswith((".edf", ".bdf", ".rec")):
        spec = AnnotationSpec(format="edf_annotations", label_map=STAGE_LABELS)
        return annotations_to_epochs(read_hypnogram(data, spec, source=name), n_epochs, start_offset_s, name), False
    text = data.decode("utf-8-sig", errors="replace")
    delimiter = "\t" if lower.endswith((".tsv", ".txt")) and "\t" in text else ","
    header = [c.strip().lower() for c in next(csv.reader(io.StringIO(text), delimiter=delimiter), [])]
    if "epoch" in header:
        try:
            return rf.parse_corrections_csv(text, source=name), True
        except ValueError as exc:
            raise RecordingError(name, str(exc).removeprefix(f"{name}: ")) from None
    stage_col = next((c for c in ("stage", "annotation", "description") if c in header), None)
    if stage_col is None or "onset" not in header:
        raise RecordingError(name, f"expected a corrections CSV (epoch,stage) or annotations (onset,duration,"
                                   f"annotation); columns found: {header}")
    original = next(csv.reader(io.StringIO(text), delimiter=delimiter))
    names = {c.strip().lower(): c.strip() for c in original}
    spec = AnnotationSpec(format="csv", label_map=STAGE_LABELS, delimiter=delimiter,
                          onset_column=names["onset"], duration_column=names.get("duration", "duration"),
                          stage_column=names[stage_col])
    return annotations_to_epochs(read_hypnogram(data, spec, source=name), n_epochs, start_offset_s, name), False


def _queued_epochs(scored: StorageLocation, recording_id: str) -> set[int]:
    """Epochs of a night in the review queue (none when no review was made)."""
    loc = rf.review_root(scored).join(rf.QUEUE_CSV)
    if not loc.exists():
        return set()
    return {int(r["epoch"]) for r in rf.read_table(scored, rf.QUEUE_CSV) if r["recording_id"] == recording_id}


def import_file(scored: str | StorageLocation, file: str, *, recording_id: str | None = None,
                all_epochs: bool = False, storage_options: Mapping[str, Any] | None = None) -> ImportedNight:
    """Import one corrected hypnogram into its night's ``<id>_corrections.csv`` (module docstring).

    Raises
    ------
    RecordingError
        Unknown night, unreadable file, epochs outside the night.
    """
    root = resolve(scored, storage_options)
    loc = resolve(file, storage_options)
    name = loc.name
    rid = recording_id or night_of_file(name)
    epochs_loc = root.join(rid, rid + OUTPUT_SUFFIXES["epochs"]) if re.fullmatch(r"[A-Za-z0-9_][\w.\-+=@]*", rid) else None
    if epochs_loc is None or not epochs_loc.exists():
        raise RecordingError(name, f"no scored night {rid!r} in {root.uri} (name the night with --night)", rid)
    table, meta = read_epochs(epochs_loc)
    epochs = np.asarray(table["epoch"].to_numpy(zero_copy_only=False), np.int64)
    model = dict(zip(epochs.tolist(), np.asarray(table["stage"].to_numpy(zero_copy_only=False)).tolist()))
    n_grid = int(epochs.max()) + 1 if epochs.size else 0
    stages, every_row = read_correction_file(loc.read_bytes(), name, n_grid, float(meta.get("start_offset_s") or 0.0))
    outside = sorted(e for e in stages if e not in model)
    if outside:
        raise RecordingError(name, f"{len(outside)} epoch(s) are not epochs of night {rid} (first: {outside[0]}; "
                                   f"it has {len(model)})", rid)
    if not (every_row or all_epochs):
        queued = _queued_epochs(root, rid)
        stages = {e: s for e, s in stages.items() if e in queued or s != model[e]}
    merged = {**rf.read_corrections(root, rid), **stages}
    uri = rf.write_corrections(root, rid, merged, start_offset_s=float(meta.get("start_offset_s") or 0.0))
    return ImportedNight(rid, name, len(stages), sum(s != model[e] for e, s in stages.items()), uri)


def import_corrections(scored: str, files: Sequence[str], *, recording_id: str | None = None,
                       all_epochs: bool = False, storage_options: Mapping[str, Any] | None = None
                       ) -> tuple[list[ImportedNight], list[dict[str, str]]]:
    """Import each file (:func:`import_file`); one bad file never stops the rest.

    Returns
    -------
    imported : list of ImportedNight
    rejects : list of dict
        ``source`` and ``reason`` of each file that could not be imported.

    Raises
    ------
    ConfigError
        ``recording_id`` given with more than one file.
    """
    if recording_id is not None and len(files) != 1:
        raise ConfigError("--night", [f"names the night of one file; {len(files)} files were given"])
    imported, rejects = [], []
    for f in files:
        try:
            imported.append(import_file(scored, f, recording_id=recording_id, all_epochs=all_epochs,
                                        storage_options=storage_options))
        except Exception as exc:  # noqa: BLE001 - a reject with its reason, as cohort runs do
            source = os.path.basename(str(f))
            reason = f"{source}: {exc}" if isinstance(exc, ConfigError) else reject_reason(exc, source)[0]
            rejects.append({"source": source, "reason": reason})
    return imported, rejects


__all__ = ["ImportedNight", "NAME_SUFFIXES", "STAGE_LABELS", "annotations_to_epochs", "import_corrections",
           "import_file", "night_of_file", "read_correction_file"]
