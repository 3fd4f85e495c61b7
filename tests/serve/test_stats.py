"""Sleep statistics against values computed by hand on short hypnograms (30-s epochs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from somnray.core.errors import ConfigError
from somnray.serve.stats import SleepStats, compute_sleep_stats, stage_name, timeline

W, N1, N2, N3, R, U = 0, 1, 2, 3, 4, -1


def test_basic_night_by_hand():
    """Every statistic of W W N1 N2 N2 W N2 R R W matches the hand computation."""
    s = compute_sleep_stats([W, W, N1, N2, N2, W, N2, R, R, W])
    assert s.n_tib_epochs == 10 and s.n_scored_epochs == 10 and s.n_unscored_epochs == 0
    assert s.tib_min == 5.0
    assert s.tst_min == 3.0                       # 6 sleep epochs
    assert s.sleep_efficiency_pct == pytest.approx(60.0)
    assert s.sol_min == 1.0                       # onset at epoch 2
    assert s.sleep_onset_epoch == 2 and s.final_awakening_epoch == 8
    assert s.spt_min == 3.5                       # epochs 2..8
    assert s.waso_min == 0.5                      # epoch 5; the final W is after the last sleep
    assert s.rem_latency_min == 2.5               # epoch 7 - epoch 2
    assert s.n_awakenings == 1
    assert s.n_stage_shifts == 6
    assert (s.wake_min, s.n1_min, s.n2_min, s.n3_min, s.rem_min) == (2.0, 0.5, 1.5, 0.0, 1.0)
    assert s.n1_pct == pytest.approx(100 / 6)
    assert s.n2_pct == pytest.approx(50.0)
    assert s.n3_pct == 0.0
    assert s.rem_pct == pytest.approx(100 / 3)
    assert s.lps_min is None                      # no 10-min run of sleep in 5 min


def test_persistent_sleep_latency_run_length():
    """LPS is the start of the first run of N consecutive sleep epochs, None when there is none."""
    seq = [W, W, N1, N2, N2, W, N2, R, R, W]
    assert compute_sleep_stats(seq, persistent_sleep_epochs=3).lps_min == 1.0
    assert compute_sleep_stats(seq, persistent_sleep_epochs=4).lps_min is None
    late = [W, N1, W, N2, N2, N2, N2]
    assert compute_sleep_stats(late, persistent_sleep_epochs=4).lps_min == 1.5
    assert compute_sleep_stats(late, persistent_sleep_epochs=4).sol_min == 0.5


def test_unscored_epochs_are_excluded_and_counted():
    """Unscored epochs count as clock time for TIB/latencies, but not as sleep, wake or efficiency."""
    s = compute_sleep_stats([W, U, N2, U, N2, W, U, W, N2, R, U])
    assert s.n_tib_epochs == 11 and s.n_unscored_epochs == 4 and s.n_scored_epochs == 7
    assert s.tib_min == 5.5 and s.unscored_min == 2.0
    assert s.tst_min == 2.0 and s.wake_min == 1.5
    assert s.tib_min == s.tst_min + s.wake_min + s.unscored_min
    assert s.sleep_efficiency_pct == pytest.approx(400 / 7)  # 4 sleep of 7 scored epochs
    assert s.sol_min == 1.0                       # the unscored epoch 1 is still clock time
    assert s.spt_min == 4.0                       # epochs 2..9
    assert s.waso_min == 1.0                      # W at 5 and 7; the unscored 3 and 6 are not wake
    assert s.rem_latency_min == 3.5
    assert s.n_awakenings == 1                    # W ? W is one awakening
    assert s.n_stage_shifts == 4                  # W N2 N2 W W N2 R
    assert s.lps_min is None
    assert compute_sleep_stats([W, U, N2, U, N2, W], persistent_sleep_epochs=2).lps_min == 1.0


def test_unscored_gap_inside_sleep_is_no_awakening():
    """N2 ? N2 neither wakes the sleeper nor shifts the stage."""
    s = compute_sleep_stats([N2, U, U, N2])
    assert s.n_awakenings == 0 and s.n_stage_shifts == 0 and s.waso_min == 0.0


def test_min_awakening_epochs():
    """Awakenings shorter than the minimum run are not counted (unscored epochs do not break a run)."""
    seq = [N2, W, N2, W, U, W, N2, W, W, W, N2]
    assert compute_sleep_stats(seq).n_awakenings == 3
    assert compute_sleep_stats(seq, min_awakening_epochs=2).n_awakenings == 2
    assert compute_sleep_stats(seq, min_awakening_epochs=3).n_awakenings == 1
    assert compute_sleep_stats(seq, min_awakening_epochs=4).n_awakenings == 0


def test_no_sleep():
    """A night of wake has TST 0, efficiency 0 and every latency/percentage undefined."""
    s = compute_sleep_stats([W, W, W, U])
    assert s.tst_min == 0.0 and s.sleep_efficiency_pct == 0.0
    for key in ("sol_min", "lps_min", "waso_min", "rem_latency_min", "spt_min", "n1_pct",
                "n2_pct", "n3_pct", "rem_pct", "sleep_onset_epoch", "final_awakening_epoch"):
        assert getattr(s, key) is None, key
    assert s.n_awakenings == 0 and s.wake_min == 1.5


def test_all_sleep():
    """A night asleep from the first to the last epoch: SOL 0, WASO 0, efficiency 100 %."""
    s = compute_sleep_stats([N2, N2, N3, N3, R, R])
    assert s.sol_min == 0.0 and s.waso_min == 0.0 and s.sleep_efficiency_pct == 100.0
    assert s.rem_latency_min == 2.0 and s.n_awakenings == 0 and s.n_stage_shifts == 2
    assert s.spt_min == s.tst_min == s.tib_min == 3.0


def test_rem_never_reached():
    """Without REM the REM latency is None while REM minutes/percent are a defined zero."""
    s = compute_sleep_stats([W, N1, N2, N3, N2, W])
    assert s.rem_latency_min is None and s.rem_min == 0.0 and s.rem_pct == 0.0
    assert s.n3_pct == 25.0


def test_all_unscored_and_empty():
    """With nothing scored, efficiency is undefined rather than zero; an empty night is all zeros."""
    s = compute_sleep_stats([U, U])
    assert s.sleep_efficiency_pct is None and s.tib_min == 1.0 and s.unscored_min == 1.0
    e = compute_sleep_stats([])
    assert e.tib_min == 0.0 and e.sleep_efficiency_pct is None and e.sol_min is None


def test_lights_off_and_on_select_epochs():
    """Lights-off/on restrict TIB; latencies count from lights-off; epochs stay input positions."""
    seq = [W, W, W, N2, N2, W, W]
    s = compute_sleep_stats(seq, lights_off_s=60, lights_on_s=150)
    assert s.n_tib_epochs == 3 and s.tib_min == 1.5
    assert s.sol_min == 0.5 and s.sleep_onset_epoch == 3 and s.final_awakening_epoch == 4
    assert s.sleep_efficiency_pct == pytest.approx(200 / 3)


def test_other_epoch_length():
    """Minutes scale with epoch_s (20-s epochs of older R&K scorings)."""
    s = compute_sleep_stats([W, N2, N2], epoch_s=20)
    assert s.tst_min == pytest.approx(40 / 60) and s.sol_min == pytest.approx(20 / 60)


@pytest.mark.parametrize("stages, kwargs, fragment", [
    ([0, 5], {}, "-1..4"),
    ([0.0, 1.0], {}, "integer"),
    ([[0, 1]], {}, "1-D"),
    ([0, 1], {"epoch_s": 0}, "epoch_s"),
    ([0, 1], {"lights_off_s": 60, "lights_on_s": 30}, "before lights_off_s"),
    ([0, 1], {"min_awakening_epochs": 0}, "min_awakening_epochs"),
])
def test_bad_input_is_rejected(stages, kwargs, fragment):
    """Invalid codes, shapes and parameters raise ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=fragment):
        compute_sleep_stats(stages, **kwargs)


