"""Synthetic recording sites (somnray.data.synth.site): the default site changes nothing, site B shifts
amplitude, morphology, bandwidth and population, and the CLI knobs reach the generator."""

from __future__ import annotations

import numpy as np
import pytest

from somnray.data import synth
from somnray.data.synth import SiteConfig, simulate_hypnogram
from somnray.jobs import cli


def _fractions(hyp) -> np.ndarray:
    labels = hyp.aasm[hyp.aasm >= 0]
    return np.bincount(labels, minlength=5) / len(labels)


def test_default_site_draws_the_same_night():
    """simulate_hypnogram with the default site's population equals the call without it."""
    a = simulate_hypnogram(960, 3)
    b = simulate_hypnogram(960, 3, n3_scale=1.0, fragmentation=0.0)
    assert np.array_equal(a.rk, b.rk)


def test_site_b_population_has_less_n3_and_more_awakenings():
    """Over 20 nights, site B's N3 share drops below half of site A's and its wake bouts multiply."""
    b = synth.SITE_PRESETS["b"]
    a_n3, b_n3, a_bouts, b_bouts = [], [], 0, 0
    for seed in range(20):
        ha = simulate_hypnogram(960, seed)
        hb = simulate_hypnogram(960, seed, n3_scale=b.n3_scale, fragmentation=b.fragmentation)
        a_n3.append(_fractions(ha)[3])
        b_n3.append(_fractions(hb)[3])
        a_bouts += int(np.sum((ha.aasm[1:] == 0) & (ha.aasm[:-1] > 0)))
        b_bouts += int(np.sum((hb.aasm[1:] == 0) & (hb.aasm[:-1] > 0)))
    assert np.mean(b_n3) < 0.5 * np.mean(a_n3)
    assert b_bouts > 3 * a_bouts


def test_site_b_records_eeg_smaller_noisier_and_band_limited(tmp_path):
    """Same seed, site A vs B: B's EEG has a lower RMS and almost no power above its 30-Hz low-pass."""
    import edfio

    out = {}
    for name in ("a", "b"):
        entries = synth.synthesize_cohort("sleep-edf", tmp_path / name, 1, seed=4, hours=0.5,
                                          site=SiteConfig.preset(name))
        edf = edfio.read_edf(tmp_path / name / entries[0].psg)
        out[name] = next(s.data for s in edf.signals if s.label == "EEG Fpz-Cz")

    def high_share(x):
        p = np.abs(np.fft.rfft(x - x.mean())) ** 2
        f = np.fft.rfftfreq(len(x), 0.01)
        return p[f > 35].sum() / p[(f > 0.5)].sum()

    assert np.sqrt(np.mean(out["b"] ** 2)) < 0.8 * np.sqrt(np.mean(out["a"] ** 2))
    assert high_share(out["b"]) < 0.2 * high_share(out["a"])


def test_site_config_refuses_bad_knobs_and_cli_names_them(tmp_path, capsys):
    """A negative gain is refused with the knob named, through the API and as CLI exit 1."""
    with pytest.raises(ValueError, match=r"SiteConfig: gain must be > 0; got -1.0"):
        SiteConfig(gain=-1.0)
    code = cli.main(["synth", "--profile", "sleep-edf", "--nights", "1", "--hours", "0.5", "--out",
                     str(tmp_path), "--site", "b", "--site-gain", "-1"])
    assert code == 1 and "SiteConfig: gain must be > 0; got -1.0" in capsys.readouterr().err


def test_cli_site_preset_and_knobs_reach_the_generator(tmp_path, capsys):
    """--site b --site-n3-scale 0 writes nights with a fraction of site A's N3; the summary names the site."""
    import csv

    def n3_seconds(folder):
        return sum(float(row["duration"]) for f in folder.glob("*-hypnogram.csv")
                   for row in csv.DictReader(f.open()) if row["stage"] == "N3")

    base = ["synth", "--profile", "generic", "--nights", "3", "--hours", "3"]
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--site", "b", "--site-n3-scale", "0"]) == 0
    assert "site b with --site-* changes" in capsys.readouterr().out
    assert n3_seconds(tmp_path / "b") < 0.34 * n3_seconds(tmp_path / "a")
    from somnray.jobs import cmd_synth

    assert set(cmd_synth.SITES) == set(synth.SITE_PRESETS)
