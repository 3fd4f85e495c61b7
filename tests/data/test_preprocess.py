"""Pure preprocessing functions, each on hand-made arrays."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from somnray.core.errors import RecordingError
from somnray.data.preprocess import (
    availability,
    bandpass,
    check_alignment,
    check_filter_rate,
    derive_channel,
    design_bandpass,
    epoch,
    map_labels,
    normalization_stats,
    normalize,
    resample,
    trim_wake,
)


def _sine(freq, sfreq, seconds, amplitude=1.0):
    t = np.arange(int(round(seconds * sfreq))) / sfreq
    return amplitude * np.sin(2 * np.pi * freq * t)


def _peak_hz(x, sfreq):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sfreq)[np.argmax(spectrum)]


def _gain(x, y):
    core = slice(len(x) // 4, 3 * len(x) // 4)  # away from the ends
    return np.std(y[core]) / np.std(x[core])


# -- resample ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sfreq_in", [125.0, 50.0, 200.0, 256.0, 100.0])
def test_resample_keeps_a_sinusoid_frequency_and_duration(sfreq_in):
    """125/50/200/256 Hz → 100 Hz keeps a 7-Hz tone at 7 Hz, its amplitude, and the duration."""
    x = _sine(7.0, sfreq_in, 60.0, amplitude=3.0)
    y = resample(x, sfreq_in, 100.0)
    assert len(y) == 6000
    assert _peak_hz(y, 100.0) == pytest.approx(7.0, abs=0.05)
    assert _gain(x, y) == pytest.approx(1.0, abs=0.02)


def test_resample_removes_content_above_the_new_nyquist():
    """A 60-Hz tone at 256 Hz does not alias into the 100-Hz output."""
    x = _sine(60.0, 256.0, 20.0)
    assert np.std(resample(x, 256.0, 100.0)[200:-200]) < 0.01


def test_resample_rejects_non_positive_rates():
    """A zero rate is a clear ValueError."""
    with pytest.raises(ValueError, match="sampling rates must be positive"):
        resample(np.zeros(10), 0.0)


# -- derive -----------------------------------------------------------------------------------

def test_derive_channel_subtracts_at_the_higher_rate():
    """x − ref with ref at half the rate: the common part cancels, the result is at the higher rate."""
    common = _sine(1.0, 50.0, 30.0)
    own = _sine(10.0, 100.0, 30.0)
    derived, rate = derive_channel(resample(common, 50.0, 100.0) + own, 100.0, common, 50.0)
    assert rate == 100.0
    assert len(derived) == 3000
    np.testing.assert_allclose(derived[100:-100], own[100:-100], atol=1e-2)


# -- filters ----------------------------------------------------------------------------------

def test_bandpass_passes_in_band_and_attenuates_out_of_band():
    """0.3-35 Hz: a 10-Hz tone passes, 45 Hz and 0.05 Hz drift are attenuated by > 30 dB."""
    sfreq = 100.0
    inside = _sine(10.0, sfreq, 120.0)
    assert _gain(inside, bandpass(inside, sfreq, (0.3, 35.0))) == pytest.approx(1.0, abs=0.02)
    for freq in (45.0, 0.05):
        x = _sine(freq, sfreq, 120.0)
        assert _gain(x, bandpass(x, sfreq, (0.3, 35.0))) < 0.03, freq


def test_bandpass_is_zero_phase():
    """An in-band tone comes out without a time shift."""
    x = _sine(5.0, 100.0, 60.0)
    y = bandpass(x, 100.0, (0.3, 40.0))
    core = slice(1000, 5000)
    np.testing.assert_allclose(y[core], x[core], atol=0.01)


def test_bandpass_low_edge_zero_is_a_lowpass():
    """band (0, 20) keeps DC and removes 30 Hz."""
    x = 1.0 + _sine(30.0, 100.0, 60.0)
    y = bandpass(x, 100.0, (0.0, 20.0))
    assert np.mean(y[1000:-1000]) == pytest.approx(1.0, abs=1e-3)
    assert np.std(y[1000:-1000]) < 0.01


def test_bandpass_rejects_band_above_native_nyquist():
    """EOG recorded at 40 Hz cannot be band-passed to 23 Hz, even after up-sampling to 100 Hz."""
    with pytest.raises(ValueError) as info:
        bandpass(np.zeros(10_000), 100.0, (0.3, 23.0), native_sfreq=40.0)
    assert str(info.value) == (
        "band-pass upper edge 23 Hz is at/above the Nyquist frequency 20 Hz of the native rate "
        "40 Hz; lower the band's upper edge below 20 Hz or set band: null")


def test_check_filter_rate_enforces_min_sfreq():
    """A 1-Hz envelope is below a 50-Hz min_sfreq."""
    with pytest.raises(ValueError, match=r"native sampling rate 1 Hz is below the profile's min_sfreq 50 Hz"):
        check_filter_rate(1.0, None, 50.0)
    check_filter_rate(125.0, (10.0, 45.0), 50.0)  # fine: no error


def test_design_bandpass_length_follows_transition_rule():
    """A 0.3-Hz low edge at 100 Hz needs 3.3 / 0.3 s of taps (odd length)."""
    taps = design_bandpass(100.0, (0.3, 40.0))
    assert len(taps) == 1101
    np.testing.assert_allclose(taps, taps[::-1])  # linear phase


def test_bandpass_rejects_signal_shorter_than_filter():
    """A signal shorter than the filter is an error, not a silent garbage output."""
    with pytest.raises(ValueError, match="too short"):
        bandpass(np.ones(100), 100.0, (0.3, 40.0))


# -- epochs and labels ------------------------------------------------------------------------

def test_epoch_drops_incomplete_tail():
    """95 s at 100 Hz → three (3000,) epochs in order; the last 5 s are dropped."""
    x = np.arange(9500, dtype=float)
    e = epoch(x)
    assert e.shape == (3, 3000)
    assert e[1, 0] == 3000 and e[2, -1] == 8999


def test_epoch_rejects_fractional_epoch_lengths():
    """An epoch must be a whole number of samples."""
    with pytest.raises(ValueError, match="not a whole number of samples"):
        epoch(np.zeros(100), sfreq=0.3, epoch_s=1.0)


def test_map_labels_maps_and_reports_unknown():
    """Known labels map to int8 classes; unknown ones are listed with the known ones."""
    out = map_labels(["W", " N2 ", "?"], {"W": 0, "N2": 2, "?": -1})
    assert out.dtype == np.int8 and out.tolist() == [0, 2, -1]
    with pytest.raises(ValueError) as info:
        map_labels(["W", "X", "Y"], {"W": 0})
    assert str(info.value) == "unknown stage label(s) ['X', 'Y']; known labels: ['W']"


# -- trimming (docs/models.md §4.5) ------------------------------------------------------------

def _labels(spec):
    """Build a label array from (class, count) runs."""
    return np.concatenate([np.full(n, c, dtype=np.int8) for c, n in spec])


def test_trim_edges_keeps_margin_around_sleep():
    """edges: keep 60 epochs (30 min) of wake before the first and after the last sleep epoch."""
    labels = _labels([(0, 100), (2, 10), (0, 5), (4, 10), (0, 200)])
    keep = trim_wake(labels, "edges", 30)
    assert (keep.start, keep.stop) == (40, 100 + 25 + 60)


def test_trim_edges_margin_clipped_at_recording_ends():
    """edges never extends beyond the recording."""
    labels = _labels([(0, 10), (1, 5), (0, 10)])
    assert trim_wake(labels, "edges", 30) == slice(0, 25)


def test_trim_edges_counts_unscored_epochs_in_the_margin():
    """The margin is in epochs of the recording: -1 epochs inside it are kept, not skipped over."""
    labels = _labels([(0, 70), (-1, 10), (2, 5), (0, 70)])
    keep = trim_wake(labels, "edges", 30)
    assert (keep.start, keep.stop) == (20, 85 + 60)


def test_trim_edges_without_sleep_is_empty():
    """A wake-only night has nothing to keep under edges."""
    keep = trim_wake(_labels([(0, 10)]), "edges", 30)
    assert keep.stop - keep.start == 0


def test_trim_none_keeps_everything():
    """none keeps all epochs."""
    assert trim_wake(_labels([(0, 10)]), "none") == slice(0, 10)


def test_trim_shhs_code_removes_excess_from_evening_first():
    """shhs_code: W=300 (evening 200 + morning 100), 2nd class N2=100 → remove 200, all from the evening."""
    labels = _labels([(0, 200), (2, 100), (4, 50), (0, 100)])
    assert trim_wake(labels, "shhs_code") == slice(200, 450)


def test_trim_shhs_code_takes_remainder_from_morning():
    """shhs_code: evening 50 + morning 250 − N2 100 = 200 → 50 from the evening, 150 from the morning."""
    labels = _labels([(0, 50), (2, 100), (4, 50), (0, 250)])
    assert trim_wake(labels, "shhs_code") == slice(50, 450 - 150)


def test_trim_shhs_code_leaves_night_when_wake_not_dominant():
    """shhs_code does nothing when wake is not the most frequent class."""
    labels = _labels([(0, 50), (2, 100), (0, 40)])
    assert trim_wake(labels, "shhs_code") == slice(0, 190)


def test_trim_shhs_code_does_nothing_when_end_runs_are_small():
    """shhs_code: W dominant but evening+morning ≤ 2nd class → nothing removed."""
    labels = _labels([(0, 30), (2, 100), (0, 150), (3, 40), (0, 30)])
    assert trim_wake(labels, "shhs_code") == slice(0, 350)


def test_trim_shhs_code_ignores_unscored_but_cuts_them_with_the_run():
    """Unscored epochs do not break the wake run, and leave together with the wake cut around them."""
    labels = _labels([(0, 100), (-1, 20), (0, 100), (2, 100), (0, 10)])
    # W = 210, N2 = 100; evening run 200 + morning 10 - 100 = 110 → cut 110 scored from the start
    keep = trim_wake(labels, "shhs_code")
    assert keep.start == 130 and keep.stop == len(labels)
    assert (labels[keep] == 0).sum() == 100


def test_trim_shhs_paper_removes_half_the_difference_from_each_end():
    """shhs_paper: W=300, N2=100 → remove (300−100)/2 = 100 wake epochs from each end."""
    labels = _labels([(0, 150), (2, 100), (0, 150)])
    assert trim_wake(labels, "shhs_paper") == slice(100, 400 - 100)


def test_trim_shhs_paper_never_cuts_sleep():
    """shhs_paper: an end's cut stops at its wake run."""
    labels = _labels([(0, 20), (2, 100), (0, 280)])
    # W=300, N2=100 → 100 per end, but the evening run has only 20
    assert trim_wake(labels, "shhs_paper") == slice(20, 400 - 100)


