"""PSG and hypnogram readers: the real Sleep-EDF fragment, small written files, and corrupt copies."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import edfio
import numpy as np
import pytest
from psg_factory import START, sine, write_edf, write_hypnogram

from somnray.core.errors import RecordingError
from somnray.data.profiles import load_profile
from somnray.data.hypnograms import Hypnogram, hypnogram_to_epochs, read_hypnogram
from somnray.data.readers import read_psg

FIXTURES = Path(__file__).parent / "fixtures" / "sleep-edf-sc4001"
PSG_FILE = FIXTURES / "short_psg.edf"
HYP_FILE = FIXTURES / "SC4001EC-Hypnogram.edf"
SLEEP_EDF = load_profile("sleep-edf")


# -- the real Sleep-EDF fragment ---------------------------------------------------------------

def test_fragment_channels_keep_native_rates():
    """Every SC channel is read at its own rate: 100 Hz EEG/EOG, 1 Hz EMG/resp/temp/marker."""
    psg = read_psg(PSG_FILE)
    rates = {label: ch.sfreq for label, ch in psg.signals.items()}
    assert rates == {
        "EEG Fpz-Cz": 100.0, "EEG Pz-Oz": 100.0, "EOG horizontal": 100.0,
        "Resp oro-nasal": 1.0, "EMG submental": 1.0, "Temp rectal": 1.0, "Event marker": 1.0}
    assert psg.duration_s == 300.0
    assert len(psg.signals["EEG Fpz-Cz"].data) == 30_000
    assert len(psg.signals["EMG submental"].data) == 300
    assert psg.start == dt.datetime(1989, 4, 24, 16, 13, 0)
    assert psg.annotations == []


def test_fragment_signals_are_physical_float64():
    """Samples are float64 in µV inside the header's physical range, with its quantisation step."""
    eeg = read_psg(PSG_FILE).signals["EEG Fpz-Cz"]
    assert eeg.data.dtype == np.float64 and eeg.unit == "uV"
    assert eeg.physical_range == (-192.0, 192.0)
    assert eeg.resolution == pytest.approx(384 / 4095)
    assert -192 <= eeg.data.min() < 0 < eeg.data.max() <= 192
    assert 5 < eeg.data.std() < 100  # a real EEG, not raw digital counts


def test_psg_carries_no_identifying_header_fields():
    """Neither patient nor recording identification reaches the PSG object."""
    psg = read_psg(PSG_FILE)
    dumped = repr(psg.__dict__) + repr({k: vars(v) for k, v in psg.signals.items()})
    assert "Female" not in dumped and "33yr" not in dumped and "Startdate" not in dumped
    assert not {"patient", "recording"} & set(vars(psg))


