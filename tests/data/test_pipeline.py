"""Integration: the Ray Data preparation pipeline on a local Ray cluster, to disk and to S3 (moto)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from somnray.core.storage import resolve
from somnray.data import synth
from somnray.data import schema
from somnray.data.dataset import PreparedDataset
from somnray.data.pipeline import prepare_cohort
from somnray.data.recording import prepare_recording
from somnray.data.schema import row_to_arrays
from somnray.data.splits import ratio_split

pytestmark = pytest.mark.integration

#: Identifying strings the synthetic EDF headers carry; none may reach any output or log.
IDENTIFYING = [synth.SYNTH_PATIENT_NAME, synth.SYNTH_PATIENT_CODE, synth.SYNTH_HOSPITAL,
               synth.SYNTH_TECHNICIAN, synth.SYNTH_EQUIPMENT]


def all_bytes(uri: str) -> dict[str, bytes]:
    """Every file below ``uri`` (hidden ones included), path → content."""
    loc = resolve(uri)
    return {p: loc.fs.cat_file(p) for p in loc.fs.find(loc.path)}


def assert_matches_direct(cohort, rows: list[dict]) -> None:
    """Read-back arrays equal prepare_recording run directly on the cohort's files (float16)."""
    by_id = {r["recording_id"]: r for r in rows}
    assert sorted(by_id) == sorted(e.recording_id for e in cohort.entries)
    for e in cohort.entries:
        rec = prepare_recording(str(cohort.path / e.psg), str(cohort.path / e.hypnogram), cohort.profile,
                                recording_id=e.recording_id, subject_id=e.subject_id)
        got = by_id[e.recording_id]
        assert got["subject_id"] == e.subject_id and got["n_epochs"] == rec.n_epochs
        np.testing.assert_array_equal(got["labels"], rec.labels)
        np.testing.assert_array_equal(got["epoch_index"], rec.epoch_index)
        for m in cohort.profile.modalities:
            if rec.signals[m] is None:
                assert got[m] is None
                continue
            assert got[m].shape == rec.signals[m].shape
            np.testing.assert_allclose(got[m].astype(np.float32), rec.signals[m], rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(got[f"available_{m}"], rec.available[m])


@pytest.fixture(scope="module", params=[("sleep-edf", "local"), ("sleep-edf", "s3"),
                                        ("shhs", "local"), ("shhs", "s3")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def prepared_run(request, ray_local, synth_cohort, tmp_path_factory):
    """Each cohort prepared once per store; S3 runs read their input from S3 as well."""
    profile_name, store = request.param
    cohort = synth_cohort(profile_name, n_nights=4, hours=1.0)
    if store == "local":
        out = f"file://{tmp_path_factory.mktemp('prepared')}"
        source = str(cohort.manifest)
    else:
        server = request.getfixturevalue("s3_server")
        bucket = server.make_bucket()
        resolve(bucket).fs.put(str(cohort.path) + "/", f"{bucket[5:]}/cohort/", recursive=True)
        source, out = f"{bucket}/cohort", f"{bucket}/prepared"
    logger = logging.getLogger("somnray")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        result = prepare_cohort(source, cohort.profile, out, num_workers=2, progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return {"cohort": cohort, "result": result, "store": store, "logs": "\n".join(records)}


def test_prepared_dataset_matches_direct_preparation(prepared_run):
    """Ray Data and the Ray-free reader both return what prepare_recording computes directly."""
    cohort, result = prepared_run["cohort"], prepared_run["result"]
    assert result.exit_code == 0 and result.prepared == 4 and result.rejected == 0
    expected_prefix = "file://" if prepared_run["store"] == "local" else "s3://"
    assert result.dataset_uri.startswith(expected_prefix)
    assert result.dataset_uri.rstrip("/").endswith(f"{cohort.profile.name}-{result.version}")
    dataset = PreparedDataset.open(result.dataset_uri)
    ray_rows = [row_to_arrays(r) for r in dataset.load().take_all()]
    assert_matches_direct(cohort, ray_rows)
    assert_matches_direct(cohort, list(dataset.iter()))


def test_layout_and_manifest_json(prepared_run):
    """One Parquet file per recording, entries.csv, and a manifest.json with the promised fields."""
    cohort, result = prepared_run["cohort"], prepared_run["result"]
    ds = resolve(result.dataset_uri)
    names = sorted(loc.name for loc in ds.join("recordings").find())
    assert names == sorted(f"{e.recording_id}.parquet" for e in cohort.entries)
    assert not ds.join("rejects").find()
    doc = PreparedDataset.open(result.dataset_uri).manifest
    assert doc["version"] == result.version and doc["complete"] is True
    assert doc["counts"]["total"] == 4 and doc["counts"]["prepared"] == 4
    assert doc["profile"]["name"] == cohort.profile.name
    hist = doc["class_histogram"]
    assert set(hist) == {"unscored", "W", "N1", "N2", "N3", "REM"}
    assert sum(hist.values()) == doc["counts"]["epochs"] == sum(r["n_epochs"] for r in doc["recordings"])
    assert set(doc["modalities"]) == set(cohort.profile.modalities)
    assert doc["modalities"]["eeg"]["recordings_with_modality"] == 4
    assert 0.5 < doc["modalities"]["eeg"]["available_epoch_fraction"] <= 1.0
    assert len(doc["entries"]) == 4 and doc["somnray_version"] and doc["created_at"]
    subjects = {e.recording_id: e.subject_id for e in PreparedDataset.open(result.dataset_uri).entries()}
    assert subjects == {e.recording_id: e.subject_id for e in cohort.entries}


def test_no_identifying_header_fields_in_outputs_or_logs(prepared_run, ray_local):
    """Fake patient/recording header strings of the EDFs appear in no written byte and no log."""
    cohort, result = prepared_run["cohort"], prepared_run["result"]
    psg = (cohort.path / cohort.entries[0].psg).read_bytes()
    assert synth.SYNTH_PATIENT_NAME.encode() in psg  # the check below is not vacuous
    files = all_bytes(result.dataset_uri)
    assert len(files) >= 6
    for s in IDENTIFYING:
        for path, data in files.items():
            assert s.encode() not in data, f"{s!r} leaked into {path}"
        assert s not in prepared_run["logs"]
    for log_file in ray_local.logs_dir.rglob("*"):
        if log_file.is_file():
            data = log_file.read_bytes()
            for s in IDENTIFYING:
                assert s.encode() not in data, f"{s!r} leaked into Ray log {log_file.name}"


def test_load_prepared_by_split(prepared_run):
    """load with a Split and a part reads exactly that part's recordings."""
    dataset = PreparedDataset.open(prepared_run["result"].dataset_uri)
    split = ratio_split(dataset.entries(), test_fraction=0.5, n_val_subjects=0)
    ds = dataset.load(split, part="test", columns=["recording_id", "labels"])
    assert sorted(r["recording_id"] for r in ds.take_all()) == sorted(split.test)


def test_pipeline_output_opens_as_a_prepared_dataset(prepared_run):
    """A dataset the pipeline wrote opens: identity from manifest.json, entries, footer summaries,
    columns and single-recording reads agree with what the run reported."""
    cohort, result = prepared_run["cohort"], prepared_run["result"]
    dataset = PreparedDataset.open(result.dataset_uri)
    assert dataset.uri == result.dataset_uri and dataset.version == result.version
    assert dataset.name == f"{cohort.profile.name}-{result.version}" == dataset.location.name
    assert dataset.profile_name == cohort.profile.name
    assert dataset.modalities == schema.order_modalities(cohort.profile.modalities)
    assert dataset.columns() == schema.build_schema(cohort.profile.modalities).names
    assert dataset.recording_ids() == sorted(e.recording_id for e in cohort.entries)
    by_id = {r["recording_id"]: r for r in dataset.manifest["recordings"]}
    for rid in dataset.recording_ids():
        summary = dataset.summary(rid)
        assert summary["n_epochs"] == by_id[rid]["n_epochs"] == dataset.read(rid, ["labels"])["n_epochs"]
        assert sum(summary["label_counts"].values()) == summary["n_epochs"]
    first = dataset.recording_ids()[0]
    whole, some = dataset.read(first), dataset.read(first, ["labels", "eeg"])
    np.testing.assert_array_equal(whole["eeg"], some["eeg"])
    assert set(some) == {"recording_id", "subject_id", "cohort", "n_epochs", "labels", "eeg"}


def copy_cohort(cohort, dest: Path) -> Path:
    """A writable copy of a session cohort."""
    shutil.copytree(cohort.path, dest)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """file name → (mtime_ns, content) of the recording files."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.glob("*.parquet"))}


def test_resume_writes_each_recording_once(ray_local, synth_cohort, tmp_path):
    """An interrupted run (limit, crash before manifest.json, stray temp file) resumes without
    rewriting any recording, and completes the dataset."""
    cohort = synth_cohort("sleep-edf", n_nights=4, hours=1.0)
    out = tmp_path / "out"
    first = prepare_cohort(str(cohort.manifest), cohort.profile, str(out), num_workers=2,
                           progress=False, limit=2)
    assert (first.prepared, first.pending, first.manifest["complete"]) == (2, 2, False)
    rec_dir = Path(resolve(first.dataset_uri).path) / "recordings"
    before = snapshot(rec_dir)
    assert len(before) == 2
    # Simulate a crash after two recordings: no manifest.json, a half-written temporary file.
    (Path(resolve(first.dataset_uri).path) / "manifest.json").unlink()
    stray = rec_dir / f".{cohort.entries[3].recording_id}.parquet.deadbeef.tmp"
    stray.write_bytes(b"PAR1 partial")

    second = prepare_cohort(str(cohort.manifest), cohort.profile, str(out), num_workers=2, progress=False)
    assert second.dataset_uri == first.dataset_uri
    assert (second.skipped, second.prepared, second.pending, second.rejected) == (2, 2, 0, 0)
    after = snapshot(rec_dir)
    assert len(after) == 4
    for name, state in before.items():
        assert after[name] == state, f"{name} was rewritten on resume"
    assert second.manifest["counts"]["epochs"] == sum(r["n_epochs"] for r in second.manifest["recordings"])

    third = prepare_cohort(str(cohort.manifest), cohort.profile, str(out), num_workers=2, progress=False)
    assert (third.skipped, third.prepared) == (4, 0)
    assert snapshot(rec_dir) == after
    assert third.manifest["class_histogram"] == second.manifest["class_histogram"]


def write_bad_recordings(folder: Path, good) -> dict[str, str]:
    """Add four bad nights next to good ones; returns recording id → expected reason fragment."""
    import edfio

    psg0 = folder / good.psg
    hyp0 = folder / good.hypnogram
    expected = {}
    # 1. Corrupt EDF: a good PSG cut inside its first data record (a file with complete records
    # left would be prepared from them, with a warning).
    data = psg0.read_bytes()
    (folder / "SC4091E0-PSG.edf").write_bytes(data[: int(data[184:192]) + 100])
    shutil.copy(hyp0, folder / "SC4091EC-Hypnogram.edf")
    expected["SC4091E0"] = "SC4091E0-PSG.edf: file is truncated: header declares"
    # 2. Not an EDF at all.
    (folder / "SC4092E0-PSG.edf").write_text("this is a text file, not a recording\n")
    shutil.copy(hyp0, folder / "SC4092EC-Hypnogram.edf")
    expected["SC4092E0"] = ("SC4092E0-PSG.edf: not an EDF/BDF file (header does not start with "
                            "'0       '; found b'this is ')")
    # 3. The required EOG channel removed.
    edf = edfio.read_edf(psg0)
    edf.drop_signals(["EOG horizontal"])
    edf.write(folder / "SC4093E0-PSG.edf")
    shutil.copy(hyp0, folder / "SC4093EC-Hypnogram.edf")
    expected["SC4093E0"] = "SC4093E0-PSG.edf: required channel 'eog'"
    # 4. A hypnogram with a label the profile does not know.
    shutil.copy(psg0, folder / "SC4094E0-PSG.edf")
    # Same-length byte edit of the EDF+ annotation text: the file stays valid EDF+.
    raw = bytearray(hyp0.read_bytes())
    at = raw.index(b"Sleep stage ") + len(b"Sleep stage ")
    raw[at:at + 1] = b"X"
    (folder / "SC4094EC-Hypnogram.edf").write_bytes(bytes(raw))
    expected["SC4094E0"] = "SC4094EC-Hypnogram.edf: unknown stage label(s) ['Sleep stage X']"
    return expected


def test_bad_recordings_are_rejected_and_good_ones_written(ray_local, synth_cohort, tmp_path):
    """Corrupt, non-EDF, channel-less and unknown-label nights are rejects with exact reasons;
    the good nights are written; exit code 2."""
    cohort = synth_cohort("sleep-edf", n_nights=4, hours=1.0)
    folder = copy_cohort(cohort, tmp_path / "cohort")
    (folder / "manifest.csv").unlink()  # prepare the folder: discovery pairs the files
    expected = write_bad_recordings(folder, cohort.entries[0])
    result = prepare_cohort(str(folder), cohort.profile, str(tmp_path / "out"), num_workers=2,
                            progress=False)
    assert result.exit_code == 2
    assert (result.prepared, result.rejected) == (4, 4)
    reasons = {r["recording_id"]: r["reason"] for r in result.rejects}
    assert sorted(reasons) == sorted(expected)
    for rid, fragment in expected.items():
        assert fragment in reasons[rid], (rid, reasons[rid])
    doc = PreparedDataset.open(result.dataset_uri).manifest
    assert {r["recording_id"]: r["reason"] for r in doc["rejected"]} == reasons
    ds = Path(resolve(result.dataset_uri).path)
    assert sorted(p.stem for p in (ds / "recordings").glob("*.parquet")) == sorted(
        e.recording_id for e in cohort.entries)
    for rid in expected:
        reject = json.loads((ds / "rejects" / f"{rid}.json").read_text())
        assert reject["reason"] == reasons[rid]
