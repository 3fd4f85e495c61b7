"""The domain-shift check (somnray.scoring.domain): each comparison, its reason and its thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from somnray.core.errors import ConfigError
from somnray.scoring.domain import (CHECKS, DomainCheck, DomainThresholds, NightSummary, TrainingDomain,
                                    check_night)

#: Mean and spread of the training epochs' band shares (an EEG-like 1/f spectrum).
MEAN = {"delta": 0.7, "theta": 0.15, "alpha": 0.07, "sigma": 0.03, "beta": 0.05}
SPREAD = {"delta": 0.2, "theta": 0.1, "alpha": 0.08, "sigma": 0.03, "beta": 0.05}
PROFILE = {"name": "lab", "normalization": "zscore",
           "channels": {"eeg": {"aliases": ["C4-A1", "C4-M1"], "band": [0.3, 35.0],
                                "fallbacks": [{"aliases": ["C3"], "reference": ["A2"]}]}}}


def _training(reading: bool = True, amplitude: bool = True, profile: bool = True) -> TrainingDomain:
    eeg: dict = {"n_epochs": 500, "relative_band_power": MEAN, "relative_band_power_std": SPREAD}
    if reading:
        eeg["reading"] = {"n_recordings": 20, "native_sfreq": [100.0, 125.0], "signals": ["C4-A1"],
                          "bands": [[0.3, 35.0]], "units": ["uV"]}
    if amplitude:
        eeg["amplitude"] = {"statistic": "std", "unit": "uV", "n_recordings": 20,
                            "quantiles": {"0.01": 20.0, "0.05": 22.0, "0.5": 30.0, "0.95": 40.0, "0.99": 45.0}}
    return TrainingDomain(profile=PROFILE if profile else None, summary={"eeg": eeg})


def _night(rate=100.0, label="C4-A1", reference=None, band=(0.3, 35.0), scale=31.0, unit="uV",
           normalization="zscore", shares=None) -> NightSummary:
    facts = {"label": label, "native_sfreq": rate, "unit": unit, "band": list(band) if band else None}
    if reference:
        facts["reference"] = reference
    info = {"channels": {"eeg": facts}, "normalization": normalization,
            "amplitude": {"eeg": {"scale": scale, "unit": unit, "statistic": "std"}}}
    return NightSummary(info=info, band_power={"eeg": dict(shares or MEAN)})


def _by_check(result: DomainCheck) -> dict[str, str]:
    return {c.check: c.status for c in result.checks}


def test_a_night_like_the_training_ones_is_quiet():
    """Same rate, signal, band, normalisation, an amplitude near the median and training band shares:
    every check ok, no flag, no reason, nothing skipped."""
    result = check_night(_night(), _training(), ["eeg", "eog"])
    assert not result.flag and result.reasons == [] and result.skipped == []
    assert _by_check(result) == {c: "ok" for c in CHECKS}
    assert [c.check for c in result.checks] == list(CHECKS)  # eog absent from the night: not compared


def test_each_reading_difference_is_a_reason():
    """Another rate, derivation, band-pass and normalisation each flag the night with their own reason."""
    result = check_night(_night(rate=200.0, label="Fpz-Cz", band=(0.5, 30.0), normalization="robust"),
                         _training(), ["eeg"])
    assert result.flag and result.reasons == [
        "signals normalised with 'robust'; training with 'zscore'",
        "eeg sampled at 200 Hz; training saw 100, 125 Hz",
        "eeg derivation Fpz-Cz vs training C4-A1",
        "eeg band-pass 0.5-30 Hz vs training 0.3-35 Hz",
    ]
    unfiltered = check_night(_night(band=None), _training(), ["eeg"])
    assert unfiltered.reasons == ["eeg band-pass none vs training 0.3-35 Hz"]


@pytest.mark.parametrize("scale, flagged", [(300.0, True), (6.0, True), (110.0, False), (8.0, False)])
def test_amplitude_outside_the_training_range_by_the_factor(scale, flagged):
    """Above the 99th percentile ×3 (135 µV) or below the 1st ÷3 (6.7 µV) flags; inside does not."""
    result = check_night(_night(scale=scale), _training(), ["eeg"])
    (amp,) = [c for c in result.checks if c.check == "amplitude"]
    assert result.flag is flagged and amp.status == ("shift" if flagged else "ok")
    assert amp.value == pytest.approx(scale / 30.0, rel=1e-3) and amp.limit == 3.0
    if scale == 300.0:
        assert result.reasons == ["eeg amplitude 10× the training median (300 µV; training 1st-99th "
                                  "percentile 20-45 µV over 20 night(s), limit ×3 beyond)"]


def test_amplitude_in_millivolts_is_compared_in_microvolts():
    """A night recorded in mV at the training amplitude is quiet; a µV label on mV numbers is not."""
    assert not check_night(_night(scale=0.031, unit="mV"), _training(), ["eeg"]).flag
    assert check_night(_night(scale=0.031, unit="uV"), _training(), ["eeg"]).flag


def test_a_noise_channel_moves_the_band_powers():
    """White noise's band shares (proportional to band width) lie far from the EEG's: the distance
    (RMS z over the bands) exceeds 2 and the reason names the two worst bands."""
    noise = {"delta": 3.5 / 29.5, "theta": 4 / 29.5, "alpha": 4 / 29.5, "sigma": 4 / 29.5, "beta": 14 / 29.5}
    result = check_night(_night(shares=noise), _training(), ["eeg"])
    (bp,) = [c for c in result.checks if c.check == "band_power"]
    z = [(noise[b] - MEAN[b]) / SPREAD[b] for b in MEAN]
    assert bp.status == "shift" and bp.value == pytest.approx(np.sqrt(np.mean(np.square(z))), rel=1e-3)
    assert result.reasons == [bp.detail] and "beta 0.47 vs 0.05" in bp.detail and "sigma 0.14 vs 0.03" in bp.detail


def test_old_bundles_skip_what_they_do_not_record():
    """A bundle without profile or summary flags nothing and says why each check was skipped; with
    a profile but no recorded reading, the signal and band come from the profile's channel."""
    bare = check_night(_night(rate=200.0, scale=3000.0), TrainingDomain(), ["eeg"])
    assert not bare.flag and set(_by_check(bare).values()) == {"skipped"}
    assert "amplitude (eeg): the bundle records no training amplitude scale" in bare.skipped
    assert "normalization: the bundle records no training profile" in bare.skipped
    older = check_night(_night(label="C3", reference="A2"), _training(reading=False, amplitude=False), ["eeg"])
    assert _by_check(older) == {"normalization": "ok", "native_sfreq": "skipped", "signal": "ok", "band": "ok",
                                "amplitude": "skipped", "band_power": "ok"}
    other = check_night(_night(label="Fpz-Cz"), _training(reading=False), ["eeg"])
    assert other.reasons == ["eeg derivation Fpz-Cz vs the training profile maps C4-A1, C4-M1, C3 - A2"]


