"""prepare_recording end to end: the real Sleep-EDF fragment, SHHS-like files, and every reject."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from psg_factory import shhs_like, sine, write_edf, write_hypnogram

from somnray.core.errors import RecordingError
from somnray.data.profiles import CohortProfile, load_profile
from somnray.data.readers import read_psg
from somnray.data.recording import prepare_psg, prepare_recording

FIXTURES = Path(__file__).parent / "fixtures" / "sleep-edf-sc4001"
PSG_FILE = FIXTURES / "short_psg.edf"
HYP_FILE = FIXTURES / "SC4001EC-Hypnogram.edf"
SLEEP_EDF = load_profile("sleep-edf")
SHHS = load_profile("shhs")
GENERIC = load_profile("generic")


def _with(profile: CohortProfile, **changes) -> CohortProfile:
    """A copy of ``profile`` with nested changes like trimming={"rule": "none"}, revalidated."""
    data = profile.model_dump()
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    return CohortProfile.model_validate(data)


def _prepare(psg, hyp, profile, **kw):
    return prepare_recording(psg, hyp, profile, recording_id="rec-1", subject_id="s1", **kw)


def _nsrr_xml(path: Path, runs: list[tuple[str, int]]) -> Path:
    """NSRR XML with consecutive stage runs of (concept, n_epochs)."""
    events, onset = [], 0
    for concept, n in runs:
        events.append(f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>{concept}"
                      f"</EventConcept><Start>{onset}</Start><Duration>{n * 30}</Duration></ScoredEvent>")
        onset += n * 30
    path.write_text("<?xml version='1.0'?><PSGAnnotation><ScoredEvents>"
                    "<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept>"
                    f"<Start>0</Start><Duration>{onset}</Duration></ScoredEvent>"
                    + "".join(events) + "</ScoredEvents></PSGAnnotation>")
    return path


# -- the real Sleep-EDF fragment ---------------------------------------------------------------

def test_fragment_with_edges_trimming_is_rejected_for_lack_of_sleep():
    """The 10 wake epochs of the fragment have no sleep to anchor the 30-min rule: a clear reject."""
    with pytest.raises(RecordingError) as info:
        _prepare(PSG_FILE, HYP_FILE, SLEEP_EDF, hypnogram_source="s3://cohort/SC4001EC-Hypnogram.edf")
    err = info.value
    assert err.recording_id == "rec-1"
    assert str(err) == (
        "s3://cohort/SC4001EC-Hypnogram.edf: no sleep epoch: all 10 scored epochs are wake, and "
        "trimming rule 'edges' keeps wake only within 30 min of sleep; use trimming rule 'none' "
        "to keep wake-only recordings")


def test_fragment_without_trimming_keeps_ten_wake_epochs():
    """With trimming none: 10 W epochs of float32 (10, 3000) EEG/EOG, EMG absent (1-Hz envelope)."""
    rec = _prepare(PSG_FILE, HYP_FILE, _with(SLEEP_EDF, trimming={"rule": "none"}))
    assert rec.n_epochs == 10 and rec.cohort == "sleep-edf"
    assert rec.labels.dtype == np.int8 and rec.labels.tolist() == [0] * 10
    assert rec.epoch_index.tolist() == list(range(10))
    for modality in ("eeg", "eog"):
        x = rec.signals[modality]
        assert x.shape == (10, 3000) and x.dtype == np.float32
        assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(x.std()) == pytest.approx(1.0, abs=1e-4)
        assert rec.available[modality].all()
    assert rec.signals["emg"] is None and not rec.available["emg"].any()
    assert rec.info["absent"] == ["emg"]
    assert rec.info["native_sfreq"] == {"eeg": 100.0, "eog": 100.0}
    assert rec.info["warnings"] == [
        "optional channel 'emg' (signal 'EMG submental'): native sampling rate 1 Hz is below the "
        "profile's min_sfreq 50 Hz; the modality is absent",
        "the hypnogram runs 2870 epochs (86100 s) past the end of the signal (10 epochs); the "
        "labels beyond the signal were dropped"]


def test_fragment_signal_is_the_unfiltered_native_eeg():
    """Sleep-EDF eeg is Fpz-Cz at its native 100 Hz, unfiltered: z-scored samples match the file."""
    rec = _prepare(PSG_FILE, HYP_FILE, _with(SLEEP_EDF, trimming={"rule": "none"}))
    raw = read_psg(PSG_FILE).signals["EEG Fpz-Cz"].data
    expected = ((raw - raw.mean()) / raw.std()).reshape(10, 3000)
    np.testing.assert_allclose(rec.signals["eeg"], expected, atol=1e-5)


def test_info_holds_no_identifying_fields():
    """info is JSON-serialisable and carries no patient, recording or date fields."""
    rec = _prepare(PSG_FILE, HYP_FILE, _with(SLEEP_EDF, trimming={"rule": "none"}))
    text = json.dumps(rec.info)
    for needle in ("Female", "33yr", "1989", "24.04", "16:13", "Startdate"):
        assert needle not in text


# -- SHHS-like mixed-rate files ----------------------------------------------------------------

def test_shhs_like_recording_resamples_derives_and_trims(tmp_path):
    """125/50-Hz SHHS-style EDF + NSRR XML: 100-Hz epochs, EOG(L)−EOG(R), shhs_code trimming."""
    psg = shhs_like(tmp_path / "shhs1-200001.edf", seconds=40 * 30)
    xml = _nsrr_xml(tmp_path / "shhs1-200001-nsrr.xml",
                    [("Wake|0", 15), ("Stage 2 sleep|2", 8), ("REM sleep|5", 4), ("Wake|0", 13)])
    rec = _prepare(psg, xml, SHHS)
    # W = 28, N2 = 8: evening 15 + morning 13 − 8 = 20 → 15 from the evening, 5 from the morning
    assert rec.info["epochs_trimmed_start"] == 15 and rec.info["epochs_trimmed_end"] == 5
    assert rec.labels.tolist() == [2] * 8 + [4] * 4 + [0] * 8
    assert rec.epoch_index.tolist() == list(range(15, 35))
    assert {m: x.shape for m, x in rec.signals.items()} == {m: (20, 3000) for m in ("eeg", "eog", "emg")}
    assert rec.info["native_sfreq"] == {"eeg": 125.0, "eog": 50.0, "emg": 125.0}
    assert rec.info["channels"]["eog"]["reference"] == "EOG(R)"
    assert rec.info["channels"]["eeg"]["label"] == "EEG"  # C4-A1, not EEG(sec)
    # the 10-Hz EEG tone survives 125→100 Hz resampling and the 0.3-40 Hz filter at 10 Hz
    eeg = rec.signals["eeg"].reshape(-1)
    peak = np.fft.rfftfreq(len(eeg), 0.01)[np.argmax(np.abs(np.fft.rfft(eeg)))]
    assert peak == pytest.approx(10.0, abs=0.05)


def test_shhs_eog_is_the_left_minus_right_derivation(tmp_path):
    """eog = EOG(L) − EOG(R): identical tones in both cancel, leaving only the left-only tone."""
    n = 20 * 30 * 50
    common = sine(0.5, 50, 600, amplitude=100)
    left_only = sine(3.0, 50, 600, amplitude=30)
    psg = shhs_like(tmp_path / "x.edf", seconds=600,
                    **{"EOG(L)": (common + left_only, 50.0), "EOG(R)": (common, 50.0)})
    assert len(common) == n
    xml = _nsrr_xml(tmp_path / "x.xml", [("Stage 2 sleep|2", 20)])
    rec = _prepare(psg, xml, _with(SHHS, normalization="none"))
    eog = rec.signals["eog"].reshape(-1)
    spectrum = np.abs(np.fft.rfft(eog))
    freqs = np.fft.rfftfreq(len(eog), 0.01)
    assert freqs[np.argmax(spectrum)] == pytest.approx(3.0, abs=0.05)
    assert spectrum[np.argmin(np.abs(freqs - 0.5))] < 0.01 * spectrum.max()


def test_require_all_stages(tmp_path):
    """require_all_stages rejects a night without N1/N3, naming the missing stages."""
    psg = shhs_like(tmp_path / "x.edf", seconds=20 * 30)
    xml = _nsrr_xml(tmp_path / "x.xml", [("Wake|0", 5), ("Stage 2 sleep|2", 10), ("REM sleep|5", 5)])
    with pytest.raises(RecordingError) as info:
        _prepare(psg, xml, _with(SHHS, require_all_stages=True))
    assert info.value.reason == ("stage(s) ['N1', 'N3'] never occur after trimming, and the profile "
                                 "requires all five (require_all_stages: true)")


def _night_with_movement(tmp_path):
    psg = shhs_like(tmp_path / "x.edf", seconds=20 * 30)
    xml = _nsrr_xml(tmp_path / "x.xml", [("Wake|0", 4), ("Stage 2 sleep|2", 5), ("Movement|6", 2),
                                         ("Stage 2 sleep|2", 4), ("Unscored|9", 1), ("REM sleep|5", 4)])
    return psg, xml


def test_unscored_epochs_stay_in_the_sequence_by_default(tmp_path):
    """trimming.unscored keep (default): movement/unscored epochs remain as -1 at their time."""
    rec = _prepare(*_night_with_movement(tmp_path), _with(SHHS, trimming={"rule": "none"}))
    assert rec.labels.tolist() == [0] * 4 + [2] * 5 + [-1] * 2 + [2] * 4 + [-1] + [4] * 4
    assert rec.epoch_index.tolist() == list(range(20))
    assert rec.info["epochs_unscored"] == 3 and "epochs_unscored_dropped" not in rec.info


def test_unscored_epochs_are_cut_out_when_the_profile_drops_them(tmp_path):
    """trimming.unscored drop: -1 epochs leave labels, signals and masks; epoch_index keeps the gaps."""
    profile = _with(SHHS, trimming={"rule": "none", "unscored": "drop"})
    rec = _prepare(*_night_with_movement(tmp_path), profile)
    assert rec.labels.tolist() == [0] * 4 + [2] * 9 + [4] * 4
    assert rec.epoch_index.tolist() == [*range(9), *range(11, 15), *range(16, 20)]
    assert rec.signals["eeg"].shape == (17, 3000) and rec.available["eog"].shape == (17,)
    assert rec.info["epochs_unscored"] == 0 and rec.info["epochs_unscored_dropped"] == 3
    assert rec.info["epochs_trimmed_start"] == 0 and rec.info["epochs_trimmed_end"] == 0


def test_unscored_recording_for_scoring(tmp_path):
    """Without a hypnogram (non-embedded profile) the night is prepared unscored: labels -1, no trim."""
    psg = shhs_like(tmp_path / "x.edf", seconds=10 * 30)
    rec = _prepare(psg, None, SHHS)
    assert rec.labels.tolist() == [-1] * 10 and rec.info["scored"] is False
    assert rec.signals["eeg"].shape == (10, 3000)


def test_embedded_annotations_with_generic_profile(tmp_path):
    """generic reads AASM stages from the PSG's own EDF+ annotations, skipping arousals."""
    seconds = 6 * 30
    path = write_edf(tmp_path / "night.edf", {
        "C4-M1": (sine(10, 256, seconds, seed=0), 256.0),
        "E1-M2": (sine(1, 256, seconds, seed=1), 256.0),
    }, annotations=[(0, 60, "W"), (60, 60, "N1"), (70, 3, "Arousal"), (120, 60, "REM")])
    rec = _prepare(path, None, GENERIC)
    assert rec.labels.tolist() == [0, 0, 1, 1, 4, 4]
    assert rec.signals["emg"] is None
    assert rec.info["native_sfreq"] == {"eeg": 256.0, "eog": 256.0}


