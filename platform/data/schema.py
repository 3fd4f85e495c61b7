"""The Parquet contract of a prepared dataset: one row per recording, its whole epoch sequence.

=====================  ====================  ========================================================
column                 type                  meaning
=====================  ====================  ========================================================
``recording_id``       string                manifest id (never an EDF header field)
``subject_id``         string                subject of the night (splits are subject-wise)
``cohort``             string                cohort profile name
``n_epochs``           int32                 number of 30-s epochs kept
``labels``             list<int8>            0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 movement/unscored
``epoch_index``        list<int32>           position of each epoch in the original recording
``<m>``                list<float16>         per modality ``m`` of the profile (``eeg``, ``eog``,
                                             ``emg``, ...): the epochs flattened row-major,
                                             ``n_epochs * 3000`` samples at 100 Hz; null when the
                                             recording lacks the modality
``available_<m>``      list<bool>            per epoch: false where the modality is unusable
=====================  ====================  ========================================================

The schema metadata key ``somnray`` holds JSON with the format version, the sampling rate, the
epoch length and the modalities, so a reader without somnray can reshape the signals
(``np.asarray(row["eeg"]).reshape(row["n_epochs"], 3000)``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from somnray.core.constants import CANONICAL_MODALITIES, EPOCH_SAMPLES, SAMPLING_RATE_HZ

from .prepared import PreparedRecording

#: Version of the on-storage layout; part of every dataset version hash.  Bump on any change of
#: columns, types or meaning.
FORMAT_VERSION = 1
METADATA_KEY = b"somnray"
#: Columns every dataset has, whatever its modalities.
BASE_COLUMNS = ("recording_id", "subject_id", "cohort", "n_epochs", "labels", "epoch_index")

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def order_modalities(modalities: Iterable[str]) -> list[str]:
    """Modalities in column order: the canonical ones first, then the others sorted."""
    mods = set(modalities)
    return [m for m in CANONICAL_MODALITIES if m in mods] + sorted(mods - set(CANONICAL_MODALITIES))


def available_column(modality: str) -> str:
    """Name of the per-epoch availability column of ``modality``."""
    return f"available_{modality}"


def schema_metadata(modalities: Sequence[str]) -> dict[str, Any]:
    """The JSON document stored under the ``somnray`` schema metadata key."""
    return {
        "format_version": FORMAT_VERSION,
        "sampling_rate_hz": SAMPLING_RATE_HZ,
        "epoch_samples": EPOCH_SAMPLES,
        "signal_layout": "row-major (n_epochs, epoch_samples), flattened to one list per modality",
        "modalities": list(modalities),
        "labels": {"-1": "unscored/movement", "0": "W", "1": "N1", "2": "N2", "3": "N3", "4": "REM"},
    }


def build_schema(modalities: Iterable[str]) -> pa.Schema:
    """The Arrow schema of a dataset with ``modalities``."""
    mods = order_modalities(modalities)
    fields = [
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("cohort", pa.string(), nullable=False),
        pa.field("n_epochs", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(pa.int8()), nullable=False),
        pa.field("epoch_index", pa.list_(pa.int32()), nullable=False),
    ]
    for m in mods:
        fields.append(pa.field(m, pa.list_(pa.float16()), nullable=True))
        fields.append(pa.field(available_column(m), pa.list_(pa.bool_()), nullable=False))
    meta = {METADATA_KEY: json.dumps(schema_metadata(mods)).encode()}
    return pa.schema(fields, metadata=meta)


def modalities_of(schema: pa.Schema) -> list[str]:
    """The modalities a dataset schema holds (from its metadata, else from its columns)."""
    meta = schema.metadata or {}
    if METADATA_KEY in meta:
        return list(json.loads(meta[METADATA_KEY])["modalities"])
    return [n[len("available_"):] for n in schema.names if n.startswith("available_")]


def _check(rec: PreparedRecording, modalities: Sequence[str]) -> None:
    # The shapes are the contract every reader relies on: a mismatch here is a bug upstream,
    # reported with the recording's id rather than as a cryptic Arrow length error.
    n = rec.n_epochs
    problems = []
    if rec.epoch_index.shape != (n,):
        problems.append(f"epoch_index has shape {rec.epoch_index.shape}, expected ({n},)")
    for m in modalities:
        sig = rec.signals.get(m)
        if sig is not None and sig.shape != (n, EPOCH_SAMPLES):
            problems.append(f"{m} has shape {sig.shape}, expected ({n}, {EPOCH_SAMPLES})")
        avail = rec.available.get(m)
        if avail is not None and avail.shape != (n,):
            problems.append(f"available[{m}] has shape {avail.shape}, expected ({n},)")
    extra = sorted(set(rec.signals) - set(modalities))
    if extra:
        problems.append(f"modalities {extra} are not in the dataset's modalities {list(modalities)}")
    if problems:
        raise ValueError(f"recording {rec.recording_id!r} does not fit the Parquet contract: "
                         + "; ".join(problems))


def _to_float16(sig: np.ndarray) -> np.ndarray:
    # Normalised signals sit far inside float16's range, but a stray outlier must saturate
    # rather than become inf and poison a training batch.
    return np.clip(np.asarray(sig, dtype=np.float32), -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)


def _list_array(values: Sequence[np.ndarray | None], value_type: pa.DataType) -> pa.Array:
    """A list array built from flat numpy arrays without a Python round trip (None = null)."""
    lengths = np.array([0 if v is None else v.size for v in values], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} values exceed one Arrow list chunk; write fewer rows at once")
    present = [v.ravel() for v in values if v is not None]
    flat = np.concatenate(present) if present else np.zeros(0)
    flat_arr = pa.array(flat.astype(value_type.to_pandas_dtype(), copy=False), type=value_type)
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat_arr, mask=mask)


def to_table(recs: Sequence[PreparedRecording], modalities: Iterable[str] | None = None) -> pa.Table:
    """Arrow table of ``recs`` (one row each) following the contract.

    Parameters
    ----------
    recs : sequence of PreparedRecording
        Recordings to convert.
    modalities : iterable of str, optional
        Modality columns to write (the profile's); default: every modality the recordings carry.
        A recording lacking one gets a null signal and an all-false availability.
    """
    mods = order_modalities(modalities if modalities is not None
                            else {m for r in recs for m in r.signals})
    for r in recs:
        _check(r, mods)
    schema = build_schema(mods)
    cols: dict[str, pa.Array] = {
        "recording_id": pa.array([r.recording_id for r in recs], pa.string()),
        "subject_id": pa.array([r.subject_id for r in recs], pa.string()),
        "cohort": pa.array([r.cohort for r in recs], pa.string()),
        "n_epochs": pa.array([r.n_epochs for r in recs], pa.int32()),
        "labels": _list_array([np.asarray(r.labels, np.int8) for r in recs], pa.int8()),
        "epoch_index": _list_array([np.asarray(r.epoch_index, np.int32) for r in recs], pa.int32()),
    }
    for m in mods:
        sigs = [None if r.signals.get(m) is None else _to_float16(r.signals[m]) for r in recs]
        cols[m] = _list_array(sigs, pa.float16())
        avails = []
        for r, s in zip(recs, sigs):
            a = r.available.get(m)
            avails.append(np.zeros(r.n_epochs, bool) if a is None or s is None else np.asarray(a, bool))
        cols[available_column(m)] = _list_array(avails, pa.bool_())
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def record_to_row(rec: PreparedRecording, modalities: Iterable[str] | None = None) -> dict[str, Any]:
    """One recording as a row dict with the contract's column names and flat numpy values."""
    mods = order_modalities(modalities if modalities is not None else rec.signals)
    _check(rec, mods)
    row: dict[str, Any] = {
        "recording_id": rec.recording_id,
        "subject_id": rec.subject_id,
        "cohort": rec.cohort,
        "n_epochs": np.int32(rec.n_epochs),
        "labels": np.asarray(rec.labels, np.int8),
        "epoch_index": np.asarray(rec.epoch_index, np.int32),
    }
    for m in mods:
        sig = rec.signals.get(m)
        row[m] = None if sig is None else _to_float16(sig).ravel()
        avail = rec.available.get(m)
        row[available_column(m)] = (np.zeros(rec.n_epochs, bool) if sig is None or avail is None
                                    else np.asarray(avail, bool))
    return row


def row_to_arrays(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (dict from Arrow ``to_pylist``, Ray Data, or :func:`record_to_row`) as numpy arrays.

    Only ``n_epochs`` is required; the columns present are converted.  Signals come back as ``(n_epochs, 3000)`` float16 (or None), labels int8, epoch_index int32,
    availability bool; string columns unchanged.
    """
    n = int(row["n_epochs"])
    out: dict[str, Any] = {"n_epochs": n}
    for key, value in row.items():
        if key in ("recording_id", "subject_id", "cohort"):
            out[key] = str(value)
        elif key == "n_epochs":
            continue
        elif key == "labels":
            out[key] = np.asarray(value, dtype=np.int8)
        elif key == "epoch_index":
            out[key] = np.asarray(value, dtype=np.int32)
        elif key.startswith("available_"):
            out[key] = np.asarray(value, dtype=bool)
        elif value is None:
            out[key] = None
        else:
            out[key] = np.asarray(value, dtype=np.float16).reshape(n, EPOCH_SAMPLES)
    return out


def _column_numpy(col: pa.ChunkedArray | pa.Array, row: int) -> np.ndarray | None:
    scalar = col[row]
    if not scalar.is_valid:
        return None
    return scalar.values.to_numpy(zero_copy_only=False)


def table_to_arrays(table: pa.Table) -> list[dict[str, Any]]:
    """Every row of a contract table as :func:`row_to_arrays` dicts, without a Python list detour."""
    out = []
    names = table.column_names
    for i in range(table.num_rows):
        row: dict[str, Any] = {}
        for name in names:
            col = table.column(name)
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                row[name] = _column_numpy(col, i)
            else:
                row[name] = col[i].as_py()
        out.append(row_to_arrays(row))
    return out