def test_trim_rejects_unknown_rule():
    """A typo in the rule is a ValueError naming the allowed rules."""
    with pytest.raises(ValueError, match="expected none, edges, shhs_code or shhs_paper"):
        trim_wake(np.zeros(3, np.int8), "sometimes")


# -- availability and normalisation ------------------------------------------------------------

def test_availability_flags_flat_nan_and_clipped_epochs():
    """Flat, NaN-containing and rail-clipped epochs are unavailable; a normal one is available."""
    rng = np.random.default_rng(0)
    ok = rng.normal(0, 20, 3000)
    flat = np.full(3000, 3.0) + rng.choice([0.0, 0.1], 3000, p=[0.99, 0.01])
    with_nan = ok.copy()
    with_nan[5] = np.nan
    clipped = np.clip(rng.normal(0, 200, 3000), -100, 100)  # ~60 % at the rails
    mask = availability(np.stack([ok, flat, with_nan, clipped]), flat_std=0.1,
                        rails=(-100.0, 100.0), clip_fraction=0.1)
    assert mask.tolist() == [True, False, False, False]


def test_availability_keeps_occasional_rail_hits():
    """A few samples at a rail (under clip_fraction) do not flag the epoch."""
    x = np.random.default_rng(1).normal(0, 20, 3000)
    x[:30] = 100.0
    assert availability(x[None], rails=(-100.0, 100.0), clip_fraction=0.1).tolist() == [True]


