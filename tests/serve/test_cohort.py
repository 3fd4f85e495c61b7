"""Cohort scoring on Ray Data: inputs, rejects, resuming after a crash, object storage."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from scoring_factory import TEST_LENGTH, copy_cohort, identifying_hits, make_run  # tests/serve is on sys.path

from somnray.core import storage
from somnray.core.errors import ConfigError
from somnray.data.profiles import load_profile
from somnray.data.synth import SYNTH_IDENTIFYING_STRINGS
from somnray.scoring.bundles import weights_sha256
from somnray.serve.cohort import FAULT_ENV, collect_entries, score_cohort
from somnray.serve.config import CohortScoringOptions
from somnray.serve.outputs import OUTPUT_SUFFIXES, read_stats_documents

N_NIGHTS = 3


@pytest.fixture(scope="module")
def cohort(synth_cohort):
    """Three 1-h synthetic Sleep-EDF nights (read-only)."""
    return synth_cohort("sleep-edf", n_nights=N_NIGHTS, hours=1.0, seed=5)


def _ids(cohort):
    return sorted(e.recording_id for e in cohort.entries)


# -- inputs (no Ray) -----------------------------------------------------------------------------
def test_collect_entries_from_files_folders_and_manifests(cohort):
    """A folder, its manifest and a single file all name the same recordings by manifest id."""
    prof = load_profile("sleep-edf")
    from_folder = collect_entries(str(cohort.path), prof)
    from_manifest = collect_entries(str(cohort.manifest), prof)
    assert [e.recording_id for e in from_folder] == [e.recording_id for e in from_manifest] == _ids(cohort)
    one = cohort.path / cohort.entries[0].psg
    [single] = collect_entries(str(one), prof)
    assert single.recording_id == cohort.entries[0].recording_id and single.psg.endswith(one.name)


def test_collect_entries_reports_every_problem(cohort, tmp_path):
    """Missing inputs, unknown file types and repeated ids are listed together."""
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError) as err:
        collect_entries([str(tmp_path / "nope.edf"), str(tmp_path / "notes.txt"),
                         str(cohort.manifest), str(cohort.path)], load_profile("sleep-edf"))
    text = str(err.value)
    assert "no such file or folder" in text and "not a recording" in text and "repeats" in text


# -- on Ray --------------------------------------------------------------------------------------
def _output_sets(out) -> dict[str, list[str]]:
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(out.iterdir()) if d.is_dir()}


_CRASHING_DRIVER = """
import sys, ray
from somnray.serve.cohort import score_cohort
from somnray.serve.config import CohortScoringOptions
ray.init(address=sys.argv[1], configure_logging=False)
score_cohort(sys.argv[2], sys.argv[3], sys.argv[4], CohortScoringOptions(workers=1, progress=False))
"""


@pytest.mark.integration
def test_crash_midway_then_rerun_writes_each_night_once(ray_local, run_dir, cohort, tmp_path,
                                                        monkeypatch):
    """A driver dying after one night leaves it complete; the rerun skips it and completes the rest.

    The first run is a separate driver process on the session cluster that crashes, as a
    ``somnray score`` process would: its actors die with it and the rerun starts clean.
    """
    import subprocess
    import sys

    import ray

    out = tmp_path / "scored"
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_DRIVER, ray_local.address, str(run_dir), str(cohort.manifest),
         str(out)], capture_output=True, text=True, timeout=600, env={**os.environ, FAULT_ENV: "1"})
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr, crashed.stderr[-3000:]
    done = [d for d in read_stats_documents(str(out)) if d["status"] == "ok"]
    assert len(done) == 1
    # Ray frees a dead driver's actors shortly after it exits.
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"] - 1e-6:
        assert time.monotonic() < deadline, f"CPUs still held after the crash: {ray.available_resources()}"
        time.sleep(0.5)

    monkeypatch.delenv(FAULT_ENV, raising=False)  # the crash ran in its own process
    calls = []
    result = score_cohort(str(run_dir), str(cohort.manifest), str(out),
                          CohortScoringOptions(workers=1, progress=False,
                                               progress_callback=lambda *a: calls.append(a)))
    assert (result.total, result.skipped, result.scored, result.rejected) == (N_NIGHTS, 1, N_NIGHTS - 1, 0)
    assert result.exit_code == 0
    assert calls[0] == (1, 0, N_NIGHTS) and calls[-1] == (N_NIGHTS, 0, N_NIGHTS)
    sets = _output_sets(out)
    assert sorted(sets) == _ids(cohort)
    for rid, names in sets.items():  # exactly one output set, no leftovers of the crash
        expected = sorted(f"{rid}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items() if kind != "plot")
        assert names == expected
    summary = (out / "cohort_summary.csv").read_text().splitlines()
    assert len(summary) == N_NIGHTS + 1
    assert identifying_hits(out, SYNTH_IDENTIFYING_STRINGS) == []


@pytest.mark.integration
def test_rerun_with_other_weights_rescores_and_records_lineage(ray_local, run_dir, cohort, tmp_path):
    """A rerun skips nights its model scored; another model's rerun re-scores them, counted, with lineage."""
    out, night = tmp_path / "scored", cohort.path / cohort.entries[0].psg
    rid = cohort.entries[0].recording_id
    options = CohortScoringOptions(workers=1, progress=False)
    first = score_cohort(str(run_dir), str(night), str(out), options)
    again = score_cohort(str(run_dir), str(night), str(out), options)
    assert (first.scored, first.rescored) == (1, 0)
    assert (again.skipped, again.scored, again.rescored) == (1, 0, 0)

    other = make_run(tmp_path / "other", seed=1)
    third = score_cohort(str(other), str(night), str(out), options)
    assert (third.skipped, third.scored, third.rescored) == (0, 1, 1)
    doc = json.loads((out / rid / f"{rid}_sleep_stats.json").read_text())
    assert doc["model"]["weights_sha256"] == weights_sha256(other / "model") != weights_sha256(run_dir / "model")
    assert doc["model"]["registered_model"] is None
    assert doc["lineage"]["input_sha256"] == hashlib.sha256(night.read_bytes()).hexdigest()
    assert doc["lineage"]["stride"] == TEST_LENGTH and doc["lineage"]["training_dataset"] is None


@pytest.mark.integration
def test_cohort_to_s3(ray_local, s3_server, run_dir, cohort, tmp_path):
    """A single EDF scored onto an S3-compatible store: night outputs, PNGs and the summary."""
    bucket = s3_server.make_bucket()
    src = copy_cohort(cohort.path, tmp_path / "cohort")
    result = score_cohort(str(run_dir), str(src / cohort.entries[0].psg), f"{bucket}/scored",
                          CohortScoringOptions(progress=False, plots=True))
    assert (result.scored, result.rejected) == (1, 0)
    rid = cohort.entries[0].recording_id
    root = storage.resolve(f"{bucket}/scored")
    doc = json.loads(root.join(rid, f"{rid}_sleep_stats.json").read_text())
    assert doc["status"] == "ok" and doc["n_epochs"] == 120
    assert root.join(rid, f"{rid}_hypnogram.png").exists()
    assert root.join("cohort_summary.parquet").exists() and root.join("cohort_summary.png").exists()
