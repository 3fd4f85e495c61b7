"""``somnray score`` end to end: exit codes, the listed rejects, the last line."""

from __future__ import annotations

import json

import pytest
from scoring_factory import copy_cohort, identifying_hits, make_run, truncate  # tests/serve on sys.path

from somnray.data.synth import SYNTH_IDENTIFYING_STRINGS
from somnray.jobs.cli import main


@pytest.mark.integration
def test_cohort_with_a_corrupt_file_exits_2(ray_local, synth_cohort, tmp_path, capsys):
    """One truncated EDF: the others are scored, the reject is listed, exit 2, last line = out URI."""
    cohort = synth_cohort("sleep-edf", n_nights=3, hours=1.0, seed=5)
    src = copy_cohort(cohort.path, tmp_path / "cohort")
    bad = cohort.entries[1]
    truncate(src / bad.psg)
    run = make_run(tmp_path / "run")
    out = tmp_path / "scored"
    code = main(["score", str(run), str(src / "manifest.csv"), "--out", str(out), "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 2
    assert lines[-1] == f"file://{out}"
    assert any(l.strip().startswith(f"rejected {bad.recording_id}:") and "truncated" in l for l in lines)
    for e in cohort.entries:
        doc = json.loads((out / e.recording_id / f"{e.recording_id}_sleep_stats.json").read_text())
        assert doc["status"] == ("rejected" if e is bad else "ok")
    assert not (out / bad.recording_id / f"{bad.recording_id}_hypnogram.csv").exists()
    assert identifying_hits(out, SYNTH_IDENTIFYING_STRINGS) == []


def test_missing_model_is_a_fatal_error(tmp_path, capsys):
    """No bundle at RUN_URI: exit 1 with a message naming the URI, nothing written."""
    edf = tmp_path / "x.edf"
    edf.write_bytes(b"0" * 300)
    code = main(["score", str(tmp_path / "no-run"), str(edf), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "no model bundle" in err and "no-run" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_channel_map_option_names_the_signals(ray_local, synth_cohort, tmp_path, capsys):
    """--channel-map picks the fallback EEG and a derived EOG; the statistics name both."""
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0)
    night = cohort.path / cohort.entries[0].psg
    out = tmp_path / "scored"
    code = main(["score", str(make_run(tmp_path / "run")), str(night), "--out", str(out), "--no-progress",
                 "--channel-map", "eeg=C4-A1,EEG Pz-Oz",
                 "--channel-map", '{"eog": {"signal": "EOG horizontal", "reference": "EEG Fpz-Cz"}}'])
    assert code == 0, capsys.readouterr()
    (stats,) = out.glob("*/*_sleep_stats.json")
    doc = json.loads(stats.read_text())
    assert doc["modalities"]["channels"] == {"eeg": "EEG Pz-Oz", "eog": "EOG horizontal - EEG Fpz-Cz"}


def test_malformed_channel_map_option_is_one_message(tmp_path, capsys):
    """A --channel-map value in neither form exits 1 naming the option and the value."""
    code = main(["score", str(tmp_path / "run"), str(tmp_path / "x.edf"), "--out", str(tmp_path / "o"),
                 "--channel-map", "eeg"])
    assert code == 1
    assert capsys.readouterr().err == (
        "somnray score: error: --channel-map: 1 problem(s):\n  - 'eeg': expected "
        "MODALITY=LABEL[,LABEL...] such as eeg=C4-A1,C3-A2, or a JSON object\n")