def test_clipped_epochs_are_masked_not_rejected(tmp_path):
    """An EEG saturating the amplifier in some epochs is kept with those epochs marked unavailable."""
    seconds = 6 * 30
    eeg = sine(10, 100, seconds, seed=0)
    eeg[3000:6000] = np.clip(eeg[3000:6000] * 100, -500, 500)  # epoch 1 mostly at the rails
    path = write_edf(tmp_path / "x.edf", {"EEG Fpz-Cz": (eeg, 100.0),
                                          "EOG horizontal": (sine(1, 100, seconds, seed=1), 100.0)})
    hyp = write_hypnogram(tmp_path / "h.edf", [(0, 60, "Sleep stage W"), (60, 120, "Sleep stage 2")])
    rec = _prepare(path, hyp, SLEEP_EDF)
    assert rec.available["eeg"].tolist() == [True, False, True, True, True, True]
    assert rec.available["eog"].all()
    assert rec.info["channels"]["eeg"]["epochs_unavailable"] == 1


# -- corrupt inputs: exact messages --------------------------------------------------------------

def test_reject_truncated_edf(tmp_path):
    """With reading.truncated reject, a truncated PSG is rejected with the byte counts, URI and id."""
    path = tmp_path / "cut.edf"
    path.write_bytes(PSG_FILE.read_bytes()[:-1000])
    with pytest.raises(RecordingError) as info:
        _prepare(path, HYP_FILE, _with(SLEEP_EDF, reading={"truncated": "reject"}), psg_source="s3://cohort/SC4001E0-PSG.edf")
    assert str(info.value) == (
        "s3://cohort/SC4001E0-PSG.edf: file is truncated: header declares 10 data records of "
        "18240 bytes but only 181400 bytes follow")
    assert info.value.recording_id == "rec-1"


