"""Training-signal summaries (somnray.data.signal_summary): RMS quantiles and relative band powers."""

from __future__ import annotations

import numpy as np
import pytest

from somnray.data.signal_summary import summarize_epochs, summarize_modalities


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
