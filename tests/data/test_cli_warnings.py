"""``somnray prepare`` prints every warning a recording got, not only manifest.json."""

from __future__ import annotations

import pytest
from psg_factory import sine, write_edf

from somnray.jobs.cli import main

PROFILE = """\
name: clinic
channels:
  eeg: {aliases: ["C4-M1"], required: true}
  eog: {aliases: ["E1-M2"], required: true}
  emg: {aliases: ["Chin"], required: false}
annotations:
  format: csv
  table_layout: epochs
  label_period: 20
  label_map: {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4}
trimming: {rule: none}
pairing: {psg_glob: "*.edf", key_regex: '^(.+)\\.', subject_regex: '^(.+)\\.'}
"""


@pytest.mark.integration
def test_prepare_prints_each_recordings_warnings(ray_local, tmp_path, capsys):
    """Labels 40 s past the signal and an absent EMG: exit 0, both warnings on stderr after the run."""
    for night in ("n1", "n2"):
        write_edf(tmp_path / f"{night}.edf", {"C4-M1": (sine(10, 50, 120, seed=1), 50.0),
                                              "E1-M2": (sine(0.5, 50, 120, seed=2), 50.0)})
    (tmp_path / "n1.csv").write_text("stage\n" + "W\n" * 8)  # 160 s of 20-s labels on 120 s
    (tmp_path / "n2.csv").write_text("stage\n" + "N2\n" * 6)
    (tmp_path / "clinic.yaml").write_text(PROFILE)
    (tmp_path / "manifest.csv").write_text("recording_id,subject_id,psg,hypnogram\n"
                                           "n1,s1,n1.edf,n1.csv\nn2,s2,n2.edf,n2.csv\n")
    code = main(["prepare", str(tmp_path / "manifest.csv"), "--profile", str(tmp_path / "clinic.yaml"),
                 "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "2 recording(s): 2 prepared, 0 already prepared, 0 rejected" in captured.out
    absent = ("optional channel 'emg' not found: no signal matches its aliases ['Chin']; the file "
              "has signals ['C4-M1', 'E1-M2']; the modality is absent")
    err = captured.err.splitlines()  # Ray's own log lines may come before or after ours
    first = err.index("3 warning(s) in 2 recording(s):")
    assert err[first:first + 4] == [
        "3 warning(s) in 2 recording(s):",
        f"  warning n1: {absent}",
        "  warning n1: the hypnogram runs 40 s past the end of the signal "
        "(4 epochs); the labels beyond the signal were dropped",
        f"  warning n2: {absent}"]
