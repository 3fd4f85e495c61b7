"""Bands that fit the recording (band_fit: auto) and the shipped per-modality minimum rates."""

from __future__ import annotations

import pytest
from psg_factory import sine, write_edf

from somnray.core.errors import RecordingError
from somnray.data.preprocess import fit_band
from somnray.data.profiles import CohortProfile, list_profiles, load_profile
from somnray.data.recording import prepare_recording

GENERIC = load_profile("generic")


def _night(path, rate: float, seconds: float = 150.0):
    """EDF+C with EEG, EOG and chin EMG all at ``rate`` and AASM stages inside."""
    return write_edf(path, {"EEG": (sine(10, rate, seconds, seed=1), rate),
                            "E1-M2": (sine(1, rate, seconds, seed=2), rate),
                            "EMG": (sine(5, rate, seconds, amplitude=10, seed=3), rate)},
                     record_s=30, annotations=[(0, 30, "W"), (30, seconds - 30, "N2")])


def _prepare(path):
    return prepare_recording(path, None, GENERIC, recording_id="rec-1", subject_id="s1")


def test_fit_band_clips_the_upper_edge_below_the_native_nyquist():
    """0.3-35 Hz on a 50-Hz signal becomes 0.3-22.5 Hz; a band that fits is returned unchanged."""
    assert fit_band((0.3, 35.0), 50.0) == (0.3, 22.5)
    assert fit_band((0.3, 35.0), 100.0) == (0.3, 35.0)
    assert fit_band((10.0, 45.0), 64.0) == (10.0, 28.8)


def test_fit_band_refuses_a_band_that_cannot_fit():
    """A lower edge above the clipped upper edge is an error naming the band and the rate."""
    with pytest.raises(ValueError) as info:
        fit_band((10.0, 45.0), 20.0)
    assert str(info.value) == ("band [10.0, 45.0] Hz cannot fit the native rate 20 Hz: its lower "
                               "edge is not below 9 Hz, 0.9 × the Nyquist frequency")


def test_fifty_hz_recording_prepares_with_clipped_bands(tmp_path):
    """The generic template prepares a 50-Hz PSG, clipping each band with a warning."""
    rec = _prepare(_night(tmp_path / "x.edf", 50.0))
    assert rec.info["channels"]["eeg"]["band"] == [0.3, 22.5]
    assert rec.info["channels"]["emg"]["band"] == [10.0, 22.5]
    assert ("channel 'eeg' (signal 'EEG'): band-pass upper edge 35 Hz is at/above the Nyquist "
            "frequency 25 Hz of the native rate 50 Hz; the band is clipped to [0.3, 22.5] Hz "
            "(band_fit: auto)") in rec.info["warnings"]
    assert rec.available["eeg"].all()


def test_clipped_band_of_a_derivation_names_the_derivation(tmp_path):
    """A 50-Hz EOG derived as LOC - ROC: the clipping warning names the derivation, not LOC alone."""
    data = GENERIC.model_dump()
    data["channels"]["eog"].update(aliases=["LOC"], reference=["ROC"], fallbacks=[])
    profile = CohortProfile.model_validate(data)
    path = write_edf(tmp_path / "x.edf", {"EEG": (sine(10, 50, 150, seed=1), 50.0),
                                          "LOC": (sine(1, 50, 150, seed=2), 50.0),
                                          "ROC": (sine(1, 50, 150, amplitude=20, seed=3), 50.0)},
                     record_s=30, annotations=[(0, 30, "W"), (30, 120, "N2")])
    rec = prepare_recording(path, None, profile, recording_id="rec-1", subject_id="s1")
    assert rec.info["channels"]["eog"]["reference"] == "ROC"
    assert ("channel 'eog' (signal 'LOC - ROC'): band-pass upper edge 35 Hz is at/above the Nyquist "
            "frequency 25 Hz of the native rate 50 Hz; the band is clipped to [0.3, 22.5] Hz "
            "(band_fit: auto)") in rec.info["warnings"]


def test_band_that_fits_is_not_clipped_nor_warned(tmp_path):
    """At 100 Hz the generic bands fit: no clipping warning and the profile's band is used."""
    rec = _prepare(_night(tmp_path / "x.edf", 100.0))
    assert rec.info["channels"]["eeg"]["band"] == [0.3, 35.0]
    assert not [w for w in rec.info["warnings"] if "band_fit" in w]


def test_seven_hz_eeg_is_rejected_for_its_rate(tmp_path):
    """An EEG sampled at 7 Hz does not prepare: the reject names the rate and the minimum (with the EOG's)."""
    with pytest.raises(RecordingError) as info:
        _prepare(_night(tmp_path / "x.edf", 7.0))
    assert info.value.reason == (
        "2 problems: (1) required channel 'eeg' (signal 'EEG'): native sampling rate 7 Hz is below the "
        "profile's min_sfreq 50 Hz; (2) required channel 'eog' (signal 'E1-M2'): native sampling rate "
        "7 Hz is below the profile's min_sfreq 25 Hz")


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profiles_set_a_minimum_rate_per_modality(name):
    """Every modality of every shipped profile has a min_sfreq (EEG 50, EOG 25, EMG 50 Hz)."""
    floors = {"eeg": 50, "eog": 25, "emg": 50}
    profile = load_profile(name)
    assert {m: c.min_sfreq for m, c in profile.channels.items()} == {m: floors[m] for m in profile.channels}