def test_reject_text_file_named_edf(tmp_path):
    """A text file with an .edf name is 'not an EDF/BDF file'."""
    path = tmp_path / "SC4001E0-PSG.edf"
    path.write_text("subject,night\n1,1\n")
    with pytest.raises(RecordingError) as info:
        _prepare(path, HYP_FILE, SLEEP_EDF)
    assert str(info.value) == (
        f"{path}: not an EDF/BDF file (its header does not start with the EDF version '0       ' or the BDF marker)")


def test_reject_missing_required_channel(tmp_path):
    """A PSG without Fpz-Cz is rejected, listing the labels the file does have."""
    path = write_edf(tmp_path / "x.edf", {"EEG Pz-Oz": (sine(10, 100, 300, seed=0), 100.0),
                                          "EOG horizontal": (sine(1, 100, 300, seed=1), 100.0)},
                     start=dt.datetime(1989, 4, 24, 16, 13))
    with pytest.raises(RecordingError) as info:
        _prepare(path, HYP_FILE, SLEEP_EDF)
    assert info.value.reason == (
        "required channel 'eeg' not found: no signal matches its aliases ['EEG Fpz-Cz']; "
        "the file has signals ['EEG Pz-Oz', 'EOG horizontal']")
    assert info.value.source == str(path)


