"""Self-contained bundles: a model trained with a user's own profile YAML scores EDFs through the
CLI and over HTTP without the profile being named again; the bundle carries its card and hashes,
and what it records of its training data flags nights recorded unlike them (domain shift)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from loopback import free_port  # tests/ is on sys.path (conftest.py)
from run_factory import write_config  # tests/train is on sys.path (no package)

from somnray.jobs import cli

#: The user's own profile: Sleep-EDF's layout, with its own name and an EEG band-pass of its own.
OWN_PROFILE = "my-lab-fpz"
#: Channel map that reads both the Sleep-EDF layout and the generic one (C4-M1, E1-M2 at 256 Hz).
EITHER_LAYOUT = ["--channel-map", "eeg=EEG Fpz-Cz,C4-M1", "--channel-map", "eog=EOG horizontal,E1-M2"]
#: Each shifted night (file stem = recording id) and the checks that must flag it.
SHIFTED = {"amp10": {"amplitude"}, "noise": {"band_power"}, "generic": {"native_sfreq", "signal"}}


def _rewrite_eeg(src: Path, dst: Path, change) -> Path:
    """A copy of the EDF ``src`` whose ``EEG Fpz-Cz`` is ``change(signal) -> (samples, physical_range)``."""
    import edfio

    edf = edfio.read_edf(src)
    signals = []
    for sig in edf.signals:
        if sig.label == "EEG Fpz-Cz":
            data, physical_range = change(sig)
            sig = edfio.EdfSignal(data, sig.sampling_frequency, label=sig.label,
                                  physical_dimension=sig.physical_dimension, physical_range=physical_range,
                                  digital_range=sig.digital_range)
        signals.append(sig)
    edfio.Edf(signals, patient=edf.patient, recording=edf.recording, starttime=edf.starttime,
              data_record_duration=edf.data_record_duration).write(dst)
    return dst


@pytest.fixture(scope="module")
def domain_nights(synth_cohort, tmp_path_factory):
    """Nights like the training ones (4 new synthetic subjects) and three shifted ones made from
    the same generator: the EEG ×10 (its header range too, so nothing clips), the EEG replaced by
    white noise of its own RMS, and a generic-layout night (C4-M1/E1-M2 at 256 Hz)."""
    import shutil

    quiet = synth_cohort("sleep-edf", n_nights=4, hours=1.0, seed=7)
    shifted = tmp_path_factory.mktemp("shifted")
    src = quiet.path / quiet.entries[0].psg
    _rewrite_eeg(src, shifted / "amp10.edf",
                 lambda s: (s.data * 10, (10 * s.physical_min, 10 * s.physical_max)))
    noise = np.random.default_rng(1)
    _rewrite_eeg(src, shifted / "noise.edf",
                 lambda s: (noise.standard_normal(len(s.data)) * s.data.std(), s.physical_range))
    generic = synth_cohort("generic", n_nights=1, hours=1.0, seed=3)
    shutil.copy(generic.path / generic.entries[0].psg, shifted / "generic.edf")
    return quiet, shifted


@pytest.fixture(scope="module")
def own_profile_run(ray_local, synth_cohort, tmp_path_factory, one_torch_thread):
    """A coresleep_tiny run trained (4 steps) on a cohort prepared with a profile YAML file."""
    from importlib import resources

    from somnray.data import prepare_cohort
    from somnray.data.profiles import load_profile

    root = tmp_path_factory.mktemp("own-profile")
    shipped = resources.files("somnray.data").joinpath("profiles", "sleep-edf.yaml").read_text()
    doc = yaml.safe_load(shipped)
    doc["name"] = OWN_PROFILE
    doc["channels"]["eeg"]["band"] = [0.3, 35.0]
    profile_file = root / "my-lab.yaml"
    profile_file.write_text(yaml.safe_dump(doc))
    cohort = synth_cohort("sleep-edf", n_nights=8, hours=1.0)
    # The folder, not synth's manifest: its rows name the shipped profile.
    result = prepare_cohort(str(cohort.path), load_profile(profile_file), f"file://{root / 'store'}",
                            num_workers=2, progress=False)
    assert result.rejected == 0, result
    cfg = write_config(root / "exp.yaml", dataset=result.dataset_uri, storage_uri=str(root / "runs"),
                       name="own", optim={"max_steps": 4, "validate_every": 2})
    assert cli.main(["train", str(cfg)]) == 0
    profile_file.unlink()  # scoring must not need it any more
    return root / "runs" / "own", cohort, result.dataset_uri


@pytest.mark.integration
def test_bundle_embeds_profile_summary_card_and_weights_hash(own_profile_run):
    """model.json carries the full profile, window rule, classes, signal summary and the weights'
    SHA-256; MODEL_CARD.md and model_card.json describe the training data and recipe."""
    run, _, _ = own_profile_run
    bundle = run / "model"
    info = json.loads((bundle / "model.json").read_text())
    assert info["profile"]["name"] == OWN_PROFILE and info["profile"]["channels"]["eeg"]["band"] == [0.3, 35.0]
    assert info["profile"]["channels"]["eeg"]["aliases"] == ["EEG Fpz-Cz"]
    assert info["window"]["sequence_length"] == 11 and info["window"]["default_stride"] == 11
    assert info["class_names"] == ["W", "N1", "N2", "N3", "REM"]
    # Calibrated at export on the validation subject's nights (fitted T, ECE measured before and after).
    calibration = info["calibration"]
    assert calibration["method"] == "temperature" and calibration["n_epochs"] >= 100
    assert 0.05 < calibration["temperature"] < 20
    assert calibration["ece_after"] <= calibration["ece_before"]
    assert 0.3 <= calibration["low_confidence_threshold"] <= 0.9
    assert calibration["threshold_rule"]["flag_error_rate"] == 0.5
    assert sum(b["count"] for b in calibration["reliability"]["after"]) == calibration["n_epochs"]
    assert info["weights_sha256"] == hashlib.sha256((bundle / "model.pt").read_bytes()).hexdigest()
    assert set(info["data_summary"]) == {"eeg", "eog"}
    eeg = info["data_summary"]["eeg"]
    assert eeg["n_epochs"] > 100 and sum(eeg["relative_band_power"].values()) == pytest.approx(1.0, abs=1e-4)
    assert 0 < eeg["rms_quantiles"]["0.05"] < eeg["rms_quantiles"]["0.95"]

    card = json.loads((bundle / "model_card.json").read_text())
    assert card["weights_sha256"] == info["weights_sha256"]
    data = card["training_data"]
    assert data["cohort_profile"] == OWN_PROFILE and data["nights"]["train"] >= 1
    assert sum(data["class_histogram"].values()) > 0 and data["manifest_sha256"] and len(data["manifest_sha256"]) == 64
    assert "Kontras" in card["model"]["paper"] and card["evaluation"] is None
    assert card["calibration"]["temperature"] == calibration["temperature"]
    text = (bundle / "MODEL_CARD.md").read_text()
    assert "not a medical device" in text and info["weights_sha256"] in text and OWN_PROFILE in text
    assert "## Calibration" in text and f"T = {calibration['temperature']:.3f}" in text


@pytest.mark.integration
def test_cli_scores_an_edf_without_naming_the_profile(own_profile_run, tmp_path, capsys):
    """somnray score RUN night.edf --out: exit 0, one night scored with the bundle's own profile."""
    run, cohort, _ = own_profile_run
    psg = cohort.path / cohort.entries[0].psg
    out = tmp_path / "scored"
    assert cli.main(["score", str(run), str(psg), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "1 recording(s): 1 scored, 0 already scored, 0 rejected" in printed
    assert len(list(out.glob("*/*.csv"))) >= 1


@pytest.mark.integration
def test_http_scores_an_edf_without_naming_the_profile(own_profile_run, domain_nights):
    """The Serve app over the run answers 200 with one stage per 1-h night epoch; no profile named.
    A night like the training ones has no domain-shift warning; the ×10 one has one, with its reason."""
    from ray import serve

    from somnray.serve.app import build_app
    from somnray.serve.config import ServeConfig

    run, cohort, _ = own_profile_run
    psg = cohort.path / cohort.entries[0].psg
    port = free_port()
    config = ServeConfig(run_uri=str(run), port=port, model_num_cpus=0, preprocess_num_cpus=0,
                         ingress_num_cpus=0, device="cpu", precision="fp32")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(config), name="own-profile", route_prefix="/")
        answer = requests.post(f"http://127.0.0.1:{port}/v1/score", timeout=120,
                               files={"file": ("night.edf", psg.read_bytes(), "application/octet-stream")})
        loud = requests.post(f"http://127.0.0.1:{port}/v1/score", timeout=120,
                             files={"file": ("x.edf", (domain_nights[1] / "amp10.edf").read_bytes(),
                                             "application/octet-stream")})
    finally:
        serve.shutdown()
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["n_epochs"] == 120 and len(doc["hypnogram"]) == 120
    assert set(doc["hypnogram"]) <= {"W", "N1", "N2", "N3", "REM"} and doc["modalities_used"][0] == "eeg+eog"
    assert doc["domain_shift"]["flag"] is False and not any(w.startswith("domain shift") for w in doc["warnings"])
    assert loud.status_code == 200, loud.text
    shift = loud.json()["domain_shift"]
    assert shift["flag"] and shift["reasons"][0].startswith("eeg amplitude ")
    assert f"domain shift: {'; '.join(shift['reasons'])}" in loud.json()["warnings"]


@pytest.mark.integration
def test_evaluate_adds_scenario_metrics_to_the_model_card(own_profile_run, capsys):
    """somnray evaluate on the run writes its pooled and per-fold scenario metrics into both card files."""
    run, _, dataset = own_profile_run
    assert cli.main(["evaluate", str(run), "--data", dataset, "--scenarios", "all", "eeg_only"]) == 0
    capsys.readouterr()
    card = json.loads((run / "model" / "model_card.json").read_text())
    evaluation = card["evaluation"]
    assert set(evaluation["pooled"]) == {"all", "eeg_only"} and evaluation["folds"] == [f"file://{run}"]
    assert 0 <= evaluation["pooled"]["all"]["accuracy"] <= 1 and "accuracy" in evaluation["fold_mean"]["all"]
    text = (run / "model" / "MODEL_CARD.md").read_text()
    assert "| eeg_only |" in text and "Not evaluated yet" not in text
    # Calibration per scenario: ECE with the bundle's temperature and without, and the diagrams.
    assert set(evaluation["calibration"]) == {"all", "eeg_only"}
    assert "Calibration error per scenario" in text
    report_dir = next((run / "evaluation").iterdir())
    report = json.loads((report_dir / "report.json").read_text())
    temperature = json.loads((run / "model" / "model.json").read_text())["calibration"]["temperature"]
    assert report["folds"][0]["temperature"] == temperature
    for scenario in ("all", "eeg_only"):
        c = report["calibration"][scenario]
        assert c["n_epochs"] > 0 and 0 <= c["ece"] <= 1 and 0 <= c["ece_uncalibrated"] <= 1
    assert (report_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "![reliability](reliability.png)" in (report_dir / "report.md").read_text()


@pytest.mark.integration
def test_domain_shift_flags_shifted_nights_and_stays_quiet_on_training_like_ones(own_profile_run, domain_nights,
                                                                                  tmp_path, capsys):
    """somnray score over 4 new-subject nights and 3 shifted ones: each shifted night is flagged by
    the check that describes its shift (amplitude ×10, a noise EEG, another rate and derivation),
    in its statistics JSON, its per-epoch Parquet, the cohort summary and one stderr line; the
    others are quiet with every check run (the bundle records what they need)."""
    from somnray.data.synth import SYNTH_IDENTIFYING_STRINGS
    from somnray.serve.outputs import read_epochs

    run, _, _ = own_profile_run
    quiet, shifted = domain_nights
    out = tmp_path / "scored"
    assert cli.main(["score", str(run), str(quiet.path), *(str(shifted / f"{n}.edf") for n in SHIFTED),
                     "--out", str(out), "--no-progress", *EITHER_LAYOUT]) == 0
    err = capsys.readouterr().err
    docs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/*_sleep_stats.json")}
    assert set(docs) == set(SHIFTED) | {e.recording_id for e in quiet.entries}
    measured = {}
    for rid, doc in sorted(docs.items()):
        shift = doc["domain_shift"]
        measured[rid] = {f"{c['check']}:{c['modality']}": c["value"] for c in shift["checks"]
                         if c["check"] in ("amplitude", "band_power")}
        assert shift["skipped"] == [], (rid, shift["skipped"])
        flagged = {c["check"] for c in shift["checks"] if c["status"] == "shift"}
        table, meta = read_epochs(out / rid / f"{rid}_epochs.parquet")
        assert set(table.column("flag_domain_shift").to_pylist()) == {bool(flagged)}
        assert meta["domain_shift"]["flag"] is shift["flag"]
        text = " ".join(shift["reasons"])
        assert not any(s in text for s in SYNTH_IDENTIFYING_STRINGS) and str(tmp_path) not in text
        if rid in SHIFTED:
            assert shift["flag"] and flagged == SHIFTED[rid], (rid, shift["reasons"])
            assert f"  domain shift {rid}: {'; '.join(shift['reasons'])}" in err
        else:
            assert not shift["flag"] and shift["reasons"] == [] and f"domain shift {rid}" not in err
    print("domain-shift statistics (amplitude: ratio to the training median; band_power: distance):")
    for rid, values in measured.items():
        print(f"  {rid:10s} {values}")
    assert any(r.startswith("eeg amplitude ") for r in docs["amp10"]["domain_shift"]["reasons"])
    assert "eeg sampled at 256 Hz; training saw 100 Hz" in docs["generic"]["domain_shift"]["reasons"]
    assert "eeg derivation C4-M1 vs training EEG Fpz-Cz" in docs["generic"]["domain_shift"]["reasons"]
    assert "3 night(s) outside the model's training data" in err
    summary = pd.read_csv(out / "cohort_summary.csv").set_index("recording_id")
    assert summary.loc[sorted(SHIFTED), "domain_shift"].tolist() == [True] * 3
    assert not summary.drop(index=list(SHIFTED))["domain_shift"].any()
    assert summary.loc["noise", "domain_shift_reasons"].startswith("eeg spectrum unlike training")