def test_full_night_hypnogram_counts():
    """The full SC4001 hypnogram holds 2,880 epochs: W 1997, S1 58, S2 250, S3 101, S4 119, R 125, ? 230."""
    hyp = read_hypnogram(HYP_FILE, SLEEP_EDF.annotations)
    per_label = Counter()
    for duration, label in zip(hyp.durations_s, hyp.labels):
        per_label[label] += int(duration // 30)
    assert per_label == {
        "Sleep stage W": 1997, "Sleep stage 1": 58, "Sleep stage 2": 250, "Sleep stage 3": 101,
        "Sleep stage 4": 119, "Sleep stage R": 125, "Sleep stage ?": 230}
    assert hyp.start == dt.datetime(1989, 4, 24, 16, 13, 0)
    labels, warnings = hypnogram_to_epochs(hyp, 2880, SLEEP_EDF.annotations.label_map, "h")
    assert Counter(labels.tolist()) == {0: 1997, 1: 58, 2: 250, 3: 220, 4: 125, -1: 230}
    assert warnings == []


def test_hypnogram_truncated_to_fragment_with_warning():
    """Mapped onto the 10-epoch fragment: 10 W epochs, and a warning about the 2,870 dropped."""
    hyp = read_hypnogram(HYP_FILE, SLEEP_EDF.annotations)
    labels, warnings = hypnogram_to_epochs(hyp, 10, SLEEP_EDF.annotations.label_map, "h")
    assert labels.dtype == np.int8 and labels.tolist() == [0] * 10
    assert warnings == [
        "the hypnogram runs 2870 epochs (86100 s) past the end of the signal (10 epochs); the "
        "labels beyond the signal were dropped"]


def test_read_psg_from_bytes_and_file_uri():
    """Content bytes and a file:// URI read the same signals as a path."""
    data = read_psg(PSG_FILE.read_bytes(), source="mem").signals["EEG Fpz-Cz"].data
    uri = read_psg(f"file://{PSG_FILE}").signals["EEG Fpz-Cz"].data
    np.testing.assert_array_equal(data, uri)


# -- corrupt files -----------------------------------------------------------------------------

def test_truncated_edf(tmp_path):
    """A download cut short, with truncated files rejected, names the declared records and the bytes."""
    path = tmp_path / "cut.edf"
    path.write_bytes(PSG_FILE.read_bytes()[:-1000])
    with pytest.raises(RecordingError) as info:
        read_psg(path, source="s3://bucket/cut.edf", truncated="reject")
    assert str(info.value) == (
        "s3://bucket/cut.edf: file is truncated: header declares 10 data records of 18240 bytes "
        "but only 181400 bytes follow")
    assert info.value.source == "s3://bucket/cut.edf"


def test_truncated_header(tmp_path):
    """A file cut inside its signal headers is reported as truncated."""
    path = tmp_path / "stub.edf"
    path.write_bytes(PSG_FILE.read_bytes()[:1000])
    with pytest.raises(RecordingError, match="file is truncated: the header declares 2048 header "
                                             "bytes but the file has only 1000 bytes"):
        read_psg(path)


def test_text_file_renamed_edf(tmp_path):
    """A text file with an .edf name is 'not an EDF/BDF file'."""
    path = tmp_path / "notes.edf"
    path.write_text("hello world, this is not a recording\n")
    with pytest.raises(RecordingError) as info:
        read_psg(path)
    assert info.value.reason == (
        "not an EDF/BDF file (its header does not start with the EDF version '0       ' or the BDF marker)")


def test_corrupt_header_number(tmp_path):
    """A non-numeric header field is named."""
    raw = bytearray(PSG_FILE.read_bytes())
    raw[236:244] = b"ten     "
    path = tmp_path / "bad.edf"
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordingError) as info:
        read_psg(path)
    assert info.value.reason == "corrupt EDF header: field 'number of data records' is 'ten', not a number"


def test_missing_file():
    """A path that does not exist is a RecordingError, not an OSError."""
    with pytest.raises(RecordingError, match="file not found"):
        read_psg("/nonexistent/x.edf")


# -- written files: mixed rates, EDF+, BDF ------------------------------------------------------

def test_mixed_rates_and_embedded_annotations(tmp_path):
    """125/50/1-Hz signals keep their rates; EDF+ annotations come back with onsets and durations."""
    path = write_edf(tmp_path / "mixed.edf", {
        "EEG": (sine(10, 125, 120, seed=0), 125.0),
        "EOG(L)": (sine(1, 50, 120, seed=1), 50.0),
        "SaO2": (np.linspace(90, 95, 120), 1.0),
    }, annotations=[(0, 60, "W"), (60, 60, "N2"), (75, None, "Arousal")])
    psg = read_psg(path)
    assert {k: (v.sfreq, len(v.data)) for k, v in psg.signals.items()} == {
        "EEG": (125.0, 15000), "EOG(L)": (50.0, 6000), "SaO2": (1.0, 120)}
    assert psg.start == START
    assert [(a.onset_s, a.text) for a in psg.annotations] == [(0.0, "W"), (60.0, "N2"), (75.0, "Arousal")]
    assert psg.annotations[0].duration_s == 60.0 and np.isnan(psg.annotations[2].duration_s)


def test_bdf_is_read(tmp_path):
    """24-bit BDF files are read like EDF."""
    data = sine(5, 256, 60, seed=0)
    bdf = edfio.Bdf([edfio.BdfSignal(data, 256, label="EEG C3", physical_range=(-500, 500))])
    bdf.write(tmp_path / "x.bdf")
    psg = read_psg(tmp_path / "x.bdf")
    assert psg.signals["EEG C3"].sfreq == 256.0
    np.testing.assert_allclose(psg.signals["EEG C3"].data, data, atol=1e-3)


# -- hypnogram formats -------------------------------------------------------------------------