def test_reject_unknown_hypnogram_label(tmp_path):
    """A hypnogram with an unlisted stage string names it and the known labels."""
    hyp = write_hypnogram(tmp_path / "h.edf", [(0, 150, "Sleep stage W"), (150, 150, "Sleep stage N2")],
                          start=dt.datetime(1989, 4, 24, 16, 13))
    with pytest.raises(RecordingError) as info:
        _prepare(PSG_FILE, hyp, SLEEP_EDF)
    assert info.value.source == str(hyp)
    assert info.value.reason == (
        "unknown stage label(s) ['Sleep stage N2']; the profile's label_map knows ['Movement time', "
        "'Sleep stage 1', 'Sleep stage 2', 'Sleep stage 3', 'Sleep stage 4', 'Sleep stage ?', "
        "'Sleep stage R', 'Sleep stage W']. Add them to annotations.label_map (or to "
        "annotations.ignore if they are not stages)")


def test_reject_hypnogram_with_different_start(tmp_path):
    """A hypnogram starting 90 s after the PSG is a different recording's scoring."""
    hyp = write_hypnogram(tmp_path / "h.edf", [(0, 300, "Sleep stage W")],
                          start=dt.datetime(1989, 4, 24, 16, 14, 30))
    with pytest.raises(RecordingError) as info:
        _prepare(PSG_FILE, hyp, _with(SLEEP_EDF, trimming={"rule": "none"}))
    assert info.value.reason == (
        "hypnogram start time differs from the PSG start time by +90 s (tolerance 1 s): it is the "
        "scoring of another recording, or one of the two clocks was shifted")


