"""``somnray score`` with a manifest: its lights times drive the statistics, warnings are printed."""

from __future__ import annotations

import json

import edfio
import numpy as np
import pytest
from scoring_factory import make_run  # tests/serve on sys.path

from somnray.jobs.cli import main


def _night_with_a_repeated_label(path):
    """300 s of Sleep-EDF-like EEG and EOG, the EOG label written twice (a reader warning)."""
    rng = np.random.default_rng(0)
    signals = [edfio.EdfSignal(rng.normal(0, 20, 30_000), 100, label=label, physical_dimension="uV",
                               physical_range=(-500, 500))
               for label in ("EEG Fpz-Cz", "EOG horizontal", "EOG horizontal")]
    edfio.Edf(signals).write(path)


@pytest.mark.integration
def test_score_uses_lights_and_prints_warnings(ray_local, tmp_path, capsys):
    """lights_off/on of a manifest row bound the night's statistics; the night's warning is on stderr."""
    _night_with_a_repeated_label(tmp_path / "night.edf")
    (tmp_path / "manifest.csv").write_text(
        "recording_id,subject_id,psg,lights_off,lights_on\nnight1,s1,night.edf,60,240\n")
    out = tmp_path / "scored"
    code = main(["score", str(make_run(tmp_path / "run")), str(tmp_path / "manifest.csv"),
                 "--out", str(out), "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    doc = json.loads((out / "night1" / "night1_sleep_stats.json").read_text())
    assert (doc["lights_off_s"], doc["lights_on_s"]) == (60.0, 240.0)
    assert doc["stats"]["n_tib_epochs"] == 6  # 60-240 s of the 10-epoch night
    err = captured.err.splitlines()  # Ray's own log lines may come before or after ours
    first = err.index("1 warning(s) in 1 recording(s):")
    assert err[first:first + 2] == [
        "1 warning(s) in 1 recording(s):",
        "  warning night1: signal label 'EOG horizontal' appears more than once; the first one "
        "is used"]
