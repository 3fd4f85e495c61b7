"""The files of a review: where a scored cohort's review queue, its nights' signals and a
technician's corrections live, and how they are read and written.

``somnray review`` (:mod:`somnray.review`) writes the queue; the Serve app's review page reads it
and saves corrections; the import reads them back. This module is the one place that knows the
layout, so it sits here, below both.

Everything a review adds sits inside the scored output root, so a cohort's scoring, its queue and
its corrections travel together (any storage URI)::

    <scored>/
        <recording_id>/<recording_id>_epochs.parquet      the scoring (somnray score)
        <recording_id>/<recording_id>_corrections.csv     a technician's stages (review page or import)
        review/
            nights.csv                                    nights ranked by expected errors
            queue.csv, queue.parquet                      epochs ranked by uncertainty
            summary.json                                  how the queue was made
            prepared/                                     the queued nights' prepared signals
            <recording_id>/<recording_id>_review.edf      EDF+ annotations marking epochs to review

A corrections file has the columns of ``<id>_hypnogram.csv`` (``epoch,onset_s,stage`` with stage
names ``W N1 N2 N3 REM``), one row per epoch a technician staged; an epoch not listed was not
reviewed. A technician may therefore also edit a copy of the hypnogram CSV itself: every row
then counts as reviewed (``UNS`` rows are skipped).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Any

from somnray.core.constants import EPOCH_SECONDS, STAGES
from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve

from .scored import check_recording_id

#: Folder of the review inside the scored output root.
REVIEW_DIR = "review"
#: Nights ranked by expected number of errors (CSV).
NIGHTS_FILE = "nights.csv"
#: Epochs ranked by uncertainty (the same table as CSV and as Parquet).
QUEUE_CSV = "queue.csv"
QUEUE_PARQUET = "queue.parquet"
#: How the queue was made (inputs, options, counts).
SUMMARY_FILE = "summary.json"
#: Prepared dataset holding the queued nights' signals (the page's traces, the corrected dataset's base).
PREPARED_DIR = "prepared"
#: Suffix of a night's corrections file, beside its scored outputs.
CORRECTIONS_SUFFIX = "_corrections.csv"
#: Suffix of a night's EDF+ file marking the epochs to review, in the review folder.
MARKS_SUFFIX = "_review.edf"
#: Columns of a corrections file.
CORRECTIONS_COLUMNS = ("epoch", "onset_s", "stage")

#: Stage name → class index: the AASM names, plus ``R`` (EDF+ "Sleep stage R") and R&K's N4 (now N3).
_STAGE_CODES: dict[str, int] = {**{name: code for code, name in enumerate(STAGES)}, "R": 4, "N4": 3}


def review_root(scored: str | StorageLocation,
                storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The review folder of a scored output root."""
    return resolve(scored, storage_options).join(REVIEW_DIR)


def corrections_location(scored: str | StorageLocation, recording_id: str,
                         storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """Where the corrections of ``recording_id`` live: beside its scored outputs."""
    rid = check_recording_id(recording_id)
    return resolve(scored, storage_options).join(rid, rid + CORRECTIONS_SUFFIX)


def stage_code(name: str | int, *, source: str = "corrections") -> int:
    """Class index of a stage name (``W N1 N2 N3 REM``, also ``R``) or code (0-4).

    Raises
    ------
    ValueError
        Anything else (``UNS`` included: an unscored row is not a correction), naming ``source``.
    """
    text = str(name).strip().upper()
    if text in _STAGE_CODES:
        return _STAGE_CODES[text]
    if text.isdigit() and int(text) < len(STAGES):
        return int(text)
    raise ValueError(f"{source}: unknown stage {str(name)!r} (expected one of {', '.join(STAGES)})")


def corrections_csv(corrections: Mapping[int, int | str], start_offset_s: float = 0.0) -> str:
    """Render ``{epoch: stage}`` as a corrections CSV, in epoch order.

    ``onset_s`` is ``start_offset_s + epoch × 30`` as in the scored night's hypnogram CSV.
    """
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CORRECTIONS_COLUMNS)
    for epoch in sorted(corrections):
        code = stage_code(corrections[epoch])
        w.writerow((int(epoch), f"{start_offset_s + int(epoch) * EPOCH_SECONDS:g}", STAGES[code]))
    return out.getvalue()


