"""somnray inspect: signals, annotations and hypnograms of real files, and a profile prepare accepts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import edfio
import numpy as np
import pytest
from psg_factory import START, sine, write_edf, write_hypnogram

from somnray.core.errors import ConfigError
from somnray.data.discovery import discover, load_manifest
from somnray.data.inspection import draft_profile, format_report, guess_modality, guess_stage, inspect_path
from somnray.data.profiles import load_profile
from somnray.data.recording import prepare_recording
from somnray.jobs.cli import main

SECONDS = 300.0


def _clinic_psg(path: Path, rate: float = 50.0, annotations=None) -> Path:
    """A 50-Hz clinical-style montage: C4-A1, C3-A2, E1, E2, chin EMG, SpO2."""
    return write_edf(path, {
        "C4-A1": (sine(10, rate, SECONDS, seed=1), rate),
        "C3-A2": (sine(9, rate, SECONDS, seed=2), rate),
        "E1": (sine(0.5, rate, SECONDS, seed=3), rate),
        "E2": (sine(0.5, rate, SECONDS, amplitude=20, seed=4), rate),
        "Chin EMG": (sine(5, rate, SECONDS, amplitude=10, seed=5), rate),
    }, record_s=30, annotations=annotations)


def _csv_hypnogram(path: Path) -> Path:
    """Events CSV: onset, duration, stage (R&K numeric codes, as many exporters write)."""
    path.write_text("onset,duration,stage\n0,60,0\n60,60,1\n120,120,2\n240,30,5\n270,30,9\n")
    return path


def test_guess_modality_from_names_rates_and_units():
    """EEG/EOG/EMG are told from their labels; a non-voltage or sub-1-Hz signal is none of them."""
    assert guess_modality("C4-A1", 200, "uV") == "eeg"
    assert guess_modality("EEG Fpz-Cz", 100, "uV") == "eeg"
    assert guess_modality("E1", 200, "uV") == "eog"
    assert guess_modality("EOG(L)", 50, "uV") == "eog"
    assert guess_modality("Chin1-Chin2", 200, "uV") == "emg"
    assert guess_modality("SpO2", 1, "%") is None
    assert guess_modality("EEG", 0.5, "uV") is None


def test_guess_stage_reads_aasm_rk_and_nsrr_spellings():
    """Stage spellings map to classes; R&K numbering puts 4 in N3 and 5 in REM."""
    assert [guess_stage(t) for t in ("W", "Sleep stage W", "N1", "S2", "Stage 3 sleep|3", "REM",
                                     "Sleep stage R", "?", "Movement time")] == [0, 0, 1, 2, 3, 4, 4, -1, -1]
    assert guess_stage("4", numeric_rk=True) == 3 and guess_stage("5", numeric_rk=True) == 4
    assert guess_stage("Arousal") is None


def test_inspect_folder_pairs_lists_and_drafts_a_profile_prepare_accepts(tmp_path):
    """A folder of 50-Hz PSGs with CSV hypnograms: the report and a draft that prepares them."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    for night in ("P01_night1", "P02_night1"):
        _clinic_psg(folder / f"{night}.edf")
        _csv_hypnogram(folder / f"{night}_hypnogram.csv")
    result = inspect_path(str(folder))
    assert [(p.name, p.hypnogram) for p in result.psgs] == [
        ("P01_night1.edf", "P01_night1_hypnogram.csv"), ("P02_night1.edf", "P02_night1_hypnogram.csv")]
    text = format_report(result)
    assert "  C4-A1                      50 uV     [-500, 500]                   300  eeg" in text
    assert "  labels: '0' ×1, '1' ×1, '2' ×1, '5' ×1, '9' ×1" in text
    draft = draft_profile(result, "clinic")
    assert '    aliases: ["C4-A1"]\n    fallbacks:' in draft
    assert '    aliases: ["E1"]\n    reference: ["E2"]' in draft
    assert '    "5": 4\n' in draft and '    "9": -1\n' in draft
    path = tmp_path / "clinic.yaml"
    path.write_text(draft)
    profile = load_profile(path)
    entries = discover(str(folder), profile)
    assert [(e.recording_id, Path(e.hypnogram).name) for e in entries] == [
        ("P01_night1", "P01_night1_hypnogram.csv"), ("P02_night1", "P02_night1_hypnogram.csv")]
    rec = prepare_recording(folder / "P01_night1.edf", folder / "P01_night1_hypnogram.csv", profile,
                            recording_id="P01_night1", subject_id="P01")
    assert rec.info["channels"]["eeg"]["label"] == "C4-A1"
    assert rec.info["channels"]["eeg"]["band"] == [0.3, 22.5]
    assert rec.info["channels"]["eog"]["reference"] == "E2"


