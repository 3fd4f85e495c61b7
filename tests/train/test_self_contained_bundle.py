"""Self-contained bundles: a model trained with a user's own profile YAML scores EDFs through the
CLI and over HTTP without the profile being named again; the bundle carries its card and hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests
import yaml
from loopback import free_port  # tests/ is on sys.path (conftest.py)
from run_factory import write_config  # tests/train is on sys.path (no package)

from somnray.jobs import cli

#: The user's own profile: Sleep-EDF's layout, with its own name and an EEG band-pass of its own.
OWN_PROFILE = "my-lab-fpz"


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
def test_http_scores_an_edf_without_naming_the_profile(own_profile_run):
    """The Serve app over the run answers 200 with one stage per 1-h night epoch; no profile named."""
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
    finally:
        serve.shutdown()
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["n_epochs"] == 120 and len(doc["hypnogram"]) == 120
    assert set(doc["hypnogram"]) <= {"W", "N1", "N2", "N3", "REM"} and doc["modalities_used"][0] == "eeg+eog"


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