def parse_corrections_csv(text: str, *, source: str = "corrections") -> dict[int, int]:
    """``{epoch: stage code}`` of a corrections (or hypnogram) CSV; ``UNS`` rows are skipped.

    Raises
    ------
    ValueError
        A missing column, a bad epoch number or stage, or an epoch given twice with different
        stages, naming ``source`` and the line.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("epoch", "stage") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{source}: no {' or '.join(missing)} column (expected {','.join(CORRECTIONS_COLUMNS)})")
    out: dict[int, int] = {}
    for line, row in enumerate(reader, start=2):
        stage = (row["stage"] or "").strip()
        if stage.upper() in ("UNS", "?", ""):
            continue
        try:
            epoch = int(row["epoch"])
            if epoch < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{source} line {line}: epoch {row['epoch']!r} is not a non-negative integer") from None
        code = stage_code(stage, source=f"{source} line {line}")
        if out.get(epoch, code) != code:
            raise ValueError(f"{source} line {line}: epoch {epoch} is given two different stages")
        out[epoch] = code
    return out


def write_corrections(scored: str | StorageLocation, recording_id: str, corrections: Mapping[int, int | str],
                      storage_options: Mapping[str, Any] | None = None, *, start_offset_s: float = 0.0) -> str:
    """Write a night's corrections atomically (a reader sees the old file or the new one).

    ``start_offset_s`` is the night's ``start_offset_s`` (its epochs' metadata), for ``onset_s``.

    Returns
    -------
    str
        URI of the corrections file.
    """
    loc = corrections_location(scored, recording_id, storage_options)
    loc.atomic_write_bytes(corrections_csv(corrections, start_offset_s).encode())
    return loc.uri


def read_corrections(scored: str | StorageLocation, recording_id: str,
                     storage_options: Mapping[str, Any] | None = None) -> dict[int, int]:
    """The saved corrections of a night (empty when none were saved)."""
    loc = corrections_location(scored, recording_id, storage_options)
    if not loc.exists():
        return {}
    try:
        return parse_corrections_csv(loc.read_text(), source=loc.name)
    except ValueError as exc:
        raise ConfigError(loc.name, [str(exc)]) from None


def read_summary(scored: str | StorageLocation,
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The review's ``summary.json`` (raises :class:`ConfigError` when no review was made)."""
    loc = review_root(scored, storage_options).join(SUMMARY_FILE)
    if not loc.exists():
        raise ConfigError(str(scored), ["no review here: run `somnray review` on this scored output first"])
    return json.loads(loc.read_text())


def read_table(scored: str | StorageLocation, name: str,
               storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a review CSV (``NIGHTS_FILE`` or ``QUEUE_CSV``) as dicts, numbers parsed."""
    loc = review_root(scored, storage_options).join(name)
    if not loc.exists():
        raise ConfigError(str(scored), [f"no {REVIEW_DIR}/{name}: run `somnray review` on this scored output first"])
    return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(loc.read_text()))]


def _number(text: str | None) -> Any:
    """A CSV cell as int, float, bool or str (empty → None)."""
    if text is None or text == "":
        return None
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return None if isinstance(value, float) and math.isnan(value) else value
    return text


__all__ = ["CORRECTIONS_COLUMNS", "CORRECTIONS_SUFFIX", "MARKS_SUFFIX", "NIGHTS_FILE", "PREPARED_DIR",
           "QUEUE_CSV", "QUEUE_PARQUET", "REVIEW_DIR", "SUMMARY_FILE", "corrections_csv", "corrections_location",
           "parse_corrections_csv", "read_corrections", "read_summary", "read_table", "review_root", "stage_code",
           "write_corrections"]
