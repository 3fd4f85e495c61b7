"""Cohort manifests: which recordings form a cohort, with their hypnograms and subjects.

A manifest is a CSV (or Parquet) table with one row per recording night:

=================  ========  =================================================================
column             required  meaning
=================  ========  =================================================================
``recording_id``   yes       unique, non-identifying name used for every output
``subject_id``     yes       subject (splits never put two nights of one subject apart)
``psg``            yes       URI or path of the EDF/EDF+/BDF file (relative to the manifest)
``hypnogram``      no        URI or path of the scoring (EDF+ annotations, NSRR XML, CSV/TSV);
                             empty when the PSG carries EDF+ annotations itself or for scoring
``profile``        no        cohort profile name or YAML path; defaults to ``--profile``
``split``          no        fixed split (``train``/``val``/``test``) when the cohort has one
``lights_off``     no        lights-off in seconds from the recording start; scoring computes
                             the sleep statistics from it (default: the recording start)
``lights_on``      no        lights-on in seconds from the recording start (default: its end)
=================  ========  =================================================================

Unknown columns are ignored.  ``docs/data-contract.md`` describes the format for users.
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
from dataclasses import asdict, dataclass

from somnray.core.errors import ConfigError

REQUIRED_COLUMNS = ("recording_id", "subject_id", "psg")
OPTIONAL_COLUMNS = ("hypnogram", "profile", "split")
#: Optional columns that exist in an entry (and its dict, CSV and hash) only when given, so a
#: cohort without them is described, hashed and written exactly as before they existed.
LIGHTS_COLUMNS = ("lights_off", "lights_on")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestEntry:
    """One recording night of a cohort manifest (see the module docstring)."""

    recording_id: str
    subject_id: str
    psg: str
    hypnogram: str | None = None
    profile: str | None = None
    split: str | None = None
    lights_off: float | None = None
    lights_on: float | None = None

    def as_dict(self) -> dict[str, str | float | None]:
        """The entry as a plain dict (for hashing and JSON); lights times only when given."""
        doc = asdict(self)
        for col in LIGHTS_COLUMNS:
            if doc[col] is None:
                del doc[col]
        return doc


def _resolve(ref: str, base: str | None) -> str:
    # A relative path in a manifest is relative to the manifest's own location, so a cohort
    # folder can be moved or uploaded to object storage as a whole.
    if not ref or base is None or "://" in ref or ref.startswith("/"):
        return ref
    return posixpath.normpath(posixpath.join(base, ref)) if "://" not in base else f"{base.rstrip('/')}/{ref}"


def _read_rows(reader: csv.DictReader, source: str) -> list[dict[str, str]]:
    """Every row, or a ConfigError naming the line where the CSV stops making sense.

    The reader is strict because a lenient one reads an unbalanced quote as a field running to the
    end of the file: the rows after it would silently vanish into one path.
    """
    rows: list[dict[str, str]] = []
    first_line = 1  # where the row being read starts (the header first)
    try:
        _ = reader.fieldnames  # reads the header row, which can be malformed too
        first_line = reader.line_num + 1
        for row in reader:
            rows.append(row)
            first_line = reader.line_num + 1
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            problem = (f"line {first_line}: a quoted field opened on this line is never closed "
                       "(unbalanced '\"'); everything after it would be one value")
        else:
            problem = f"line {first_line}: malformed CSV ({exc})"
        raise ConfigError(source, [f"malformed manifest: {problem}"]) from None
    return rows


def _seconds(text: str, column: str, line_no: int, errors: list[str]) -> float | None:
    """A lights time in seconds from the recording start, None when empty (problems appended)."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        errors.append(f"line {line_no}: {column} {text!r} is not a number of seconds from the "
                      "recording start (>= 0)")
        return None
    return value


def parse_manifest_csv(text: str, source: str, base: str | None = None) -> list[ManifestEntry]:
    """Parse manifest CSV ``text``; every problem is reported at once.

    Parameters
    ----------
    text : str
        CSV content with a header row.
    source : str
        Name of the manifest, used in error messages.
    base : str, optional
        Folder (path or URI) relative references are resolved against.

    Raises
    ------
    ConfigError
        Malformed CSV (an unbalanced quote), missing columns, empty required cells, duplicate
        ids, unknown splits, lights times that are not seconds or not in order.
    """
    reader = csv.DictReader(io.StringIO(text), strict=True)
    rows = _read_rows(reader, source)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(source, [f"missing required column(s) {missing}; columns found: {columns}"])
    errors: list[str] = []
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        for col in REQUIRED_COLUMNS:
            if not row.get(col):
                errors.append(f"line {line_no}: column {col!r} is empty")
        rid = row.get("recording_id", "")
        if rid in seen:
            errors.append(f"line {line_no}: recording_id {rid!r} repeats line {seen[rid]}")
        seen.setdefault(rid, line_no)
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            errors.append(f"line {line_no}: split {split!r} is not one of {list(SPLITS)}")
        lights = {col: _seconds(row.get(col, ""), col, line_no, errors) for col in LIGHTS_COLUMNS}
        off, on = lights["lights_off"], lights["lights_on"]
        if off is not None and on is not None and on <= off:
            errors.append(f"line {line_no}: lights_on {on:g} s is not after lights_off {off:g} s")
        entries.append(ManifestEntry(
            recording_id=rid,
            subject_id=row.get("subject_id", ""),
            psg=_resolve(row.get("psg", ""), base),
            hypnogram=_resolve(row.get("hypnogram", ""), base) or None,
            profile=row.get("profile") or None,
            split=split,
            **lights,
        ))
    if not entries and not errors:
        errors.append("the manifest has a header but no recordings")
    if errors:
        raise ConfigError(source, errors)
    return entries


def format_manifest_csv(entries: list[ManifestEntry]) -> str:
    """Render entries as manifest CSV text (the inverse of :func:`parse_manifest_csv`)."""
    out = io.StringIO()
    lights = [c for c in LIGHTS_COLUMNS if any(getattr(e, c) is not None for e in entries)]
    writer = csv.DictWriter(out, fieldnames=list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS) + lights,
                            lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({k: (v if v is not None else "") for k, v in e.as_dict().items()})
    return out.getvalue()
