"""Training-signal summaries (somnray.data.signal_summary): RMS quantiles and relative band powers."""

from __future__ import annotations

import numpy as np
import pytest

from somnray.data.signal_summary import summarize_epochs, summarize_modalities, summarize_reading, to_microvolts


def test_a_10_hz_sine_puts_its_power_in_alpha():
    """Epochs of a 10-Hz sine: alpha holds ~all the power, RMS is amplitude/sqrt(2)."""
    t = np.arange(3000) / 100.0
    epochs = np.stack([a * np.sin(2 * np.pi * 10 * t) for a in (1.0, 2.0, 3.0)])
    s = summarize_epochs(epochs)
    assert s["n_epochs"] == 3 and s["relative_band_power"]["alpha"] > 0.99
    assert s["rms_quantiles"]["0.5"] == pytest.approx(2 / np.sqrt(2), rel=1e-3)
    assert sum(s["relative_band_power"].values()) == pytest.approx(1.0)


def test_flat_epochs_have_no_band_shares_and_bad_shapes_are_refused():
    """Flat epochs give None band shares (no NaN in JSON); a 1-D array is a ValueError naming the shape."""
    s = summarize_modalities({"eeg": np.zeros((4, 3000)), "eog": np.zeros((0, 3000))})
    assert set(s) == {"eeg"} and s["eeg"]["relative_band_power"]["delta"] is None
    with pytest.raises(ValueError, match=r"got shape \(3000,\)"):
        summarize_epochs(np.zeros(3000))


def _info(rate, label, scale, unit="uV", band=(0.3, 35.0), reference=None, statistic="std"):
    facts = {"label": label, "native_sfreq": rate, "unit": unit, "band": list(band) if band else None}
    if reference:
        facts["reference"] = reference
    return {"channels": {"eeg": facts}, "amplitude": {"eeg": {"scale": scale, "unit": unit, "statistic": statistic}}}


def test_reading_summary_lists_rates_signals_bands_and_the_amplitude_range():
    """summarize_reading: distinct rates, signals (derivations as 'a - b'), bands and units, and the
    amplitude scale's quantiles over the recordings, mV converted to µV."""
    infos = [_info(100.0, "C4", 20.0), _info(125.0, "C4", 30.0), _info(100.0, "E1", 0.04, unit="mV", reference="E2"),
             {"channels": {}}]
    s = summarize_reading(infos)["eeg"]
    assert s["reading"] == {"n_recordings": 3, "native_sfreq": [100.0, 125.0], "signals": ["C4", "E1 - E2"],
                            "bands": [[0.3, 35.0]], "units": ["mV", "uV"]}
    amp = s["amplitude"]
    assert amp["statistic"] == "std" and amp["unit"] == "uV" and amp["n_recordings"] == 3
    assert amp["quantiles"]["0.5"] == pytest.approx(30.0) and amp["quantiles"]["0.01"] == pytest.approx(20.2)


def test_reading_summary_leaves_out_amplitudes_it_cannot_compare():
    """No amplitude range from a unit that is not a voltage, from mixed statistics, or from
    recordings prepared before the scale was recorded; the reading facts are still there."""
    assert "amplitude" not in summarize_reading([_info(100.0, "C4", 20.0, unit="%")])["eeg"]
    assert "amplitude" not in summarize_reading([_info(100.0, "C4", 20.0),
                                                 _info(100.0, "C4", 20.0, statistic="iqr/1.349")])["eeg"]
    old = _info(100.0, "C4", 20.0, band=None)
    del old["amplitude"]
    s = summarize_reading([old])["eeg"]
    assert "amplitude" not in s and s["reading"]["bands"] == [None]
    assert to_microvolts(2.0, "mV") == 2000.0 and to_microvolts(2.0, "µV") == 2.0 and to_microvolts(1, "") is None
