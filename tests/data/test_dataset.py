"""PreparedDataset: opening, the one writer, reading back, entries, splits and selection (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_schema import make_rec  # tests/data is on sys.path (no package)

from somnray.core.errors import ConfigError, SplitError
from somnray.core.storage import resolve
from somnray.data import schema
from somnray.data.dataset import SUMMARY_KEY, PreparedDataset, dataset_version, recording_summary
from somnray.data.manifest import ManifestEntry
from somnray.data.profiles import load_profile
from somnray.data.splits import kfold_split

MODS = ("eeg", "eog", "emg")
#: recording id → (subject, manifest split); r4 is listed but never written (rejected).
ENTRIES = {"r1": ("s1", "train"), "r2": ("s1", "train"), "r3": ("s2", "test"), "r4": ("s3", "val")}


@pytest.fixture
def written(tmp_path):
    """A dataset with r1..r3 written, r4 only listed in entries.csv, and a manifest."""
    ds = PreparedDataset.at(str(tmp_path / "ds"))
    recs = {rid: make_rec(rid, 3 + i, seed=i) for i, rid in enumerate(("r1", "r2", "r3"))}
    for rec in recs.values():
        ds.write_recording(rec, MODS)
    ds.write_entries([ManifestEntry(rid, subject, f"{rid}.edf", split=split)
                      for rid, (subject, split) in ENTRIES.items()])
    ds.write_manifest({"dataset": "test-0123456789ab", "version": "0123456789ab",
                       "schema": schema.schema_metadata(MODS), "profile": {"name": "test"}})
    return ds, recs


def test_open_refuses_a_folder_that_is_not_a_prepared_dataset(tmp_path):
    """An empty folder, or recordings without manifest.json, is a ConfigError naming the URI."""
    with pytest.raises(ConfigError, match="no manifest.json: not a prepared dataset") as exc:
        PreparedDataset.open(str(tmp_path))
    assert exc.value.source == f"file://{tmp_path}/manifest.json"
    PreparedDataset.at(str(tmp_path)).write_recording(make_rec("r1", 3), MODS)  # an interrupted run
    with pytest.raises(ConfigError, match="rerun `somnray prepare`"):
        PreparedDataset.open(f"file://{tmp_path}")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a somnray manifest"):
        PreparedDataset.open(str(tmp_path))
    lazy = PreparedDataset.at(str(tmp_path / "nowhere"))  # no I/O until something is read
    with pytest.raises(ConfigError, match="no manifest.json"):
        lazy.manifest


def test_write_then_read_round_trip_with_footer_summary(written):
    """write_recording stores the contract's columns and the footer summary; read gets them back."""
    ds, recs = written
    opened = PreparedDataset.open(ds.uri)
    assert (opened.name, opened.version, opened.profile_name) == ("test-0123456789ab", "0123456789ab", "test")
    assert opened.modalities == list(MODS)
    assert opened.columns() == schema.build_schema(MODS).names
    rec = recs["r2"]
    row = opened.read("r2")
    assert row["recording_id"] == "r2" and row["n_epochs"] == rec.n_epochs
    np.testing.assert_array_equal(row["labels"], rec.labels)
    np.testing.assert_array_equal(row["epoch_index"], rec.epoch_index)
    np.testing.assert_allclose(row["eeg"], rec.signals["eeg"], atol=1e-2)
    assert row["emg"] is None and not row["available_emg"].any()
    assert opened.summary("r2") == json.loads(json.dumps(recording_summary(rec), default=str))
    with resolve(opened.recording_uri("r2")).open("rb") as f:
        meta = pq.read_metadata(f).metadata
    assert set(meta) >= {SUMMARY_KEY.encode(), schema.METADATA_KEY}
    assert not list((Path(resolve(ds.uri).path) / "recordings").glob(".*"))  # no temporary left behind


def test_read_recording_from_dataset_folder(tmp_path):
    """read finds a written recording by id and reads selected columns; a missing one is named."""
    rec = make_rec("r7", 4)
    ds = PreparedDataset.at(str(tmp_path))
    ds.write_recording(rec, ["eeg", "eog", "emg"])
    row = ds.read("r7")
    np.testing.assert_allclose(row["eeg"], rec.signals["eeg"], atol=1e-2)
    only = PreparedDataset.at(f"file://{tmp_path}").read("r7", columns=["labels"])
    assert set(only) == {"recording_id", "subject_id", "cohort", "n_epochs", "labels"}
    with pytest.raises(FileNotFoundError, match="no prepared recording 'zz'"):
        ds.read("zz")


def test_columns_the_dataset_lacks_are_absent_not_errors(tmp_path):
    """A modality the dataset has no column for is left out of a column-subset read."""
    ds = PreparedDataset.at(str(tmp_path))
    ds.write_recording(make_rec("r1", 3, mods=("eeg",), absent=()), ["eeg"])
    row = ds.read("r1", columns=["labels", "eeg", "eog", "available_eog"])
    assert set(row) == {"recording_id", "subject_id", "cohort", "n_epochs", "labels", "eeg"}


