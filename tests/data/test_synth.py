"""Synthetic cohorts: real files in each cohort's format, stage content, artefacts, determinism, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from pathlib import Path

import defusedxml.ElementTree as ET
import edfio
import mne
import numpy as np
import pytest
from scipy.signal import welch

from somnray.core.errors import ConfigError
from somnray.data import synth
from somnray.data.manifest import parse_manifest_csv

HOURS = 1.0  # short nights keep every test at a few seconds
N_EPOCHS = int(HOURS * 120)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, tuple[Path, list]]:
    """One small cohort per profile, written once for the module."""
    out = {}
    for profile in synth.PROFILES:
        folder = tmp_path_factory.mktemp(profile)
        entries = synth.synthesize_cohort(profile, folder, n_nights=2, seed=7, hours=HOURS)
        out[profile] = (folder, entries)
    return out


def _stage_blocks() -> synth.Hypnogram:
    # Every stage in blocks of 6 min, twice, so that spectra average over many epochs.
    return synth.Hypnogram.from_aasm(np.repeat([0, 1, 2, 3, 4, 2, 0, 4, 3, 1], 12))


# --- hypnograms ------------------------------------------------------------------------------------


def test_hypnogram_proportions_and_structure():
    """8-h hypnograms have realistic stage shares, wake at both edges and more N3 early than late."""
    shares, early_n3, late_n3 = [], 0, 0
    for seed in range(12):
        hyp = synth.simulate_hypnogram(960, seed)
        labels = hyp.aasm
        assert labels[0] == 0 and labels[-1] == 0
        shares.append([np.mean(labels == k) for k in range(5)])
        early_n3 += int(np.sum(labels[:480] == 3))
        late_n3 += int(np.sum(labels[480:] == 3))
    w, n1, n2, n3, rem = np.mean(shares, axis=0)
    assert 0.12 <= w <= 0.30 and 0.03 <= n1 <= 0.12 and 0.38 <= n2 <= 0.55
    assert 0.10 <= n3 <= 0.22 and 0.13 <= rem <= 0.27
    assert early_n3 > 2 * late_n3


def test_short_hypnogram_has_every_stage():
    """A 1-h night is compressed into one cycle that still shows all five stages."""
    for seed in range(5):
        assert set(synth.simulate_hypnogram(N_EPOCHS, seed).aasm.tolist()) >= {0, 1, 2, 3, 4}


def test_hypnogram_rejects_bad_codes():
    """Unknown R&K codes and AASM labels are refused with the offending values."""
    with pytest.raises(ValueError, match="unknown codes"):
        synth.Hypnogram(np.array([0, 7]))
    with pytest.raises(ValueError, match="AASM labels"):
        synth.Hypnogram.from_aasm([0, 5])


# --- signal content --------------------------------------------------------------------------------


def _relative_power(x: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    f, p = welch(x, fs=fs, nperseg=int(4 * fs), axis=-1)
    band = (f >= lo) & (f < hi)
    total = (f >= 0.5) & (f < 30)
    return p[:, band].sum(axis=1) / p[:, total].sum(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stage_spectra_differ_as_intended(seed):
    """Alpha peaks in W, delta in N3, spindles in N2, eye movements in REM/N1, atonia in REM."""
    hyp = _stage_blocks()
    labels = hyp.aasm
    sig = synth.simulate_night(hyp, synth.SLEEP_EDF_CHANNELS, seed)
    pz = sig["EEG Pz-Oz"].reshape(-1, 3000)
    fpz = sig["EEG Fpz-Cz"].reshape(-1, 3000)
    eog = sig["EOG horizontal"].reshape(-1, 3000)
    emg = sig["EMG submental"].reshape(-1, 30)
    alpha = _relative_power(pz, 100, 8, 12)
    delta = _relative_power(fpz, 100, 0.5, 2)
    sigma = _relative_power(fpz, 100, 12, 15)
    by = lambda v, k: float(v[labels == k].mean())  # noqa: E731
    assert by(alpha, 0) > 2 * by(alpha, 3) and by(alpha, 0) > 2 * by(alpha, 2)
    assert by(delta, 3) > by(delta, 2) > by(delta, 4)
    assert by(sigma, 2) > 1.5 * by(sigma, 4)
    assert by(eog.std(axis=1), 4) > 2 * by(eog.std(axis=1), 2)
    assert by(eog.std(axis=1), 1) > 2 * by(eog.std(axis=1), 2)
    assert by(emg, 4) < 0.5 * by(emg, 0) and by(emg, 4) < by(emg, 2)


def test_shhs_eog_difference_carries_the_eye_movements():
    """EOG(L) and EOG(R) carry opposite eye components: their difference beats their sum in REM."""
    hyp = _stage_blocks()
    sig = synth.simulate_night(hyp, synth.SHHS_CHANNELS, 3)
    rem = np.repeat(hyp.aasm == 4, 30 * 50)
    left, right = sig["EOG(L)"][rem], sig["EOG(R)"][rem]
    assert np.std(left - right) > 2 * np.std(left + right)
    assert np.corrcoef(left, right)[0, 1] < -0.3


def test_subject_gain_blurs_amplitude():
    """Stages are not separable by amplitude alone: W of a high-gain subject beats N2 of a low-gain one."""
    hyp = _stage_blocks()
    loud = synth.SubjectTraits(eeg_gain=1.8)
    quiet = synth.SubjectTraits(eeg_gain=0.6)
    w = synth.simulate_night(hyp, synth.SLEEP_EDF_CHANNELS[:1], 1, subject=loud)["EEG Fpz-Cz"]
    n2 = synth.simulate_night(hyp, synth.SLEEP_EDF_CHANNELS[:1], 1, subject=quiet)["EEG Fpz-Cz"]
    per_epoch = lambda x, k: x.reshape(-1, 3000)[hyp.aasm == k].std(axis=1).mean()  # noqa: E731
    assert per_epoch(w, 0) > per_epoch(n2, 2)


def _simulation_cpu_seconds(n_epochs: int) -> float:
    hyp = synth.simulate_hypnogram(n_epochs, 0)
    start = time.process_time()
    synth.simulate_night(hyp, synth.SLEEP_EDF_CHANNELS, 0)
    synth.simulate_night(hyp, synth.SHHS_CHANNELS, 0)
    return time.process_time() - start


def test_simulation_is_vectorised():
    """Two hours of both cohort formats take well under two CPU seconds (no per-sample loops)."""
    assert _simulation_cpu_seconds(240) < 2.0


@pytest.mark.slow
def test_simulation_is_fast_for_a_full_night():
    """A full 8-h night of both cohort formats is simulated in a few CPU seconds."""
    assert _simulation_cpu_seconds(960) < 6.0


# --- Sleep-EDF files -------------------------------------------------------------------------------


def test_sleep_edf_files_read_with_mne(cohorts):
    """SC PSG files open in MNE with the SC labels, the 100/1-Hz native rates and 30-s records."""
    folder, entries = cohorts["sleep-edf"]
    assert [e.psg for e in entries] == ["SC4001E0-PSG.edf", "SC4002E0-PSG.edf"]
    assert [e.subject_id for e in entries] == ["SC400", "SC400"]
    raw = mne.io.read_raw_edf(folder / entries[0].psg, preload=False, verbose="error")
    assert raw.ch_names == [c.label for c in synth.SLEEP_EDF_CHANNELS]
    assert raw.times[-1] + 1 / raw.info["sfreq"] == pytest.approx(HOURS * 3600)
    edf = edfio.read_edf(folder / entries[0].psg)
    rates = {s.label: s.sampling_frequency for s in edf.signals}
    assert rates == {"EEG Fpz-Cz": 100, "EEG Pz-Oz": 100, "EOG horizontal": 100, "Resp oro-nasal": 1,
                     "EMG submental": 1, "Temp rectal": 1, "Event marker": 1}
    assert edf.data_record_duration == 30


def test_sleep_edf_hypnogram_annotations(cohorts):
    """The hypnogram EDF+ reads with mne.read_annotations: SC stage strings, 30-s runs, overrun."""
    folder, entries = cohorts["sleep-edf"]
    for entry in entries:
        assert entry.hypnogram[:6] == entry.psg[:6] and entry.hypnogram.endswith("-Hypnogram.edf")
        ann = mne.read_annotations(folder / entry.hypnogram)
        assert set(ann.description) <= set(synth.SLEEP_EDF_STAGE_TEXT.values())
        assert {"Sleep stage W", "Sleep stage 2"} <= set(ann.description)
        assert np.all(ann.duration % 30 == 0) and np.all(ann.onset % 30 == 0)
        assert all(a != b for a, b in zip(ann.description[:-1], ann.description[1:]))  # runs merged
        assert ann.onset[0] == 0 and np.allclose(ann.onset[1:], ann.onset[:-1] + ann.duration[:-1])
        end = ann.onset[-1] + ann.duration[-1]
        assert end > HOURS * 3600  # the last annotation runs past the signal end
        psg, hyp = edfio.read_edf(folder / entry.psg), edfio.read_edf(folder / entry.hypnogram)
        assert (psg.startdate, psg.starttime) == (hyp.startdate, hyp.starttime)


def test_sleep_edf_nights_of_a_subject_are_consecutive(cohorts):
    """Night 2 of a subject starts the day after night 1."""
    folder, entries = cohorts["sleep-edf"]
    first, second = (edfio.read_edf(folder / e.psg).startdate for e in entries)
    assert second - first == dt.timedelta(days=1)


# --- SHHS files ------------------------------------------------------------------------------------


def test_shhs_edf_labels_and_rates(cohorts):
    """SHHS EDFs carry the NSRR labels at their native rates (EEG 125 Hz, EOG 50 Hz, SaO2 1 Hz)."""
    folder, entries = cohorts["shhs"]
    assert [e.psg for e in entries] == ["shhs1-200001.edf", "shhs1-200002.edf"]
    raw = mne.io.read_raw_edf(folder / entries[0].psg, preload=False, verbose="error")
    assert {"EEG", "EEG(sec)", "EOG(L)", "EOG(R)", "EMG", "ECG", "SaO2", "POSITION"} <= set(raw.ch_names)
    rates = {s.label: s.sampling_frequency for s in edfio.read_edf(folder / entries[0].psg).signals}
    assert rates["EEG"] == rates["EEG(sec)"] == rates["EMG"] == rates["ECG"] == 125
    assert rates["EOG(L)"] == rates["EOG(R)"] == 50 and rates["SaO2"] == rates["POSITION"] == 1


def test_nsrr_xml_stages_tile_the_recording(cohorts):
    """The NSRR XML parses; its stage events tile the whole signal and other events are present."""
    folder, entries = cohorts["shhs"]
    for entry in entries:
        root = ET.parse(folder / entry.hypnogram).getroot()
        assert root.tag == "PSGAnnotation"
        events = root.find("ScoredEvents").findall("ScoredEvent")
        assert events[0].findtext("EventConcept") == "Recording Start Time"
        assert float(events[0].findtext("Start")) == 0
        duration = edfio.read_edf(folder / entry.psg).duration
        assert float(events[0].findtext("Duration")) == duration
        stages = [e for e in events if e.findtext("EventType") == "Stages|Stages"]
        starts = np.array([float(e.findtext("Start")) for e in stages])
        lengths = np.array([float(e.findtext("Duration")) for e in stages])
        assert lengths.sum() == duration and starts[0] == 0
        assert np.allclose(starts[1:], starts[:-1] + lengths[:-1]) and np.all(lengths % 30 == 0)
        concepts = {e.findtext("EventConcept") for e in stages}
        assert concepts <= set(synth.NSRR_STAGE_CONCEPT.values()) and "Wake|0" in concepts
    others = [e.findtext("EventType") for entry in entries
              for e in ET.parse(folder / entry.hypnogram).getroot().iter("ScoredEvent")]
    assert "Respiratory|Respiratory" in others


# --- generic files ---------------------------------------------------------------------------------


def test_generic_edf_and_csv(cohorts):
    """Generic EDF+ has the AASM derivations at 256/512 Hz; the CSV hypnogram covers the night."""
    folder, entries = cohorts["generic"]
    edf = edfio.read_edf(folder / entries[0].psg)
    assert {s.label: s.sampling_frequency for s in edf.signals} == {"C4-M1": 256, "E1-M2": 256, "Chin1-Chin2": 512}
    with open(folder / entries[0].hypnogram, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["onset", "duration", "stage"]
    assert {r["stage"] for r in rows} <= {"W", "N1", "N2", "N3", "R", "?"}
    assert sum(float(r["duration"]) for r in rows) == edf.duration


def test_generic_embedded_annotations(tmp_path):
    """With embed_annotations the stages are EDF+ annotations inside the PSG and no CSV is written."""
    entries = synth.synthesize_cohort("generic", tmp_path, 1, seed=1, hours=0.5, embed_annotations=True)
    assert entries[0].hypnogram is None and not list(tmp_path.glob("*-hypnogram.csv"))
    raw = mne.io.read_raw_edf(tmp_path / entries[0].psg, preload=False, verbose="error")
    stages = [d for d in raw.annotations.description if not d.startswith("Lights")]
    assert set(stages) <= {"W", "N1", "N2", "N3", "R", "?"} and "N2" in stages
    assert raw.annotations.duration[[d in stages for d in raw.annotations.description]].sum() == 1800


# --- manifest, identification, determinism -----------------------------------------------------------


@pytest.mark.parametrize("profile", synth.PROFILES)
def test_manifest_lists_the_files(cohorts, profile):
    """manifest.csv parses with the manifest module and names files that exist."""
    folder, entries = cohorts[profile]
    parsed = parse_manifest_csv((folder / "manifest.csv").read_text(), "manifest.csv")
    assert parsed == entries
    for e in parsed:
        assert (folder / e.psg).is_file() and e.profile == profile and e.split is None
        assert e.hypnogram is None or (folder / e.hypnogram).is_file()


@pytest.mark.parametrize("profile", synth.PROFILES)
def test_fake_identification_is_in_every_edf_header(cohorts, profile):
    """Every EDF header carries the fake patient/recording strings that privacy tests look for."""
    folder, _ = cohorts[profile]
    for path in folder.glob("*.edf"):
        header = path.read_bytes()[:256].decode("ascii")
        for text in synth.SYNTH_IDENTIFYING_STRINGS:
            assert text in header, (path.name, text)
        assert edfio.read_edf(path).patient.name == synth.SYNTH_PATIENT_NAME


def test_same_seed_writes_byte_identical_files(tmp_path):
    """Same seed → byte-identical files; another seed → different signals; night i ignores n_nights."""
    a, b, c, d = (tmp_path / x for x in "abcd")
    config = synth.ArtefactConfig.preset("all")
    synth.synthesize_cohort("shhs", a, 2, seed=3, hours=0.25, artefacts=config)
    synth.synthesize_cohort("shhs", b, 2, seed=3, hours=0.25, artefacts=config)
    synth.synthesize_cohort("shhs", c, 2, seed=4, hours=0.25, artefacts=config)
    synth.synthesize_cohort("shhs", d, 1, seed=3, hours=0.25, artefacts=config)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 7
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "shhs1-200001.edf").read_bytes() != (c / "shhs1-200001.edf").read_bytes()
    assert (a / "shhs1-200001.edf").read_bytes() == (d / "shhs1-200001.edf").read_bytes()


# --- artefacts -------------------------------------------------------------------------------------


def test_artefacts_flag_flat_and_missing_channels(tmp_path):
    """The 'all' preset writes sidecars whose flat/railed epochs are flat or clipped in the file."""
    config = synth.ArtefactConfig.preset("all", missing_eog_fraction=0.5)
    entries = synth.synthesize_cohort("sleep-edf", tmp_path, 4, seed=11, hours=HOURS, artefacts=config)
    saw_missing = saw_present = False
    for entry in entries:
        report = json.loads((tmp_path / f"{entry.recording_id}.artefacts.json").read_text())
        edf = edfio.read_edf(tmp_path / entry.psg)
        signals = {s.label: s for s in edf.signals}
        if report["missing_channels"]:
            saw_missing = True
            assert report["missing_channels"] == ["EOG horizontal"] and "EOG horizontal" not in signals
            assert report["affected_epochs"]["eog"] == list(range(N_EPOCHS))
        else:
            saw_present = True
            assert "EOG horizontal" in signals
        kinds = {ev["kind"] for ev in report["events"]}
        assert {"flat", "noise_burst"} <= kinds and kinds & {"detached_rail", "detached_noise"}
        for ev in report["events"]:
            sig = signals[ev["channel"]]
            fs = int(sig.sampling_frequency)
            epochs = sig.digital[ev["first_epoch"] * 30 * fs:ev["end_epoch"] * 30 * fs].reshape(-1, 30 * fs)
            assert ev["modality"] in report["affected_epochs"]
            if ev["kind"] in ("flat", "flat_night", "detached_rail"):
                assert np.all(epochs.std(axis=1) == 0), ev  # constant (a rail is constant too)
            if ev["kind"] == "detached_rail":
                assert np.all(epochs == sig.digital_max)
            if ev["kind"] in ("noise_burst", "detached_noise"):
                at_rail = (epochs == sig.digital_min) | (epochs == sig.digital_max)
                assert np.all(at_rail.mean(axis=1) > 0.1), ev  # saturating: an availability mask sees it
    assert saw_missing and saw_present


def test_artefacts_leave_other_channels_untouched():
    """Artefacts change only the reported channel segments; dropping EOG keeps the rest bit-identical."""
    hyp = synth.simulate_hypnogram(N_EPOCHS, 0)
    clean = synth.simulate_night(hyp, synth.SHHS_CHANNELS, 0)
    config = synth.ArtefactConfig(flat_segment_probability=1.0, missing_eog_fraction=1.0)
    dirty, report = synth.apply_artefacts(clean, synth.SHHS_CHANNELS, config, 5, N_EPOCHS, "r1")
    assert report.missing_modalities == ["eog"] and set(report.missing_channels) == {"EOG(L)", "EOG(R)"}
    (event,) = report.events
    for label, x in dirty.items():
        if label != event.channel:
            np.testing.assert_array_equal(x, clean[label])
    fs = next(c.fs for c in synth.SHHS_CHANNELS if c.label == event.channel)
    inside = slice(event.start_s * fs, event.end_s * fs)
    assert np.all(dirty[event.channel][inside] == 0)
    outside = np.ones(clean[event.channel].size, dtype=bool)
    outside[inside] = False
    np.testing.assert_array_equal(dirty[event.channel][outside], clean[event.channel][outside])


def test_artefact_config_validation():
    """Out-of-range probabilities and unknown presets raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="flat_segment_probability"):
        synth.ArtefactConfig(flat_segment_probability=1.5)
    with pytest.raises(ConfigError, match="preset"):
        synth.ArtefactConfig.preset("lots")
    assert not synth.ArtefactConfig.preset("none").enabled