def test_inspect_pairs_sleep_edf_names_by_a_common_prefix(tmp_path):
    """SC4001E0-PSG.edf pairs with SC4001EC-Hypnogram.edf by their first 7 characters."""
    _clinic_psg(tmp_path / "SC4001E0-PSG.edf", rate=100.0)
    write_hypnogram(tmp_path / "SC4001EC-Hypnogram.edf", [(0, 150, "Sleep stage W"),
                                                           (150, 150, "Sleep stage 2")])
    result = inspect_path(str(tmp_path))
    assert result.key_regex == "^(.{7})"
    assert result.psgs[0].hypnogram == "SC4001EC-Hypnogram.edf"
    draft = draft_profile(result)
    assert "  format: edf_annotations\n" in draft
    assert '  hypnogram_glob: "*-Hypnogram.edf"' in draft and '  psg_glob: "*-PSG.edf"' in draft
    (tmp_path / "p.yaml").write_text(draft)
    entries = discover(str(tmp_path), load_profile(tmp_path / "p.yaml"))
    assert [Path(e.hypnogram).name for e in entries] == ["SC4001EC-Hypnogram.edf"]


def test_inspect_reports_the_period_of_a_one_label_per_row_hypnogram(tmp_path):
    """A text file of one label per 5 s beside a 300-s PSG: the report states the implied period."""
    _clinic_psg(tmp_path / "n7.edf")
    (tmp_path / "n7_hypnogram.txt").write_text("W\n" * 30 + "N2\n" * 30)
    text = format_report(inspect_path(str(tmp_path)))
    assert "  hypnogram: n7_hypnogram.txt\n  one label per row: 60 rows over 300 s = one label every 5 s" in text
    assert "n7_hypnogram.txt\n  csv, columns ['column 1']\n  labels: 'N2' ×30, 'W' ×30" in text


def test_draft_of_a_5_s_rk_text_scoring_states_its_period_and_maps_s4_to_n3(tmp_path):
    """R&K letters every 5 s: the draft says label_period 5 and 4 = S4 → N3; prepared labels are right."""
    _clinic_psg(tmp_path / "n8.edf")
    # 20-s scoring written as four 5-s rows each: W, 4, R, 2, then W again (300 s in all)
    rows = ["W"] * 4 + ["4"] * 4 + ["R"] * 4 + ["2"] * 4 + ["W"] * 44
    (tmp_path / "n8_hypnogram.txt").write_text("\n".join(rows) + "\n")
    draft = draft_profile(inspect_path(str(tmp_path)))
    assert "  label_period: 5 " in draft
    assert '    "4": 3\n' in draft and '    "R": 4\n' in draft
    (tmp_path / "draft.yaml").write_text(draft)
    [entry] = discover(str(tmp_path), load_profile(tmp_path / "draft.yaml"))
    rec = prepare_recording(entry.psg, entry.hypnogram, _without_trimming(tmp_path / "draft.yaml"),
                            recording_id="n8", subject_id="n8")
    # rows: W 0-20 s, S4 20-40 s, R 40-60 s, 2 60-80 s, W 80-300 s.  By majority of duration:
    # epoch 0 (0-30 s) W 20 s + N3 10 s → W; epoch 1 (30-60 s) N3 10 s + REM 20 s → REM;
    # epoch 2 (60-90 s) N2 20 s + W 10 s → N2; epochs 3-9 W
    assert rec.labels.tolist() == [0, 4, 2, 0, 0, 0, 0, 0, 0, 0]


def _without_trimming(path: Path):
    from somnray.data.profiles import CohortProfile

    data = load_profile(path).model_dump()
    data["trimming"]["rule"] = "none"
    return CohortProfile.model_validate(data)


def test_inspect_file_with_embedded_stages_and_events(tmp_path):
    """EDF+ annotations are listed by kind; stages go to label_map, events to ignore."""
    path = _clinic_psg(tmp_path / "n.edf", annotations=[(0, 150, "Sleep stage W"), (40, 3, "Arousal"),
                                                        (150, 150, "Sleep stage N2")])
    result = inspect_path(str(path))
    text = format_report(result)
    assert "  annotations: 'Arousal' ×1, 'Sleep stage N2' ×1, 'Sleep stage W' ×1" in text
    draft = draft_profile(result)
    assert "  format: embedded\n" in draft
    assert '  ignore: ["Arousal"]' in draft
    (tmp_path / "p.yaml").write_text(draft)
    rec = prepare_recording(path, None, load_profile(tmp_path / "p.yaml"), recording_id="n",
                            subject_id="n")
    assert rec.labels.tolist()[:5] == [0, 0, 0, 0, 0]