def test_to_dict_is_json_ready_and_round_trips():
    """to_dict holds plain JSON values with units in the key names; from_dict reads it back."""
    s = compute_sleep_stats(np.array([W, N1, N2, R, W], dtype=np.int8))
    d = s.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "tst_min" in d and "sleep_efficiency_pct" in d and "rem_latency_min" in d
    assert all(isinstance(v, (int, float, type(None))) for v in d.values())
    back = SleepStats.from_dict(json.loads(text))
    assert back.to_dict() == d and back.tst_min == s.tst_min
    assert back.n1_pct == pytest.approx(s.n1_pct, abs=1e-6)  # rounded to 6 decimals on output
    with pytest.raises(ConfigError, match="missing key"):
        SleepStats.from_dict({"tst_min": 1.0})


def test_timeline_fills_gaps_with_unscored():
    """Epochs missing from epoch_index (trimmed, never scored) become -1 on the contiguous grid."""
    out = timeline(np.array([2, 3, 6]), np.array([N2, R, W]))
    assert out.tolist() == [U, U, N2, R, U, U, W]
    assert timeline(np.array([], dtype=int), np.array([], dtype=int)).size == 0


def test_stage_names():
    """Codes map to the short names used in every output."""
    assert [stage_name(c) for c in (W, N1, N2, N3, R, U)] == ["W", "N1", "N2", "N3", "REM", "UNS"]