NSRR_XML = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<PSGAnnotation><SoftwareVersion>Compumedics</SoftwareVersion><EpochLength>30</EpochLength>
<ScoredEvents>
<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept><Start>0</Start>
<Duration>600.0</Duration><ClockTime>00.00.00 22.30.00</ClockTime></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Wake|0</EventConcept>
<Start>0.0</Start><Duration>90.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Arousals|Arousals</EventType><EventConcept>Arousal|Arousal ()</EventConcept>
<Start>100.0</Start><Duration>5.2</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 2 sleep|2</EventConcept>
<Start>90.0</Start><Duration>60.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Unscored|9</EventConcept>
<Start>150.0</Start><Duration>30.0</Duration></ScoredEvent>
</ScoredEvents></PSGAnnotation>
"""


def test_nsrr_xml_stage_events(tmp_path):
    """Only Stages|Stages events are read; arousals and the start marker are skipped."""
    path = tmp_path / "shhs1-200001-nsrr.xml"
    path.write_text(NSRR_XML)
    spec = load_profile("shhs").annotations
    hyp = read_hypnogram(path, spec)
    assert hyp.labels == ["Wake|0", "Stage 2 sleep|2", "Unscored|9"]
    assert hyp.onsets_s.tolist() == [0.0, 90.0, 150.0] and hyp.durations_s.tolist() == [90.0, 60.0, 30.0]
    assert hyp.start is None
    labels, _ = hypnogram_to_epochs(hyp, 6, spec.label_map, str(path))
    assert labels.tolist() == [0, 0, 0, 2, 2, -1]


def test_nsrr_xml_malformed_and_stageless(tmp_path):
    """Broken XML and XML without stage events are RecordingErrors that say which."""
    spec = load_profile("shhs").annotations
    bad = tmp_path / "bad.xml"
    bad.write_text("<PSGAnnotation><ScoredEvents>")
    with pytest.raises(RecordingError, match="not a valid NSRR XML annotation file"):
        read_hypnogram(bad, spec)
    stageless = tmp_path / "stageless.xml"
    stageless.write_text(NSRR_XML.replace("Stages|Stages", "Other|Other"))
    with pytest.raises(RecordingError) as info:
        read_hypnogram(stageless, spec)
    assert info.value.reason == ("no sleep-stage events: no ScoredEvent has EventType "
                                 "'Stages|Stages' (event types found: ['', 'Arousals|Arousals', 'Other|Other'])")


def test_csv_events_and_tsv_epochs(tmp_path):
    """CSV runs (onset, duration, stage) and TSV one-label-per-epoch give the same epochs."""
    generic = load_profile("generic").annotations
    events = tmp_path / "h.csv"
    events.write_text("onset,duration,stage\n0,60,W\n60,30,N1\n90,60,N2\n")
    per_epoch = tmp_path / "h.tsv"
    per_epoch.write_text("stage\nW\nW\nN1\nN2\nN2\n")
    csv_spec = generic.model_copy(update={"format": "csv"})
    tsv_spec = generic.model_copy(update={"format": "tsv", "table_layout": "epochs"})
    a, _ = hypnogram_to_epochs(read_hypnogram(events, csv_spec), 5, generic.label_map, "a")
    b, _ = hypnogram_to_epochs(read_hypnogram(per_epoch, tsv_spec), 5, generic.label_map, "b")
    assert a.tolist() == b.tolist() == [0, 0, 1, 2, 2]


def test_csv_missing_column(tmp_path):
    """A CSV without the configured columns lists the ones it has."""
    path = tmp_path / "h.csv"
    path.write_text("start,stage\n0,W\n")
    spec = load_profile("generic").annotations.model_copy(update={"format": "csv"})
    with pytest.raises(RecordingError) as info:
        read_hypnogram(path, spec)
    assert info.value.reason == (
        "hypnogram table lacks column(s) ['onset', 'duration']; columns found: ['start', 'stage'] "
        "(set annotations.onset_column/duration_column/stage_column in the profile)")


def test_edf_hypnogram_without_annotations(tmp_path):
    """A plain EDF given as the hypnogram is rejected: it holds no annotations."""
    path = write_edf(tmp_path / "plain.edf", {"EEG": (sine(10, 100, 60, seed=0), 100.0)})
    with pytest.raises(RecordingError, match="has no EDF\\+ annotation signal"):
        read_hypnogram(path, SLEEP_EDF.annotations)


def test_ignored_annotations_are_skipped(tmp_path):
    """Texts matching annotations.ignore globs never reach the label map."""
    path = write_hypnogram(tmp_path / "h.edf", [(0, 60, "W"), (10, 3, "Arousal (ARO SPONT)"),
                                                (60, 30, "N1")])
    hyp = read_hypnogram(path, load_profile("generic").annotations)
    assert hyp.labels == ["W", "N1"]


# -- hypnogram_to_epochs errors ------------------------------------------------------------------

def _hyp(*runs):
    onsets, durations, labels = zip(*runs)
    return Hypnogram(np.array(onsets, float), np.array(durations, float), list(labels))


def test_unknown_label_lists_it_and_the_known_ones():
    """An unknown stage string names the file, the unknown labels and the known ones."""
    with pytest.raises(RecordingError) as info:
        hypnogram_to_epochs(_hyp((0, 30, "W"), (30, 30, "Stage X"), (60, 30, "NREM")), 3,
                            {"W": 0, "N1": 1}, "h.csv")
    assert str(info.value) == (
        "h.csv: unknown stage label(s) ['NREM', 'Stage X']; the profile's label_map knows "
        "['N1', 'W']. Add them to annotations.label_map (or to annotations.ignore if they are "
        "not stages)")


def test_onset_off_the_epoch_grid():
    """An onset that is not a multiple of 30 s is rejected."""
    with pytest.raises(RecordingError) as info:
        hypnogram_to_epochs(_hyp((0, 30, "W"), (45, 30, "W")), 3, {"W": 0}, "h")
    assert info.value.reason == "stage annotation 'W' starts at 45 s, which is not on the 30-s epoch grid of the recording"


def test_overlapping_disagreeing_runs():
    """Two runs claiming one epoch with different stages are rejected."""
    with pytest.raises(RecordingError, match="overlapping stage annotations disagree at epoch 1"):
        hypnogram_to_epochs(_hyp((0, 60, "W"), (30, 30, "N1")), 3, {"W": 0, "N1": 1}, "h")


def test_uncovered_epochs_are_unscored_with_warning():
    """Epochs no run covers become -1 and are counted in a warning."""
    labels, warnings = hypnogram_to_epochs(_hyp((0, 60, "W"), (90, 30, "N1")), 4,
                                           {"W": 0, "N1": 1}, "h")
    assert labels.tolist() == [0, 0, -1, 1]
    assert warnings == ["1 of 4 epochs are not covered by the hypnogram and are unscored (-1)"]


def test_hypnogram_far_shorter_than_signal():
    """A hypnogram covering 2 of 10 epochs is rejected below min_coverage."""
    with pytest.raises(RecordingError) as info:
        hypnogram_to_epochs(_hyp((0, 60, "W")), 10, {"W": 0}, "h", min_coverage=0.5)
    assert info.value.reason == (
        "the hypnogram covers only 2 of the signal's 10 epochs (20%, below annotations.min_coverage "
        "50%); is it the scoring of another recording?")


def test_instant_stage_marker_labels_one_epoch():
    """A stage annotation without duration labels the epoch it starts."""
    labels, _ = hypnogram_to_epochs(_hyp((0, np.nan, "W"), (30, np.nan, "N1")), 2,
                                    {"W": 0, "N1": 1}, "h")
    assert labels.tolist() == [0, 1]


def test_hypnogram_given_as_psg():
    """Passing the annotation-only hypnogram as the PSG says what it is."""
    with pytest.raises(RecordingError) as info:
        read_psg(HYP_FILE)
    assert info.value.reason == ("data records last 0 s: this is an annotation-only EDF+ file "
                                 "(a hypnogram?), not a PSG with signals")


def test_corrupt_signal_header_number(tmp_path):
    """A non-numeric physical minimum is reported with the signal it belongs to."""
    raw = bytearray(PSG_FILE.read_bytes())
    offset = 256 + 7 * 104  # physical minima of the 7 signals
    raw[offset:offset + 8] = b"abc     "
    path = tmp_path / "odd.edf"
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordingError) as info:
        read_psg(path)
    assert info.value.reason == ("corrupt EDF header: field 'physical minimum of signal 1 "
                                 "('EEG Fpz-Cz')' is 'abc', not a number")


def test_parser_messages_are_redacted():
    """Identifying header fields echoed by a parser error are removed from the message."""
    from somnray.data.readers import _redact

    raw = PSG_FILE.read_bytes()
    text = _redact("bad field near 'X F X Female_33yr' on 24.04.89", raw)
    assert "Female" not in text and "24.04.89" not in text