def test_inspect_never_shows_patient_or_recording_fields(tmp_path):
    """Patient name, code and recording fields in the header appear nowhere in report or draft."""
    sig = edfio.EdfSignal(sine(10, 100, SECONDS, seed=1), 100, label="EEG C4-A1",
                          physical_range=(-500, 500), physical_dimension="uV")
    edf = edfio.Edf([sig], patient=edfio.Patient(code="MRN4711", name="Jane_Doe",
                                                 birthdate=dt.date(1950, 1, 2)),
                    recording=edfio.Recording(startdate=START.date(), hospital_administration_code="ADM99",
                                              investigator_technician_code="TechBob"),
                    starttime=START.time())
    edf.write(tmp_path / "night.edf")
    result = inspect_path(str(tmp_path / "night.edf"))
    shown = format_report(result) + draft_profile(result)
    for secret in ("MRN4711", "Jane", "Doe", "ADM99", "TechBob", "1950", "2001"):
        assert secret not in shown


def test_inspect_cli_writes_the_draft_and_reports_a_bad_path(tmp_path, capsys):
    """`somnray inspect FILE --draft` prints the report and writes the YAML; a bad path is one line."""
    path = _clinic_psg(tmp_path / "n.edf")
    assert main(["inspect", str(path), "--draft", str(tmp_path / "d.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}\n  duration 300 s, 5 signal(s)\n")
    assert load_profile(tmp_path / "d.yaml").channels["eeg"].aliases == ["C4-A1"]
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == (f"somnray inspect: error: {tmp_path / 'missing'}: 1 problem(s):\n"
                                       "  - no such file or folder\n")


# -- prepare takes a bare EDF -----------------------------------------------------------------------

def test_bare_edf_is_one_entry_with_its_paired_or_named_hypnogram(tmp_path):
    """One EDF path makes one manifest entry; its hypnogram is paired, or the one named."""
    profile = load_profile("sleep-edf")
    psg = _clinic_psg(tmp_path / "SC4001E0-PSG.edf", rate=100.0)
    write_hypnogram(tmp_path / "SC4001EC-Hypnogram.edf", [(0, 300, "Sleep stage W")])
    (entry,) = load_manifest(str(psg), profile)
    assert (entry.recording_id, entry.subject_id) == ("SC4001E0", "SC400")
    assert Path(entry.hypnogram).name == "SC4001EC-Hypnogram.edf"
    other = write_hypnogram(tmp_path / "other.edf", [(0, 300, "Sleep stage 2")])
    (entry,) = load_manifest(str(psg), profile, hypnogram=str(other))
    assert entry.hypnogram.endswith("/other.edf")


def test_hypnogram_option_needs_a_single_edf(tmp_path):
    """Naming a hypnogram with a folder input is refused with a clear reason."""
    with pytest.raises(ConfigError) as info:
        load_manifest(str(tmp_path), load_profile("generic"), hypnogram=str(tmp_path / "h.csv"))
    assert info.value.errors == ["a hypnogram can be named only with a single EDF/BDF input, not "
                                   "with a manifest or a folder"]


@pytest.mark.integration
def test_inspect_then_prepare_a_bare_edf_with_its_hypnogram(ray_local, tmp_path, capsys):
    """inspect drafts a profile; `somnray prepare night.edf --hypnogram h.csv` prepares with it."""
    night = _clinic_psg(tmp_path / "night.edf")
    hyp = _csv_hypnogram(tmp_path / "scoring.csv")
    assert main(["inspect", str(tmp_path), "--draft", str(tmp_path / "d.yaml")]) == 0
    capsys.readouterr()
    code = main(["prepare", str(night), "--hypnogram", str(hyp), "--profile", str(tmp_path / "d.yaml"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    assert "1 recording(s): 1 prepared, 0 already prepared, 0 rejected" in out[0]
    assert out[-1].startswith(f"file://{tmp_path}/out/my-cohort-")


# -- a single file: the hypnogram beside it --------------------------------------------------------

def _rk_rows(path: Path) -> Path:
    """A clinic's text scoring: one R&K code per 5-s row, scored in 20-s epochs (W, S4, REM, S2, W...)."""
    path.write_text("\n".join(["0"] * 4 + ["4"] * 4 + ["5"] * 4 + ["2"] * 4 + ["0"] * 44) + "\n")
    return path


def test_inspect_a_single_edf_pairs_the_hypnogram_beside_it(tmp_path):
    """`inspect P01_n1.edf` finds P01_n1.txt beside it (not P02's), reports its 5-s period and
    drafts a csv profile whose labels prepare as hand-computed."""
    for night in ("P01_n1", "P02_n1"):
        _clinic_psg(tmp_path / f"{night}.edf")
        _rk_rows(tmp_path / f"{night}.txt")
    psg = tmp_path / "P01_n1.edf"
    result = inspect_path(str(psg))
    assert [h.name for h in result.hypnograms] == [f"{tmp_path}/P01_n1.txt"]
    text = format_report(result)
    assert (f"  hypnogram: {tmp_path}/P01_n1.txt\n"
            "  one label per row: 60 rows over 300 s = one label every 5 s\n"
            f"{tmp_path}/P01_n1.txt\n  csv, columns ['column 1']\n"
            "  labels: '0' ×48, '2' ×4, '4' ×4, '5' ×4") in text
    draft = draft_profile(result)
    assert "  format: csv\n" in draft and "  label_period: 5 " in draft
    assert '    "4": 3\n' in draft and '    "5": 4\n' in draft
    assert '  hypnogram_glob: "*.txt"' in draft
    (tmp_path / "draft.yaml").write_text(draft)
    (entry,) = load_manifest(str(psg), load_profile(tmp_path / "draft.yaml"))
    assert Path(entry.hypnogram).name == "P01_n1.txt"
    rec = prepare_recording(psg, entry.hypnogram, _without_trimming(tmp_path / "draft.yaml"),
                            recording_id="P01_n1", subject_id="P01")
    # W 0-20 s, S4 (N3) 20-40 s, REM 40-60 s, S2 60-80 s, W after: epoch 0 W 20 s > N3 10 s;
    # epoch 1 REM 20 s > N3 10 s; epoch 2 N2 20 s > W 10 s; the rest W
    assert rec.labels.tolist() == [0, 4, 2, 0, 0, 0, 0, 0, 0, 0]


def test_inspect_a_single_sleep_edf_file_pairs_by_the_common_prefix(tmp_path):
    """SC4001E0-PSG.edf on its own pairs with SC4001EC-Hypnogram.edf beside it, not SC4002's."""
    for n in ("1", "2"):
        _clinic_psg(tmp_path / f"SC400{n}E0-PSG.edf", rate=100.0)
        write_hypnogram(tmp_path / f"SC400{n}EC-Hypnogram.edf", [(0, 150, "Sleep stage W"),
                                                                 (150, 150, f"Sleep stage {n}")])
    result = inspect_path(str(tmp_path / "SC4001E0-PSG.edf"))
    assert result.key_regex == "^(.{7})"
    assert result.psgs[0].hypnogram == f"{tmp_path}/SC4001EC-Hypnogram.edf"
    assert result.stage_labels() == {"Sleep stage W": 1, "Sleep stage 1": 1}
    assert "  format: edf_annotations\n" in draft_profile(result)


def test_inspect_hypnogram_option_names_the_scoring_file(tmp_path, capsys):
    """`inspect night.edf --hypnogram scoring.csv` reports that file as the night's; with a
    folder the option is refused with one line."""
    night = _clinic_psg(tmp_path / "night.edf")
    hyp = _csv_hypnogram(tmp_path / "scoring.csv")
    assert main(["inspect", str(night), "--hypnogram", str(hyp)]) == 0
    out = capsys.readouterr().out
    assert (f"  hypnogram: {hyp}\n{hyp}\n  csv, columns ['onset', 'duration', 'stage']\n"
            "  labels: '0' ×1, '1' ×1, '2' ×1, '5' ×1, '9' ×1\n") in out
    assert "  format: csv\n" in out and "placeholders" not in out
    assert main(["inspect", str(tmp_path), "--hypnogram", str(hyp)]) == 1
    assert capsys.readouterr().err == (
        f"somnray inspect: error: {tmp_path}: 1 problem(s):\n  - a hypnogram can be named only "
        "with a single EDF/BDF input, not with a folder\n")


# -- a hypnogram stored as a signal ---------------------------------------------------------------

STAGE_SECONDS = 180.0
#: R&K codes every 20 s: W S1 S2 S2 REM W S2 S3 S4 (as in test_label_periods)
RK_20_S = [0, 1, 2, 2, 5, 0, 2, 3, 4]


def _stage_trace(rate: float = 1.0):
    """The R&K codes as a signal sampled at ``rate`` Hz."""
    return np.repeat(np.array(RK_20_S, dtype=float), int(20 * rate))


def _montage(seconds: float = STAGE_SECONDS) -> dict:
    return {"C4-A1": (sine(10, 50, seconds, seed=1), 50.0), "E1": (sine(0.5, 50, seconds, seed=3), 50.0),
            "E2": (sine(0.5, 50, seconds, amplitude=20, seed=4), 50.0)}


def test_inspect_recognises_a_stage_code_channel_and_drafts_edf_signal(tmp_path):
    """A 1-Hz 'Hypnogram' channel of R&K codes in the PSG: reported as stage codes (not a
    modality), drafted as format edf_signal with label_period 20 and R&K codes; prepare agrees."""
    psg = write_edf(tmp_path / "night.edf", {**_montage(), "Hypnogram": (_stage_trace(), 1.0)},
                    record_s=20)
    result = inspect_path(str(psg))
    text = format_report(result)
    assert "  Hypnogram                   1 uV     [-500, 500]                   180  stage codes\n" in text
    assert ("  stage codes in 'Hypnogram' (samples): '0' ×40, '1' ×20, '2' ×60, '3' ×20, '4' ×20, "
            "'5' ×20; codes change on a 20-s grid\n") in text
    assert text.endswith("  hypnogram: none paired (stages in signal 'Hypnogram')")
    draft = draft_profile(result)
    assert ('  format: edf_signal\n  signal: "Hypnogram"          # its values are the stage codes below\n'
            "  label_period: 20 ") in draft
    assert '    "4": 3\n' in draft and '    "5": 4\n' in draft and "placeholders" not in draft
    assert "Hypnogram" not in draft.split("annotations:")[0]  # not offered as a channel
    (tmp_path / "draft.yaml").write_text(draft)
    rec = prepare_recording(psg, None, _without_trimming(tmp_path / "draft.yaml"), recording_id="n",
                            subject_id="n")
    # 20-s W N1 N2 N2 R W N2 N3 N3 by majority per 30 s: W, N2, N2, W, N2, N3
    assert rec.labels.tolist() == [0, 2, 2, 0, 2, 3]


def test_inspect_a_30_s_stage_channel_needs_no_label_period(tmp_path):
    """A 'Sleep stage' channel with one code per 30-s epoch (1/30 Hz) drafts no label_period."""
    codes = np.array([0, 0, 2, 2, 3, 5], dtype=float)
    psg = write_edf(tmp_path / "night.edf", {**_montage(), "Sleep stage": (codes, 1 / 30)}, record_s=30)
    result = inspect_path(str(psg))
    assert ("  stage codes in 'Sleep stage' (samples): '0' ×2, '2' ×2, '3' ×1, '5' ×1; codes change "
            "on a 30-s grid") in format_report(result)
    draft = draft_profile(result)
    assert '  format: edf_signal\n  signal: "Sleep stage"' in draft and "label_period" not in draft
    (tmp_path / "draft.yaml").write_text(draft)
    rec = prepare_recording(psg, None, _without_trimming(tmp_path / "draft.yaml"), recording_id="n",
                            subject_id="n")
    assert rec.labels.tolist() == [0, 0, 2, 2, 3, 4]


def test_inspect_pairs_an_edf_holding_only_a_stage_channel(tmp_path):
    """night-hyp.edf with one 'Hypnogram' signal beside night.edf is its scoring (format
    edf_signal); the drafted profile prepares the pair."""
    psg = write_edf(tmp_path / "night.edf", _montage(), record_s=20)
    write_edf(tmp_path / "night-hyp.edf", {"Hypnogram": (_stage_trace(), 1.0)}, physical_range=(-1.0, 9.0))
    result = inspect_path(str(tmp_path))
    assert result.psgs[0].hypnogram == "night-hyp.edf"
    assert ("night-hyp.edf\n  edf_signal, signal 'Hypnogram' (samples), codes change on a 20-s grid\n"
            "  labels: '0' ×40, '1' ×20, '2' ×60, '3' ×20, '4' ×20, '5' ×20") in format_report(result)
    draft = draft_profile(result)
    assert '  format: edf_signal\n  signal: "Hypnogram"' in draft and "  label_period: 20 " in draft
    (tmp_path / "draft.yaml").write_text(draft)
    [entry] = discover(str(tmp_path), load_profile(tmp_path / "draft.yaml"))
    assert Path(entry.hypnogram).name == "night-hyp.edf"
    rec = prepare_recording(psg, entry.hypnogram, _without_trimming(tmp_path / "draft.yaml"),
                            recording_id="night", subject_id="night")
    assert rec.labels.tolist() == [0, 2, 2, 0, 2, 3]
