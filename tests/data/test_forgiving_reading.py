"""Forgiving EDF reading on real files: truncated, miscounted, discontinuous, unscalable signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from psg_factory import (
    make_discontinuous,
    patch_header,
    patch_signal_header,
    sine,
    write_edf,
)

from somnray.core.errors import RecordingError
from somnray.data.profiles import load_profile
from somnray.data.readers import read_psg
from somnray.data.recording import prepare_recording

FIXTURES = Path(__file__).parent / "fixtures" / "sleep-edf-sc4001"
PSG_FILE = FIXTURES / "short_psg.edf"
HYP_FILE = FIXTURES / "SC4001EC-Hypnogram.edf"
GENERIC = load_profile("generic")
SLEEP_EDF = load_profile("sleep-edf")

TRUNCATED_NOTE = ("file is truncated: header declares 10 data records of 18240 bytes but only "
                  "181400 bytes follow; the 9 complete records (270 s of 300 s) are read")


def _untrimmed(profile):
    """The profile with wake trimming off, so every epoch of a short file is kept."""
    return profile.model_copy(update={"trimming": profile.trimming.model_copy(update={"rule": "none"})})


def _prepare(psg, hyp, profile):
    return prepare_recording(psg, hyp, profile, recording_id="rec-1", subject_id="s1")


def _night(path: Path, seconds: float = 150.0, **signals) -> Path:
    """EDF+C with an EEG, an EOG and a chin EMG at 100 Hz and AASM stages inside, 30-s records."""
    chans = {"EEG": (sine(10, 100, seconds, seed=1), 100.0),
             "E1-M2": (sine(1, 100, seconds, seed=2), 100.0),
             "EMG": (sine(30, 100, seconds, amplitude=10, seed=3), 100.0)}
    chans.update(signals)
    return write_edf(path, chans, record_s=30,
                     annotations=[(0, 30, "W"), (30, seconds - 30, "N2")])


# -- record counts that disagree with the file size -------------------------------------------

def test_truncated_file_keeps_its_complete_records(tmp_path):
    """A download cut inside record 10 reads records 1-9 with a warning and the truncated flag."""
    path = tmp_path / "cut.edf"
    path.write_bytes(PSG_FILE.read_bytes()[:-1000])
    psg = read_psg(path)
    full = read_psg(PSG_FILE)
    assert psg.truncated and not full.truncated
    assert psg.duration_s == 270.0
    assert psg.warnings == [TRUNCATED_NOTE]
    eeg = psg.signals["EEG Fpz-Cz"].data
    np.testing.assert_array_equal(eeg, full.signals["EEG Fpz-Cz"].data[:len(eeg)])
    assert len(eeg) == 27000


def test_truncated_recording_is_prepared_and_flagged(tmp_path):
    """prepare keeps a truncated night's 9 epochs, says so in its warnings and sets info.truncated."""
    path = tmp_path / "cut.edf"
    path.write_bytes(PSG_FILE.read_bytes()[:-1000])
    rec = _prepare(path, HYP_FILE, _untrimmed(SLEEP_EDF))
    assert rec.info["n_epochs_signal"] == 9
    assert rec.info["truncated"] is True
    assert TRUNCATED_NOTE in rec.info["warnings"]
    complete = _prepare(PSG_FILE, HYP_FILE, _untrimmed(SLEEP_EDF))
    assert "truncated" not in complete.info


def test_file_cut_inside_its_first_record_is_rejected(tmp_path):
    """Without one complete data record there is nothing to keep: a reject naming the byte counts."""
    path = tmp_path / "stub.edf"
    raw = PSG_FILE.read_bytes()
    path.write_bytes(raw[:-(18240 * 9 + 100)])
    with pytest.raises(RecordingError) as info:
        read_psg(path)
    assert info.value.reason == ("file is truncated: header declares 10 data records of 18240 "
                                 "bytes but only 18140 bytes follow, not one complete data record")