def test_reject_hypnogram_far_shorter_than_signal(tmp_path):
    """A hypnogram covering 2 of 20 epochs is rejected as a probable mis-pairing."""
    psg = shhs_like(tmp_path / "x.edf", seconds=20 * 30)
    xml = _nsrr_xml(tmp_path / "x.xml", [("Stage 2 sleep|2", 2)])
    with pytest.raises(RecordingError) as info:
        _prepare(psg, xml, SHHS)
    assert info.value.reason.startswith("the hypnogram covers only 2 of the signal's 20 epochs (10%")


def test_reject_flat_required_channel(tmp_path):
    """An EOG that is a flat line in every epoch (disconnected) is rejected."""
    path = write_edf(tmp_path / "x.edf", {"EEG Fpz-Cz": (sine(10, 100, 300, seed=0), 100.0),
                                          "EOG horizontal": (np.full(30_000, 12.0), 100.0)},
                     start=dt.datetime(1989, 4, 24, 16, 13))
    with pytest.raises(RecordingError) as info:
        _prepare(path, HYP_FILE, _with(SLEEP_EDF, trimming={"rule": "none"}))
    assert info.value.reason == (
        "required channel 'eog' (signal 'EOG horizontal') carries no usable signal: it is flat in "
        "all 10 epochs (standard deviation below 1 quantisation step(s): disconnected or switched off?)")


def test_reject_all_nan_required_channel():
    """An EEG whose samples are all NaN (e.g. from a converter) is rejected as such."""
    psg = read_psg(PSG_FILE)
    psg.signals["EEG Fpz-Cz"].data[:] = np.nan
    with pytest.raises(RecordingError) as info:
        prepare_psg(psg, None, SLEEP_EDF, recording_id="r", subject_id="s", psg_source="mem.edf")
    assert str(info.value) == ("mem.edf: required channel 'eeg' (signal 'EEG Fpz-Cz') carries no "
                               "usable signal: every sample is NaN")


def test_partial_nan_epochs_are_masked_and_zeroed():
    """A NaN gap marks its epochs unavailable and leaves finite zeros, not NaN, in the output."""
    psg = read_psg(PSG_FILE)
    psg.signals["EEG Fpz-Cz"].data[6000:6500] = np.nan
    rec = prepare_psg(psg, None, SLEEP_EDF, recording_id="r", subject_id="s")
    assert rec.available["eeg"].tolist() == [True, True, False] + [True] * 7
    assert np.isfinite(rec.signals["eeg"]).all()


def test_reject_sampling_rate_too_low_for_filter(tmp_path):
    """EOG recorded at 40 Hz cannot be band-passed to 23 Hz: the rejection says why and what to do."""
    psg = shhs_like(tmp_path / "x.edf", seconds=10 * 30,
                    **{"EOG(L)": (sine(1, 40, 300, seed=3), 40.0), "EOG(R)": (sine(1, 40, 300, seed=4), 40.0)})
    xml = _nsrr_xml(tmp_path / "x.xml", [("Stage 2 sleep|2", 10)])
    with pytest.raises(RecordingError) as info:
        _prepare(psg, xml, SHHS)
    assert info.value.reason == (
        "required channel 'eog' (signal 'EOG(L)'): band-pass upper edge 23 Hz is at/above the "
        "Nyquist frequency 20 Hz of the native rate 40 Hz; lower the band's upper edge below 20 Hz "
        "or set band: null")