def test_summary_refuses_a_file_not_written_by_somnray(tmp_path):
    """A recording file without the footer summary is reported (the pipeline then rewrites it)."""
    ds = PreparedDataset.at(str(tmp_path))
    ds.write_recording(make_rec("r1", 3), MODS)
    path = resolve(ds.recording_uri("r1")).path
    pq.write_table(pq.read_table(path), path)  # same rows, no summary
    assert ds.has_recording("r1") and not ds.has_recording("r2")
    with pytest.raises(ValueError, match="no somnray.summary metadata"):
        ds.summary("r1")


def test_entries_and_selection(written, tmp_path):
    """entries() lists only written recordings; select() picks a fixed part or a Split's part."""
    ds, _ = written
    assert ds.recording_ids() == ["r1", "r2", "r3"]
    assert [e.recording_id for e in ds.entries()] == ["r1", "r2", "r3"]
    assert ds.select() == ["r1", "r2", "r3"]
    assert ds.select("train") == ["r1", "r2"] and ds.select("val") == []
    split = kfold_split(ds.entries(), 2, seed=0, n_val_subjects=0)[0]
    assert ds.select(split, "test") == sorted(split.test)
    assert [r["recording_id"] for r in ds.iter(split, "train", columns=["labels"])] == sorted(split.train)
    with pytest.raises(ConfigError, match="expected one of"):
        ds.select("holdout")
    with pytest.raises(ConfigError, match="a Split needs part="):
        ds.select(split)
    empty = PreparedDataset.at(str(tmp_path / "empty"))
    empty.write_entries([ManifestEntry("r1", "s1", "r1.edf")])
    assert empty.entries() == []
    for call in (lambda: empty.entries(required=True), empty.select, empty.columns):
        with pytest.raises(ConfigError, match=r"no prepared recordings \(recordings/\*.parquet\) found"):
            call()


def test_splits_are_stored_with_the_dataset(written):
    """write_splits stores splits/<name>.json; splits() lists it and split() reads it back."""
    ds, _ = written
    assert ds.splits() == []
    folds = kfold_split(ds.entries(), 2, seed=0, n_val_subjects=0, name="cv2")
    uri = ds.write_splits(folds)
    assert uri == ds.split_uri("cv2") and uri.endswith("/splits/cv2.json")
    assert ds.splits() == ["cv2"] and ds.split("cv2") == folds
    with pytest.raises(FileNotFoundError):
        ds.split("nope")
    resolve(ds.split_uri("bad")).write_text("[]")
    with pytest.raises(SplitError, match="not a somnray split file"):
        ds.split("bad")


def test_rejects_are_written_and_cleared(tmp_path):
    """write_reject stores rejects/<id>.json; clear_reject removes it (and tolerates none)."""
    ds = PreparedDataset.at(str(tmp_path))
    ds.write_reject({"recording_id": "r1", "reason": "broken"})
    path = tmp_path / "rejects" / "r1.json"
    assert json.loads(path.read_text())["reason"] == "broken"
    ds.clear_reject("r1")
    ds.clear_reject("r1")
    assert not path.exists()


def test_create_names_the_folder_by_version_and_keeps_entries(tmp_path):
    """create() makes <out>/<profile>-<version> with entries.csv, and a rerun leaves entries.csv alone."""
    profile = load_profile("sleep-edf")
    entries = [ManifestEntry("r1", "s1", "/data/r1.edf", "/data/r1-hyp.edf")]
    ds = PreparedDataset.create(str(tmp_path), profile, entries)
    version = dataset_version(entries, profile)
    assert ds.version == version and ds.uri == f"file://{tmp_path}/sleep-edf-{version}"
    entries_csv = tmp_path / f"sleep-edf-{version}" / "entries.csv"
    before = entries_csv.stat().st_mtime_ns
    again = PreparedDataset.create(f"file://{tmp_path}", profile, entries)
    assert again.uri == ds.uri and entries_csv.stat().st_mtime_ns == before
    assert entries_csv.read_text().splitlines()[1].startswith("r1,s1,/data/r1.edf")


def test_version_depends_on_inputs_and_profile(synth_cohort):
    """Same entries and profile → same version; a changed profile setting or entry → a new one."""
    cohort = synth_cohort("sleep-edf", n_nights=4, hours=1.0)
    v = dataset_version(cohort.entries, cohort.profile)
    assert v == dataset_version(list(reversed(cohort.entries)), cohort.profile)
    changed = cohort.profile.model_copy(update={"normalization": "robust"})
    assert dataset_version(cohort.entries, changed) != v
    assert dataset_version(cohort.entries[:3], cohort.profile) != v
    assert len(v) == 12 and int(v, 16) >= 0


def test_same_as_recognises_the_same_versioned_folder(tmp_path):
    """Two URIs name the same dataset when they are one place or copies of one versioned folder."""
    a = PreparedDataset.at(str(tmp_path / "store" / "sleep-edf-0123456789ab"))
    assert a.same_as(PreparedDataset.at(f"file://{tmp_path}/store/sleep-edf-0123456789ab/"))
    assert a.same_as(PreparedDataset.at("s3://bucket/prepared/sleep-edf-0123456789ab"))
    assert not a.same_as(PreparedDataset.at(str(tmp_path / "store" / "sleep-edf-ba9876543210")))
    assert not PreparedDataset.at(str(tmp_path / "x" / "data")).same_as(PreparedDataset.at(str(tmp_path / "data")))
