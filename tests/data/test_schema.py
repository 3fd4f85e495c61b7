"""The Parquet contract: column types, nulls for absent modalities, float16 round trips."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from somnray.data import schema
from somnray.data.prepared import PreparedRecording


def make_rec(rid: str = "r1", n: int = 5, mods=("eeg", "eog"), absent=("emg",), seed: int = 0):
    """A hand-made prepared recording with ``mods`` present and ``absent`` modalities None."""
    rng = np.random.default_rng(seed)
    signals = {m: rng.normal(size=(n, 3000)).astype(np.float32) for m in mods}
    available = {m: rng.random(n) > 0.2 for m in mods}
    for m in absent:
        signals[m] = None
        available[m] = np.zeros(n, bool)
    return PreparedRecording(
        recording_id=rid, subject_id="s" + rid, cohort="test", signals=signals, available=available,
        labels=rng.integers(-1, 5, n).astype(np.int8), epoch_index=np.arange(3, 3 + n, dtype=np.int32),
        info={"native_sfreq": {"eeg": 100.0}})


def test_schema_types_and_metadata():
    """Columns have the contract's types, in canonical modality order, with shape metadata."""
    s = schema.build_schema(["ecg", "emg", "eeg", "eog"])
    assert s.names == ["recording_id", "subject_id", "cohort", "n_epochs", "labels", "epoch_index",
                       "eeg", "available_eeg", "eog", "available_eog", "emg", "available_emg",
                       "ecg", "available_ecg"]
    assert s.field("n_epochs").type == pa.int32()
    assert s.field("labels").type == pa.list_(pa.int8())
    assert s.field("epoch_index").type == pa.list_(pa.int32())
    assert s.field("eeg").type == pa.list_(pa.float16()) and s.field("eeg").nullable
    assert s.field("available_eeg").type == pa.list_(pa.bool_())
    meta = json.loads(s.metadata[b"somnray"])
    assert meta["sampling_rate_hz"] == 100 and meta["epoch_samples"] == 3000
    assert meta["format_version"] == schema.FORMAT_VERSION
    assert schema.modalities_of(s) == ["eeg", "eog", "emg", "ecg"]


def test_roundtrip_through_parquet_matches_within_float16():
    """Recordings survive to_table → Parquet → table_to_arrays with float16 precision."""
    recs = [make_rec("a", 4), make_rec("b", 7, seed=1)]
    table = schema.to_table(recs, ["eeg", "eog", "emg"])
    assert table.num_rows == 2
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = schema.table_to_arrays(pq.read_table(io.BytesIO(buf.getvalue())))
    for rec, row in zip(recs, back):
        assert row["recording_id"] == rec.recording_id and row["n_epochs"] == rec.n_epochs
        np.testing.assert_array_equal(row["labels"], rec.labels)
        np.testing.assert_array_equal(row["epoch_index"], rec.epoch_index)
        for m in ("eeg", "eog"):
            assert row[m].shape == (rec.n_epochs, 3000) and row[m].dtype == np.float16
            np.testing.assert_allclose(row[m], rec.signals[m], rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(row[f"available_{m}"], rec.available[m])
        assert row["emg"] is None and not row["available_emg"].any()


def test_row_to_arrays_accepts_pylist_rows():
    """Rows from Arrow to_pylist (plain lists) reshape to (n, 3000) like record_to_row rows."""
    rec = make_rec("a", 3)
    from_pylist = schema.row_to_arrays(schema.to_table([rec]).to_pylist()[0])
    from_row = schema.row_to_arrays(schema.record_to_row(rec))
    assert from_pylist["eeg"].shape == (3, 3000)
    np.testing.assert_array_equal(from_pylist["eeg"], from_row["eeg"])
    assert from_pylist["emg"] is None and from_row["emg"] is None


def test_outliers_saturate_instead_of_inf():
    """Values beyond float16's range are clipped to its maximum, never stored as inf."""
    rec = make_rec("a", 2, mods=("eeg",), absent=())
    rec.signals["eeg"][0, 0] = 1e9
    row = schema.record_to_row(rec)
    assert np.isfinite(row["eeg"]).all() and row["eeg"][0] == np.finfo(np.float16).max


def test_missing_availability_for_absent_modality_is_all_false():
    """A modality the recording lacks gets a null signal and an all-false mask in the table."""
    rec = make_rec("a", 3, mods=("eeg",), absent=())
    table = schema.to_table([rec], ["eeg", "eog"])
    assert table.column("eog")[0].as_py() is None
    assert table.column("available_eog")[0].as_py() == [False] * 3


def test_shape_mismatch_names_the_recording():
    """A signal of the wrong shape is refused with the recording id and the shapes."""
    rec = make_rec("bad-one", 3)
    rec.signals["eeg"] = np.zeros((3, 2999), np.float32)
    with pytest.raises(ValueError, match=r"'bad-one'.*eeg has shape \(3, 2999\), expected \(3, 3000\)"):
        schema.to_table([rec])

