"""Run export: <run>/model/ bundle, metrics.json, re-export and loading (somnray.train.export).

These tests assemble a finished run folder from real parts (the resolved config, a checkpoint
``model.pt`` of a real model, ``phase_result.json``) so they need no Ray; the end-to-end export
after training is covered by test_s3_run.py and test_cli_train.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from prepared_factory import write_dataset  # tests/train is on sys.path (no package)

from somnray.core.errors import ConfigError
from somnray.core.version import somnray_version
from somnray.models import create_model
from somnray.models.bundle import load_bundle
from somnray.train.config import dump_experiment, load_experiment
from somnray.train.driver import PhaseResult
from somnray.scoring.scorer import Scorer
from somnray.train.export import export_bundle, read_run_config, write_run_metrics


def _finished_run(tmp_path: Path, run_uri: str | None = None, calibration: str = "{}"
                  ) -> tuple[str, dict[str, dict[str, torch.Tensor]]]:
    """A two-phase MC²SleepNet run folder as run_experiment leaves it; returns (run URI, weights by phase)."""
    from somnray.core.storage import resolve

    data = tmp_path / "prepared"
    write_dataset(data)
    (data / "manifest.json").write_text(json.dumps({"profile": {"name": "sleep-edf"}}))
    storage = run_uri.rsplit("/", 1)[0] if run_uri else str(tmp_path / "runs")
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text(textwrap.dedent(f"""
        data: {{dataset: {data}, split: manifest, sequence_length: 5}}
        model: {{name: mc2sleepnet_tiny}}
        optim: {{batch_size: 4, max_steps: 4, validate_every: 2}}
        storage: {{uri: {storage}, name: {run_uri.rsplit('/', 1)[1] if run_uri else 'mc2'}}}
        calibration: {calibration}
        phases:
          - {{name: pretrain, model: {{overrides: {{phase: pretrain}}}}}}
          - {{name: finetune, init_from: previous, freeze: [epoch_level], model: {{overrides: {{phase: finetune}}}}}}
        """))
    cfg = load_experiment(cfg_file)
    run = resolve(cfg.run_uri)
    run.makedirs()
    dump_experiment(cfg, run.join("config.yaml").uri)
    weights, results = {}, []
    for i, phase in enumerate(cfg.phases):
        torch.manual_seed(i)
        model = create_model("mc2sleepnet_tiny", **phase.model.overrides)
        weights[phase.name] = {k: v.clone() for k, v in model.state_dict().items()}
        ckpt = run.join(phase.name, "checkpoint_000001")
        ckpt.makedirs()
        import io

        buf = io.BytesIO()
        torch.save(weights[phase.name], buf)
        ckpt.join("model.pt").atomic_write_bytes(buf.getvalue())
        result = PhaseResult(phase.name, ckpt.uri, {"step": 4, "val_macro_f1": 0.5 + i / 10, "val_kappa": 0.4})
        run.join(phase.name, "phase_result.json").write_text(json.dumps(result.__dict__))
        results.append(result)
    write_run_metrics(run.uri, results)
    return run.uri, weights


def test_export_writes_last_phase_bundle_with_provenance(tmp_path: Path) -> None:
    """The bundle holds the last phase's best weights and records run, phase, metrics, data and profile."""
    run_uri, weights = _finished_run(tmp_path)
    bundle_uri = export_bundle(run_uri)
    assert bundle_uri == f"{run_uri}/model"
    model, info = load_bundle(bundle_uri.removeprefix("file://"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights["finetune"].items())
    assert info.model == "mc2sleepnet_tiny" and info.overrides == {"phase": "finetune"}
    assert info.sequence_length == 5 and info.modalities == ("eeg",)
    extra = info.extra
    assert extra["run_uri"] == run_uri and extra["phase"] == "finetune"
    assert extra["checkpoint_uri"].endswith("finetune/checkpoint_000001")
    assert extra["metrics"] == {"step": 4, "val_macro_f1": 0.6, "val_kappa": 0.4}
    assert extra["cohort_profile"] == "sleep-edf" and extra["split"] == {"name": "manifest", "fold": 0, "seed": 0}
    assert extra["dataset_uri"].endswith("prepared") and extra["somnray_version"] == somnray_version()
    metrics = json.loads(Path(run_uri.removeprefix("file://"), "metrics.json").read_text())
    assert metrics["final_phase"] == "finetune" and set(metrics["phases"]) == {"pretrain", "finetune"}


def test_reexport_an_earlier_phase_and_load_it_for_scoring(tmp_path: Path) -> None:
    """export_bundle(phase=...) replaces the bundle; Scorer.load accepts the run or the bundle folder."""
    run_uri, weights = _finished_run(tmp_path)
    export_bundle(run_uri, phase="pretrain")
    for uri in (run_uri, f"{run_uri}/model"):
        scorer = Scorer.load(uri, device="cpu", precision="fp32")
        model, info = scorer.model, scorer.info
        assert info.extra["phase"] == "pretrain" and info.overrides == {"phase": "pretrain"}
        assert all(torch.equal(model.state_dict()[k], v) for k, v in weights["pretrain"].items())
        assert not model.training


def test_export_without_enough_validation_epochs_keeps_temperature_null_and_says_why(tmp_path: Path, caplog) -> None:
    """The manifest split's 35 labelled validation epochs are below the default 100: no temperature,
    the reason in model.json, a warning, and the card says the model is not calibrated."""
    run_uri, _ = _finished_run(tmp_path)
    with caplog.at_level("WARNING", logger="somnray.train.export"):
        bundle = Path(export_bundle(run_uri).removeprefix("file://"))
    calibration = json.loads((bundle / "model.json").read_text())["calibration"]
    assert calibration["temperature"] is None and calibration["n_epochs"] == 35
    assert "35 labelled validation epoch(s), fewer than the 100" in calibration["reason"]
    assert any("not calibrated" in r.message for r in caplog.records)
    assert "Not calibrated: 35 labelled" in (bundle / "MODEL_CARD.md").read_text()
    scorer = Scorer.load(run_uri, device="cpu", precision="fp32")
    assert scorer.calibration.applied_temperature == 1.0 and scorer.calibration.threshold == 0.5


def test_export_fits_the_temperature_on_the_validation_split(tmp_path: Path) -> None:
    """With calibration.min_epochs lowered, export scores the validation recording with the exported
    model and records T, ECE before/after, the threshold and its rule, and the reliability bins."""
    from somnray.scoring.calibration import Calibration, calibrate
    from somnray.train.evaluate import scenario_probabilities

    run_uri, _ = _finished_run(tmp_path, calibration="{min_epochs: 20, flag_error_rate: 0.6, bins: 10}")
    bundle = Path(export_bundle(run_uri).removeprefix("file://"))
    doc = json.loads((bundle / "model.json").read_text())["calibration"]
    fitted = Calibration.from_dict(doc)
    assert fitted.fitted and fitted.method == "temperature" and fitted.n_epochs == 35 and fitted.n_bins == 10
    assert fitted.threshold_rule["flag_error_rate"] == 0.6 and len(fitted.reliability["after"]) == 10
    assert 0.3 <= fitted.low_confidence_threshold <= 0.9
    # The same numbers as scoring the validation recording (r04) through evaluation's path again.
    scorer = Scorer.load(run_uri, device="cpu", precision="fp32")
    probs, labels = scenario_probabilities(scorer, str(tmp_path / "prepared"), ["r04"])
    assert calibrate(probs, labels, min_epochs=20, flag_error_rate=0.6, n_bins=10) == fitted
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["calibration"]["temperature"] == fitted.temperature
    assert "Temperature scaling fitted at export on 35" in (bundle / "MODEL_CARD.md").read_text()


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    """Unknown phase, unfinished phase, a folder that is no run, a run without a bundle: clear errors."""
    run_uri, _ = _finished_run(tmp_path)
    with pytest.raises(ConfigError, match="no phase 'nope'.*pretrain"):
        export_bundle(run_uri, phase="nope")
    Path(run_uri.removeprefix("file://"), "finetune", "phase_result.json").unlink()
    with pytest.raises(ConfigError, match="has not finished"):
        export_bundle(run_uri)
    with pytest.raises(ConfigError, match="not a somnray run folder"):
        read_run_config(str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="no model bundle"):
        Scorer.load(run_uri)


@pytest.mark.integration
def test_export_and_load_on_s3(tmp_path: Path, s3_server) -> None:
    """A run on S3 exports its bundle to <run>/model/ on S3, and Scorer.load downloads it."""
    import s3fs

    run_uri = s3_server.make_bucket() + "/runs/mc2"
    run_uri, weights = _finished_run(tmp_path, run_uri)
    assert export_bundle(run_uri) == f"{run_uri}/model"
    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    bucket_path = run_uri.removeprefix("s3://")
    assert fs.exists(f"{bucket_path}/model/model.pt") and fs.exists(f"{bucket_path}/model/model.json")
    assert fs.exists(f"{bucket_path}/metrics.json")
    scorer = Scorer.load(run_uri, device="cpu", precision="fp32")
    model, info = scorer.model, scorer.info
    assert info.extra["run_uri"] == run_uri
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights["finetune"].items())


