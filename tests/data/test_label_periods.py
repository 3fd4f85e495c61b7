"""Scorings at any label period and in every export form, mapped onto the 30-s epochs of real EDFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from psg_factory import sine, write_edf, write_hypnogram

from somnray.core.errors import ConfigError, RecordingError
from somnray.data.profiles import load_profile
from somnray.data.recording import prepare_recording

#: The clinic of the worked example in docs/profiles.md: 50-Hz EEG and EOG, labels from a table.
PROFILE = """\
name: clinic
channels:
  eeg: {{aliases: ["C4-M1"], required: true}}
  eog: {{aliases: ["E1-M2"], required: true}}
annotations:
{annotations}
trimming: {{rule: none}}
pairing: {{psg_glob: "*.edf", key_regex: '^(.+)\\.', subject_regex: '^(.+)\\.'}}
"""
AASM = '  label_map: {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4}'


def _profile(tmp_path: Path, *lines: str):
    path = tmp_path / "clinic.yaml"
    path.write_text(PROFILE.format(annotations="\n".join(lines)))
    return load_profile(path)


def _psg(tmp_path: Path, seconds: float, **extra) -> Path:
    signals = {"C4-M1": (sine(10, 50, seconds, seed=1), 50.0),
               "E1-M2": (sine(0.5, 50, seconds, seed=2), 50.0), **extra}
    return write_edf(tmp_path / "night.edf", signals)


def _table(tmp_path: Path, rows: list[str], name: str = "stages.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path


def _prepare(psg, hyp, profile):
    return prepare_recording(psg, hyp, profile, recording_id="night", subject_id="s1")


# -- the majority rule -------------------------------------------------------------------------

TWENTY_S = ["W", "N1", "N2", "N2", "R", "W", "N2", "N3", "N3"]  # 9 labels x 20 s = 6 epochs


def test_20_s_scoring_takes_each_epochs_majority_stage(tmp_path):
    """20-s labels W N1 N2 N2 R W N2 N3 N3: each 30-s window is 20 s of one stage + 10 s of the next."""
    profile = _profile(tmp_path, "  format: csv", "  table_layout: epochs", "  label_period: 20", AASM)
    rec = _prepare(_psg(tmp_path, 180), _table(tmp_path, ["stage", *TWENTY_S]), profile)
    # [0,30) W20 N1 10 | [30,60) N1 10 N2 20 | [60,90) N2 20 R10 | [90,120) R10 W20 |
    # [120,150) N2 20 N3 10 | [150,180) N3 30
    assert rec.labels.tolist() == [0, 2, 2, 0, 2, 3]
    assert rec.info["warnings"] == []


def test_20_s_windows_below_min_purity_are_unscored(tmp_path):
    """With min_purity 0.7 the five 20/10 windows are unscored and counted; the pure one stays."""
    profile = _profile(tmp_path, "  format: csv", "  table_layout: epochs", "  label_period: 20",
                       "  min_purity: 0.7", AASM)
    rec = _prepare(_psg(tmp_path, 180), _table(tmp_path, ["stage", *TWENTY_S]), profile)
    assert rec.labels.tolist() == [-1, -1, -1, -1, -1, 3]
    assert rec.info["warnings"] == [
        "5 epoch(s) have no stage covering at least 70% of their 30 s alone (mixed, tied or partly "
        "scored) and are unscored (-1)"]


RK_CODES = "  label_map: {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 9: -1}"  # unquoted R&K codes
FIVE_S = (["0"] * 6 + ["0"] * 3 + ["2"] * 3 + ["1", "1", "2", "2", "5", "5"]
          + ["3"] * 4 + ["4"] * 2)  # 24 labels x 5 s = 4 epochs


def test_5_s_rk_codes_unquoted_ties_are_unscored(tmp_path):
    """5-s R&K codes in a headerless TSV, numeric keys unquoted: ties → -1, S3+S4 merge before voting."""
    profile = _profile(tmp_path, "  format: tsv", "  table_layout: epochs", "  header: false",
                       "  label_period: 5", RK_CODES)
    assert profile.annotations.label_map["5"] == 4
    rec = _prepare(_psg(tmp_path, 120), _table(tmp_path, FIVE_S, "stages.txt"), profile)
    # W30 | W15 N2 15 (tie) | N1 10 N2 10 R10 (tie) | S3 20 + S4 10 = N3 30
    assert rec.labels.tolist() == [0, -1, -1, 3]
    assert rec.info["warnings"] == [
        "2 epoch(s) have no stage covering at least 50% of their 30 s alone (mixed, tied or partly "
        "scored) and are unscored (-1)"]


@pytest.mark.parametrize("period, labels, expected", [
    (10, ["W", "W", "N1", "N1", "N2", "N2", "R", "R", "R"], [0, 2, 4]),
    (15, ["W", "W", "N1", "N2", "N2", "N2"], [0, -1, 2]),
    (30, ["W", "N1", "R"], [0, 1, 4]),
    (60, ["W", "N2", "R"], [0, 0, 2, 2, 4, 4]),
])
def test_label_periods_hand_computed(tmp_path, period, labels, expected):
    """One label per row at 10/15/30/60 s: majority by duration per 30-s epoch, 60-s labels fill two."""
    profile = _profile(tmp_path, "  format: csv", "  table_layout: epochs",
                       f"  label_period: {period}", AASM)
    rec = _prepare(_psg(tmp_path, 30 * len(expected)), _table(tmp_path, ["stage", *labels]), profile)
    assert rec.labels.tolist() == expected


def test_events_with_durations_in_label_periods(tmp_path):
    """Onset/duration events scored at 10 s (W 40 s, N2 50 s) split the second epoch by duration."""
    profile = _profile(tmp_path, "  format: csv", "  label_period: 10", AASM)
    hyp = _table(tmp_path, ["onset,duration,stage", "0,40,W", "40,50,N2"])
    assert _prepare(_psg(tmp_path, 90), hyp, profile).labels.tolist() == [0, 2, 2]


#: TWENTY_S as runs of (onset, duration, stage), as event lists and annotations hold them.
TWENTY_S_RUNS = [(0, 20, "W"), (20, 20, "N1"), (40, 40, "N2"), (80, 20, "R"), (100, 20, "W"),
                 (120, 20, "N2"), (140, 40, "N3")]


def test_edf_annotations_scored_at_20_s(tmp_path):
    """An EDF+ hypnogram of 20-s runs gives the same epochs as the 20-s table."""
    profile = _profile(tmp_path, "  format: edf_annotations", "  label_period: 20", AASM)
    hyp = write_hypnogram(tmp_path / "night-hyp.edf", TWENTY_S_RUNS)
    assert _prepare(_psg(tmp_path, 180), hyp, profile).labels.tolist() == [0, 2, 2, 0, 2, 3]


def test_embedded_edf_annotations_scored_at_20_s(tmp_path):
    """EDF+ stage annotations inside the PSG, scored at 20 s, map like the separate file."""
    profile = _profile(tmp_path, "  format: embedded", "  label_period: 20", AASM)
    psg = write_edf(tmp_path / "night.edf", {"C4-M1": (sine(10, 50, 180, seed=1), 50.0),
                                             "E1-M2": (sine(0.5, 50, 180, seed=2), 50.0)},
                    annotations=TWENTY_S_RUNS)
    assert _prepare(psg, None, profile).labels.tolist() == [0, 2, 2, 0, 2, 3]


def test_nsrr_xml_scored_at_20_s(tmp_path):
    """NSRR XML stage events of 20-s runs map like the other forms."""
    profile = _profile(tmp_path, "  format: nsrr_xml", "  label_period: 20",
                       '  label_map: {"Wake|0": 0, "Stage 1 sleep|1": 1, "Stage 2 sleep|2": 2, '
                       '"Stage 3 sleep|3": 3, "REM sleep|5": 4}')
    concept = {"W": "Wake|0", "N1": "Stage 1 sleep|1", "N2": "Stage 2 sleep|2",
               "N3": "Stage 3 sleep|3", "R": "REM sleep|5"}
    events = "".join(
        f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>{concept[text]}"
        f"</EventConcept><Start>{onset}</Start><Duration>{duration}</Duration></ScoredEvent>"
        for onset, duration, text in TWENTY_S_RUNS)
    hyp = tmp_path / "night-nsrr.xml"
    hyp.write_text(f"<?xml version='1.0'?><PSGAnnotation><ScoredEvents>{events}</ScoredEvents>"
                   "</PSGAnnotation>")
    assert _prepare(_psg(tmp_path, 180), hyp, profile).labels.tolist() == [0, 2, 2, 0, 2, 3]


def test_runs_off_the_label_grid_are_listed_together(tmp_path):
    """An onset off the 20-s grid and a length not a multiple of 20 s are both reported at once."""
    profile = _profile(tmp_path, "  format: csv", "  label_period: 20", AASM)
    hyp = _table(tmp_path, ["onset,duration,stage", "0,20,W", "30,20,N1", "60,25,N2", "100,20,R"])
    with pytest.raises(RecordingError) as info:
        _prepare(_psg(tmp_path, 120), hyp, profile)
    assert info.value.reason == (
        "2 problems: (1) stage annotation 'N1' starts at 30 s, which is not on the 20-s label grid "
        "(annotations.label_period); (2) stage annotation 'N2' at 60 s lasts 25 s, which is not a "
        "multiple of 20 s")


# -- alignment --------------------------------------------------------------------------------

def test_5_s_labels_read_as_30_s_are_rejected_naming_both_lengths(tmp_path):
    """The silent failure: 24 labels of 5 s read at 30 s run 600 s past a 120-s signal → reject."""
    profile = _profile(tmp_path, "  format: tsv", "  table_layout: epochs", "  header: false", RK_CODES)
    with pytest.raises(RecordingError) as info:
        _prepare(_psg(tmp_path, 120), _table(tmp_path, FIVE_S, "stages.txt"), profile)
    assert str(info.value) == (
        f"{tmp_path / 'stages.txt'}: the hypnogram runs 600 s past the end of the signal: its labels "
        "last 720 s, the signal 120 s (4 epochs), more than annotations.max_overrun_s (60 s) allows. "
        "Is annotations.label_period (30 s) the scoring's, and is this the scoring of this "
        "recording? (max_overrun_s: null keeps the recording and drops the labels past its end)")
    assert info.value.recording_id == "night"


@pytest.mark.parametrize("setting, rows", [("", 6), ("  max_overrun_s: null", 24)])
def test_overrun_within_tolerance_or_allowed_is_a_warning(tmp_path, setting, rows):
    """60 s past the end (the default tolerance), or any overrun with max_overrun_s null: a warning."""
    profile = _profile(tmp_path, "  format: csv", "  table_layout: epochs", AASM,
                       *([setting] if setting else []))
    rec = _prepare(_psg(tmp_path, 120), _table(tmp_path, ["stage", *["W"] * rows]), profile)
    past = rows - 4
    assert rec.labels.tolist() == [0, 0, 0, 0]
    assert rec.info["warnings"] == [
        f"the hypnogram runs {past} epochs ({past * 30} s) past the end of the signal (4 epochs); "
        "the labels beyond the signal were dropped"]


def test_channel_and_label_problems_are_reported_together(tmp_path):
    """A missing required channel and unknown labels of one night: one reject listing both."""
    profile = _profile(tmp_path, "  format: csv", "  table_layout: epochs", AASM)
    psg = write_edf(tmp_path / "night.edf", {"E1-M2": (sine(0.5, 50, 90, seed=2), 50.0)})
    hyp = _table(tmp_path, ["stage", "W", "Stage X", "N2"])
    with pytest.raises(RecordingError) as info:
        _prepare(psg, hyp, profile)
    assert str(info.value) == (
        f"{psg}: 2 problems: (1) required channel 'eeg' not found: no signal matches its aliases "
        "['C4-M1']; the file has signals ['E1-M2']; (2) "
        f"{hyp}: unknown stage label(s) ['Stage X']; the profile's label_map knows "
        "['N1', 'N2', 'N3', 'R', 'W']. Add them to annotations.label_map (or to annotations.ignore "
        "if they are not stages)")


# -- a hypnogram stored as a signal -------------------------------------------------------------

def _codes(per_20_s: list[int]) -> np.ndarray:
    return np.repeat(np.array(per_20_s, dtype=float), 20)  # a 1-Hz trace of codes


def test_edf_signal_hypnogram_in_its_own_file(tmp_path):
    """A 1-Hz 'Hypnogram' signal of R&K codes in a separate EDF maps like the 20-s table."""
    profile = _profile(tmp_path, "  format: edf_signal", "  signal: Hypnogram", "  label_period: 20",
                       RK_CODES)
    hyp = write_edf(tmp_path / "night-hyp.edf",
                    {"Hypnogram": (_codes([0, 1, 2, 2, 5, 0, 2, 3, 4]), 1.0)},
                    physical_range=(-1.0, 9.0))
    assert _prepare(_psg(tmp_path, 180), hyp, profile).labels.tolist() == [0, 2, 2, 0, 2, 3]


def test_edf_signal_hypnogram_inside_the_psg(tmp_path):
    """Without a hypnogram file, format edf_signal reads the stage channel of the PSG itself."""
    profile = _profile(tmp_path, "  format: edf_signal", "  signal: sleep stage",
                       "  label_period: 20", RK_CODES)
    psg = _psg(tmp_path, 180, **{"Sleep Stage": (_codes([0, 1, 2, 2, 5, 0, 2, 3, 4]), 1.0)})
    assert _prepare(psg, None, profile).labels.tolist() == [0, 2, 2, 0, 2, 3]


def test_edf_signal_missing_names_the_signals_found(tmp_path):
    """A PSG without the named stage signal is rejected with the signals it has."""
    profile = _profile(tmp_path, "  format: edf_signal", "  signal: Hypnogram", RK_CODES)
    psg = _psg(tmp_path, 90)
    with pytest.raises(RecordingError) as info:
        _prepare(psg, None, profile)
    assert str(info.value) == (f"{psg}: no hypnogram signal 'Hypnogram' (annotations.signal); the "
                               "file has signals ['C4-M1', 'E1-M2']")


def test_edf_signal_needs_the_signal_key(tmp_path):
    """format edf_signal without annotations.signal is a profile error saying what to add."""
    with pytest.raises(ConfigError) as info:
        _profile(tmp_path, "  format: edf_signal", RK_CODES)
    assert info.value.errors == [
        "annotations: format 'edf_signal' needs annotations.signal: the label of the "
        "signal that holds the stage codes"]


def test_unreadable_scoring_and_channel_problems_are_reported_together(tmp_path):
    """A hypnogram table without its stage column and a missing required channel: one reject."""
    profile = _profile(tmp_path, "  format: csv", "  table_layout: epochs", AASM)
    psg = write_edf(tmp_path / "night.edf", {"E1-M2": (sine(0.5, 50, 90, seed=2), 50.0)})
    hyp = _table(tmp_path, ["label", "W", "N2", "N2"])
    with pytest.raises(RecordingError) as info:
        _prepare(psg, hyp, profile)
    assert str(info.value) == (
        f"{psg}: 2 problems: (1) required channel 'eeg' not found: no signal matches its aliases "
        f"['C4-M1']; the file has signals ['E1-M2']; (2) {hyp}: hypnogram table lacks column(s) "
        "['stage']; columns found: ['label'] (set annotations.onset_column/duration_column/"
        "stage_column in the profile)")
    assert info.value.recording_id == "night"