def test_header_declaring_fewer_records_than_the_file_holds(tmp_path):
    """A header declaring 5 records of a 10-record file: all 10 are read, with a warning."""
    path = tmp_path / "short-count.edf"
    path.write_bytes(PSG_FILE.read_bytes())
    patch_header(path, 236, 8, "5")
    psg = read_psg(path)
    assert psg.duration_s == 300.0 and not psg.truncated
    assert psg.warnings == [
        "the header declares 5 data records but the file holds 10 complete records of 18240 "
        "bytes; all 10 are read (300 s instead of 150 s)"]
    np.testing.assert_array_equal(psg.signals["EEG Fpz-Cz"].data,
                                  read_psg(PSG_FILE).signals["EEG Fpz-Cz"].data)


# -- EDF+D ----------------------------------------------------------------------------------------

def test_discontinuous_gap_becomes_unavailable_epochs(tmp_path):
    """An EDF+D night with a 30-s gap after record 2 prepares; the gap's epoch is unavailable."""
    path = make_discontinuous(_night(tmp_path / "d.edf", seconds=120), [0, 30, 90, 120])
    psg = read_psg(path)
    assert psg.duration_s == 150.0
    assert psg.warnings == [
        "EDF+D (discontinuous) recording: 1 gap(s) between data records, 30 s in all, hold no "
        "data; their epochs are marked unavailable"]
    eeg = psg.signals["EEG"].data
    assert len(eeg) == 15000
    assert np.isnan(eeg[6000:9000]).all() and not np.isnan(eeg[:6000]).any()
    assert not np.isnan(eeg[9000:]).any()
    rec = _prepare(path, None, _untrimmed(GENERIC))
    assert rec.available["eeg"].tolist() == [True, True, False, True, True]
    assert rec.available["eog"].tolist() == [True, True, False, True, True]


def test_discontinuous_records_that_overlap_are_rejected(tmp_path):
    """EDF+D records going back in time cannot be laid out: a reject naming both records."""
    path = make_discontinuous(_night(tmp_path / "d.edf", seconds=120), [0, 30, 50, 80])
    with pytest.raises(RecordingError) as info:
        read_psg(path)
    assert info.value.reason == ("EDF+D data records overlap or go back in time: record 3 starts "
                                 "at 50 s, before record 2 ends at 60 s")


# -- signals whose header gives no scale ---------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "problem"), [
    (104, "500", "physical minimum equals physical maximum (500 uV): the header gives no scale "
                 "from digital to physical values"),
    (112, "-600", "physical minimum -500 is above physical maximum -600 (an inverted physical "
                  "range): the sign of its samples is ambiguous"),
    (120, "32767", "digital minimum 32767 is not below digital maximum 32767, so its samples "
                   "cannot be scaled to physical values"),
    (128, "40000", "digital limits [-32768, 40000] lie outside the 16-bit EDF range "
                   "[-32768, 32767], so its samples cannot be scaled to physical values"),
])
def test_unscalable_optional_channel_is_absent_not_the_recording(tmp_path, field, value, problem):
    """A chin EMG whose header gives no physical scale is absent with the precise reason."""
    path = patch_signal_header(_night(tmp_path / "x.edf"), field, 2, value)
    assert read_psg(path).signals["EMG"].unusable == problem
    rec = _prepare(path, None, GENERIC)
    assert rec.signals["emg"] is None and rec.signals["eeg"] is not None
    assert f"optional channel 'emg' (signal 'EMG') is unusable: {problem}; the modality is absent" \
        in rec.info["warnings"]


def test_zero_physical_range_on_a_required_channel_is_not_called_clipped(tmp_path):
    """A required EEG with physical minimum = maximum is rejected for that reason, not as clipped."""
    path = patch_signal_header(_night(tmp_path / "x.edf"), 112, 0, "-500")
    with pytest.raises(RecordingError) as info:
        _prepare(path, None, GENERIC)
    assert info.value.reason == (
        "required channel 'eeg' (signal 'EEG') is unusable: physical minimum equals physical "
        "maximum (-500 uV): the header gives no scale from digital to physical values")