def test_normalize_uses_available_epochs_only():
    """z-score statistics ignore unavailable epochs (an artefact epoch does not shrink the rest)."""
    rng = np.random.default_rng(2)
    good = rng.normal(5.0, 2.0, (4, 3000))
    artefact = rng.normal(0.0, 1000.0, (1, 3000))
    epochs = np.vstack([good, artefact])
    out = normalize(epochs, np.array([True] * 4 + [False]), "zscore")
    assert out[:4].mean() == pytest.approx(0.0, abs=1e-9)
    assert out[:4].std() == pytest.approx(1.0, abs=1e-9)


def test_normalize_robust_resists_outliers():
    """robust scaling: median/IQR of a Gaussian give ≈ unit spread even with a spike epoch available."""
    rng = np.random.default_rng(3)
    epochs = rng.normal(10.0, 3.0, (20, 3000))
    epochs[0, :100] = 1e6
    out = normalize(epochs, np.ones(20, bool), "robust")
    assert np.median(out[1:]) == pytest.approx(0.0, abs=0.02)
    assert out[1:].std() == pytest.approx(1.0, abs=0.03)


def test_normalize_none_and_degenerate_cases():
    """none is the identity; no available epoch or zero spread never divides by zero."""
    x = np.ones((2, 3000))
    np.testing.assert_array_equal(normalize(x, np.ones(2, bool), "none"), x)
    np.testing.assert_array_equal(normalize(x, np.zeros(2, bool), "zscore"), x)
    assert np.isfinite(normalize(x, np.ones(2, bool), "zscore")).all()