def test_reject_missing_reference(tmp_path):
    """A derivation whose reference electrode is missing is rejected, naming the reference aliases."""
    psg = shhs_like(tmp_path / "x.edf", seconds=10 * 30, **{"EOG(R)": None})
    xml = _nsrr_xml(tmp_path / "x.xml", [("Stage 2 sleep|2", 10)])
    with pytest.raises(RecordingError, match=r"required channel 'eog' \(signal 'EOG\(L\)'\) lacks its "
                                             r"reference: no signal matches \['EOG\(R\)'\]"):
        _prepare(psg, xml, SHHS)


def test_reject_no_scored_epoch(tmp_path):
    """A hypnogram of only unscored epochs leaves nothing to train on."""
    psg = shhs_like(tmp_path / "x.edf", seconds=10 * 30)
    xml = _nsrr_xml(tmp_path / "x.xml", [("Unscored|9", 10)])
    with pytest.raises(RecordingError) as info:
        _prepare(psg, xml, SHHS)
    assert info.value.reason == "no scored epoch: all 10 epochs are unscored or movement (-1)"


CLINIC_YAML = """\
name: clinic
description: Clinic X in-lab PSG, AASM scoring, 256 Hz
channels:
  eeg: {aliases: ["C4-M1", "C3-M2"], required: true, band: [0.3, 35.0]}
  eog: {aliases: ["E1-M2"], reference: ["E2-M2"], required: true, band: [0.3, 35.0]}
  emg: {aliases: ["Chin1-Chin2"], required: false, min_sfreq: 50, band: [10.0, 45.0]}
annotations:
  format: csv
  delimiter: ";"
  table_layout: epochs
  stage_column: stage
  label_map: {"Wake": 0, "N1": 1, "N2": 2, "N3": 3, "REM": 4, "Unscored": -1}
trimming: {rule: edges, edge_minutes: 30}
normalization: zscore
pairing:
  psg_glob: "*.edf"
  hypnogram_glob: "*_stages.csv"
  key_regex: '^(P\\d+_night\\d+)'
  subject_regex: '^(P\\d+)_'
"""


def test_docs_worked_example_profile(tmp_path):
    """The new-cohort example of docs/profiles.md loads and prepares a 256-Hz night with a ;-CSV."""
    (tmp_path / "clinic.yaml").write_text(CLINIC_YAML)
    profile = load_profile(tmp_path / "clinic.yaml")
    seconds = 8 * 30
    psg = write_edf(tmp_path / "P017_night2.edf", {
        "C4-M1": (sine(10, 256, seconds, seed=0), 256.0),
        "E1-M2": (sine(1, 256, seconds, seed=1), 256.0),
        "E2-M2": (sine(2, 256, seconds, seed=2), 256.0),
        "Chin1-Chin2": (sine(30, 256, seconds, amplitude=10, seed=3), 256.0),
    })
    stages = tmp_path / "P017_night2_stages.csv"
    stages.write_text("epoch_start_s;stage\n" + "".join(
        f"{30 * i};{s}\n" for i, s in enumerate(["Wake", "Wake", "N1", "N2", "N2", "N3", "REM", "Unscored"])))
    rec = prepare_recording(psg, stages, profile, recording_id="P017_night2", subject_id="P017")
    assert rec.labels.tolist() == [0, 0, 1, 2, 2, 3, 4, -1]
    assert {m: x.shape for m, x in rec.signals.items()} == {m: (8, 3000) for m in ("eeg", "eog", "emg")}
    assert rec.info["warnings"] == []