def test_ignored_checks_are_reported_but_never_flag():
    """ignore=native_sfreq keeps the finding (status shift, ignored) out of the flag and reasons."""
    result = check_night(_night(rate=256.0), _training(), ["eeg"], DomainThresholds(ignore=("native_sfreq",)))
    (rate,) = [c for c in result.checks if c.check == "native_sfreq"]
    assert rate.status == "shift" and rate.ignored and not result.flag and result.reasons == []


def test_thresholds_parse_validate_and_round_trip():
    """KEY=VALUE options and mappings give thresholds; bad keys and values are ConfigErrors listing
    each problem; a check survives to_dict/from_dict."""
    t = DomainThresholds.parse(["amplitude_factor=5", "ignore=band, native_sfreq"])
    assert t == DomainThresholds(amplitude_factor=5.0, ignore=("band", "native_sfreq"))
    assert DomainThresholds.from_mapping(t.to_dict()) == t
    with pytest.raises(ConfigError) as info:
        DomainThresholds.parse(["amplitude_factor=big", "nonsense"])
    assert len(info.value.errors) == 2
    with pytest.raises(ConfigError, match="unknown key"):
        DomainThresholds.from_mapping({"colour": 1})
    with pytest.raises(ConfigError, match="amplitude_factor must be a number >= 1"):
        DomainThresholds(amplitude_factor=0.5)
    with pytest.raises(ConfigError, match="unknown check"):
        DomainThresholds(ignore=("spectrum",))
    result = check_night(_night(scale=300.0), _training(), ["eeg"], t)
    back = DomainCheck.from_dict(result.to_dict())
    assert back == result and back.to_dict()["reasons"] == result.reasons


def test_night_summary_reads_band_powers_of_available_epochs():
    """NightSummary.of: a 10-Hz sine puts the night's power in alpha; unavailable epochs are left
    out and a modality without usable epochs has no band powers."""
    t = np.arange(3000) / 100.0
    x = np.stack([np.sin(2 * np.pi * 10 * t)] * 3 + [np.sin(2 * np.pi * 2 * t)])
    summary = NightSummary.of({}, {"eeg": x, "eog": x, "emg": None},
                              {"eeg": np.array([True, True, True, False]), "eog": np.zeros(4, bool)},
                              ["eeg", "eog", "emg"])
    assert summary.band_power["eeg"]["alpha"] > 0.99 and set(summary.band_power) == {"eeg"}
