"""``somnray prepare`` and ``somnray split``: summaries, exit statuses, last-line URI, clean errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from somnray.core.storage import resolve
from somnray.data.splits import load_splits
from somnray.jobs.cli import main


@pytest.mark.integration
def test_prepare_good_cohort_exit_0_and_split(ray_local, synth_cohort, tmp_path, capsys):
    """A clean cohort exits 0 and prints the dataset URI last; `somnray split` then writes folds."""
    cohort = synth_cohort("sleep-edf", n_nights=4, hours=1.0)
    code = main(["prepare", str(cohort.manifest), "--profile", "sleep-edf", "--out",
                 str(tmp_path / "out"), "--workers", "2", "--limit", "3", "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1].startswith(f"file://{tmp_path}/out/sleep-edf-")
    assert "3 prepared, 0 already prepared, 0 rejected, 1 pending (--limit)" in out[-2]
    dataset = out[-1]

    code = main(["split", dataset, "--kfold", "2", "--val-subjects", "0", "--name", "cv2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out[-1] == f"{dataset}/splits/cv2.json"
    folds = load_splits(out[-1])
    assert len(folds) == 2
    assert sorted(s for f in folds for s in f.test_subjects) == ["SC400", "SC401"]
    assert sorted(r for f in folds for r in f.test) == ["SC4001E0", "SC4002E0", "SC4011E0"]


@pytest.mark.integration
def test_prepare_with_rejects_exit_2(ray_local, synth_cohort, tmp_path, capsys):
    """A cohort with a non-EDF night exits 2, lists the reject with its reason, URI last."""
    cohort = synth_cohort("sleep-edf", n_nights=4, hours=1.0)
    folder = tmp_path / "cohort"
    folder.mkdir()
    for e in cohort.entries[:1]:
        shutil.copy(cohort.path / e.psg, folder / e.psg)
        shutil.copy(cohort.path / e.hypnogram, folder / e.hypnogram)
    (folder / "SC4092E0-PSG.edf").write_text("plain text\n")
    shutil.copy(cohort.path / cohort.entries[0].hypnogram, folder / "SC4092EC-Hypnogram.edf")
    code = main(["prepare", str(folder), "--profile", "sleep-edf", "--out", f"file://{tmp_path}/o",
                 "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 2
    assert "2 recording(s): 1 prepared, 0 already prepared, 1 rejected" in out[0]
    assert any(line.startswith("  rejected SC4092E0: ") and "SC4092E0-PSG.edf: not an EDF/BDF file" in line
               for line in out)
    assert out[-1].startswith(f"file://{tmp_path}/o/sleep-edf-")
    manifest = json.loads(resolve(out[-1]).join("manifest.json").read_text())
    assert [r["recording_id"] for r in manifest["rejected"]] == ["SC4092E0"]


@pytest.mark.parametrize("args, message", [
    (["--profile", "no-such-profile"], "no-such-profile: 1 problem(s):\n  - no such profile"),
    (["--out", "s3:/bucket/x"], "malformed URI: expected 's3://...'"),
])
def test_fatal_errors_exit_1_without_traceback(tmp_path, capsys, args, message):
    """Unknown profiles and malformed URIs exit 1 with a clear message on stderr, no traceback."""
    (tmp_path / "m.csv").write_text("recording_id,subject_id,psg\nr1,s1,r1.edf\n")
    base = {"--profile": "sleep-edf", "--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["prepare", str(tmp_path / "m.csv")] + [x for kv in base.items() for x in kv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err


def test_malformed_manifest_exit_1_in_subprocess(tmp_path):
    """Run as a real process: a manifest without subject_id exits 1 naming file and column."""
    (tmp_path / "bad.csv").write_text("recording_id,psg\nr1,r1.edf\n")
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-m", "somnray.jobs", "prepare", str(tmp_path / "bad.csv"),
                           "--profile", "sleep-edf", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "bad.csv: 1 problem(s)" in proc.stderr
    assert "missing required column(s) ['subject_id']" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()