def test_evaluation_puts_each_folds_metrics_in_both_card_files(tmp_path: Path) -> None:
    """A 2-fold report: model_card.json keeps each fold's metrics per scenario, MODEL_CARD.md a per-fold table."""
    import numpy as np

    from somnray.core.storage import resolve
    from somnray.train.card import CARD_METRICS, update_card_evaluation
    from somnray.train.metrics import compute_metrics

    bundle = resolve(export_bundle(_finished_run(tmp_path)[0]))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (2, 300))
    metrics = {}  # (fold, scenario) → StagingMetrics, each of its own quality
    for fold in range(2):
        for j, scenario in enumerate(("all", "eeg_only")):
            wrong = rng.random(300) < 0.1 + 0.2 * fold + 0.3 * j
            metrics[fold, scenario] = compute_metrics(labels[fold], np.where(wrong, (labels[fold] + 1) % 5,
                                                                             labels[fold]))
    # As report.json holds them (JSON: tuples become lists).
    per_fold = json.loads(json.dumps([{s: metrics[i, s].to_dict() for s in ("all", "eeg_only")} for i in range(2)]))
    report = {"dataset": "d", "dataset_uri": "file:///d", "stride": 5, "calibration": {},
              "pooled": per_fold[0], "fold_mean": {}, "fold_std": {},
              "folds": [{"run": f"file:///runs/f{i}", "metrics": per_fold[i]} for i in range(2)]}
    assert update_card_evaluation(bundle, report)
    evaluation = json.loads(Path(bundle.path, "model_card.json").read_text())["evaluation"]
    assert evaluation["folds"] == ["file:///runs/f0", "file:///runs/f1"]
    assert evaluation["fold_metrics"] == [{s: {k: m[k] for k in CARD_METRICS} for s, m in fold.items()}
                                          for fold in per_fold]
    assert set(CARD_METRICS) == {"n_epochs", "accuracy", "macro_f1", "kappa", "f1"}
    text = Path(bundle.path, "MODEL_CARD.md").read_text()
    assert "Per fold (Acc / MF1 %, κ):\n\n| Scenario | fold 0 | fold 1 |\n|---|---:|---:|\n" in text
    for s in ("all", "eeg_only"):
        cells = [f"{100 * m.accuracy:.1f} / {100 * m.macro_f1:.1f}, {m.kappa:.3f}"
                 for m in (metrics[0, s], metrics[1, s])]
        assert f"| {s} | {cells[0]} | {cells[1]} |" in text