def test_synthesize_cohort_reports_all_bad_arguments(tmp_path):
    """Bad arguments are reported together, before anything is written."""
    with pytest.raises(ConfigError) as info:
        synth.synthesize_cohort("edf", tmp_path / "x", 0, hours=100)
    assert len(info.value.errors) == 3
    assert not (tmp_path / "x").exists()


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_writes_folder_and_manifest(tmp_path, capsys):
    """`somnray synth` writes the recordings, sidecars and manifest and prints one summary line."""
    from somnray.jobs.cli import main

    out = tmp_path / "cohort"
    status = main(["synth", "--profile", "sleep-edf", "--nights", "3", "--out", str(out), "--seed", "2",
                   "--hours", "0.25", "--artefacts", "some", "--missing-eog-fraction", "1"])
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "3 sleep-edf recording(s)" in lines[0] and "2 subject(s)" in lines[0]
    entries = parse_manifest_csv((out / "manifest.csv").read_text(), "manifest.csv")
    assert [e.recording_id for e in entries] == ["SC4001E0", "SC4002E0", "SC4011E0"]
    assert len(list(out.glob("*.artefacts.json"))) == 3
    raw = mne.io.read_raw_edf(out / entries[0].psg, preload=False, verbose="error")
    assert "EOG horizontal" not in raw.ch_names


def test_cli_rejects_bad_profile_and_fraction(tmp_path):
    """argparse refuses an unknown profile and a fraction outside [0, 1]."""
    from somnray.jobs.cli import main

    with pytest.raises(SystemExit):
        main(["synth", "--profile", "mass", "--nights", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["synth", "--profile", "shhs", "--nights", "1", "--out", str(tmp_path), "--missing-eog-fraction", "2"])


def test_cli_profile_list_matches_module():
    """The CLI's profile list (kept import-free) matches the generator's."""
    from somnray.jobs import cmd_synth

    assert cmd_synth.PROFILES == synth.PROFILES