# -- alignment ---------------------------------------------------------------------------------

def test_check_alignment_rejects_different_starts_without_printing_dates():
    """A 1-h start difference is a RecordingError giving the difference only."""
    psg = dt.datetime(1989, 4, 24, 16, 13, 0)
    with pytest.raises(RecordingError) as info:
        check_alignment(psg, psg + dt.timedelta(hours=1), "hyp.edf")
    assert str(info.value) == (
        "hyp.edf: hypnogram start time differs from the PSG start time by +3600 s (tolerance 1 s): "
        "it is the scoring of another recording, or one of the two clocks was shifted")
    assert "1989" not in str(info.value)


def test_check_alignment_accepts_equal_or_unknown_starts():
    """Equal starts, sub-tolerance jitter, or a missing start pass."""
    psg = dt.datetime(2000, 1, 1, 22, 0, 0)
    check_alignment(psg, psg, "h")
    check_alignment(psg, psg + dt.timedelta(seconds=0.5), "h")
    check_alignment(psg, None, "h")


def test_normalization_stats_are_the_physical_scale_normalize_divides_by():
    """normalization_stats gives (mean, std) or (median, IQR/1.349) of the available epochs in the
    input's unit, and normalize with those stats equals normalize computing them itself."""
    rng = np.random.default_rng(4)
    epochs = rng.normal(3.0, 40.0, (6, 3000))
    mask = np.array([True] * 5 + [False])
    centre, scale = normalization_stats(epochs, mask, "zscore")
    assert (centre, scale) == pytest.approx((epochs[:5].mean(), epochs[:5].std()))
    assert normalization_stats(epochs, mask, "robust")[1] == pytest.approx(40.0, rel=0.02)
    for method in ("zscore", "robust"):
        stats = normalization_stats(epochs, mask, method)
        np.testing.assert_array_equal(normalize(epochs, mask, method, stats=stats),
                                      normalize(epochs, mask, method))
    assert normalization_stats(epochs, np.zeros(6, bool), "zscore") is None
    with pytest.raises(ValueError, match="unknown normalization statistic 'none'"):
        normalization_stats(epochs, mask, "none")
