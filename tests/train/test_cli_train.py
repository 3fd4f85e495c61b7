"""``somnray train``: validation before Ray, option mapping, progress lines, the run URI as the last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prepared_factory import write_dataset  # tests/train is on sys.path (no package)
from run_factory import write_config

from somnray.jobs import cli
from somnray.jobs.cmd_train import cli_overrides
from somnray.scoring.bundles import weights_sha256


def test_malformed_config_exits_1_listing_every_error_before_ray(tmp_path: Path, capsys, monkeypatch) -> None:
    """Three mistakes in one file: exit 1, all three reported, and Ray is never started."""
    import somnray.core.session as session

    started = []
    monkeypatch.setattr(session, "ensure_ray", lambda *a, **k: started.append(1))
    cfg = write_config(tmp_path / "bad.yaml", dataset=str(tmp_path), storage_uri=str(tmp_path / "runs"),
                       name="bad", model="coresleep_tni", optim={"lr": -1.0, "batch_size": 8, "max_steps": 6,
                                                                  "validate_every": 3, "optimiser": "adam"})
    assert cli.main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "model.name: unknown model 'coresleep_tni'" in err and "coresleep_tiny" in err
    assert "optim.lr" in err and "optim.optimiser: unknown key" in err
    assert not started


def test_bad_set_and_workers_are_reported(tmp_path: Path, capsys) -> None:
    """A malformed --set and a batch that --workers cannot split are config errors (exit 1)."""
    cfg = write_config(tmp_path / "ok.yaml", dataset=str(tmp_path), storage_uri=str(tmp_path / "runs"), name="ok")
    assert cli.main(["train", str(cfg), "--set", "optim.lr", "--workers", "3"]) == 1
    err = capsys.readouterr().err
    assert "--set 'optim.lr': expected key.sub=value" in err
    assert "multiple of scaling.num_workers" in err


def test_configured_sink_that_is_not_installed_fails_before_ray(tmp_path: Path, capsys, monkeypatch) -> None:
    """logging.mlflow without the mlflow package: exit 1 saying so (no silent no-op), Ray never started."""
    import importlib.util

    import somnray.core.session as session

    # MLflow is part of the test set-up: hide it, as on a machine without the extra.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "mlflow" else find_spec(name, *a, **k))
    started = []
    monkeypatch.setattr(session, "ensure_ray", lambda *a, **k: started.append(1))
    cfg = write_config(tmp_path / "ml.yaml", dataset=str(tmp_path), storage_uri=str(tmp_path / "runs"), name="ml",
                       logging={"mlflow": {"experiment": "x"}})
    assert cli.main(["train", str(cfg)]) == 1
    assert "logging.mlflow: the 'mlflow' package is not installed" in capsys.readouterr().err
    assert not started


def test_cli_options_map_to_overrides(tmp_path: Path) -> None:
    """--run-uri sets storage.uri and storage.name; --workers also replaces a phase's own num_workers."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("phases:\n  - {name: a}\n  - {name: b, scaling: {num_workers: 4}}\n")
    out = cli_overrides(str(cfg), ["optim.lr=1e-3"], "s3://bucket/runs/try2", 2)
    assert out == ["optim.lr=1e-3", "storage.uri=s3://bucket/runs", "storage.name=try2",
                   "scaling.num_workers=2", "phases.1.scaling.num_workers=2"]


@pytest.mark.integration
def test_train_command_trains_exports_and_prints_uri_last(tmp_path: Path, ray_local) -> None:
    """A real `somnray train` process attached to the session cluster: progress lines, bundle, TensorBoard, URI last."""
    data = tmp_path / "prepared"
    write_dataset(data)
    cfg = write_config(tmp_path / "exp.yaml", dataset=str(data), storage_uri=str(tmp_path / "elsewhere"),
                       name="ignored", data={"dataset": str(data), "split": "manifest", "sequence_length": 5,
                                             "shuffle_buffer": 8},
                       optim={"batch_size": 4, "max_steps": 4, "validate_every": 2}, logging={"tensorboard": True})
    run_uri = f"file://{tmp_path}/runs/cli-run"
    env = {**os.environ, "RAY_ADDRESS": ray_local.address, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "somnray.jobs", "train", str(cfg), "--run-uri", run_uri,
                           "--set", "optim.lr=3e-3"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[-1] == run_uri
    progress = [line for line in proc.stdout.splitlines() if "[train] step" in line]
    assert any("step 2/4" in line for line in progress) and any("step 4/4" in line for line in progress)
    assert all("macro-F1" in line and "κ" in line and "ce_mm" in line for line in progress)
    run = tmp_path / "runs" / "cli-run"
    assert (run / "model" / "model.json").is_file() and (run / "metrics.json").is_file()
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["extra"]["run_uri"] == run_uri and info["extra"]["phase"] == "train"
    assert "lr: 0.003" in (run / "config.yaml").read_text()
    assert list((run / "train" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.integration
def test_train_logs_to_mlflow_named_by_the_environment(tmp_path: Path, ray_local, mlflow_server) -> None:
    """MLFLOW_TRACKING_URI alone: the run, its phase's per-validation metrics and the bundle reach MLflow."""
    from mlflow import MlflowClient

    data = tmp_path / "prepared"
    write_dataset(data)
    name = f"tracked-{tmp_path.name[-8:]}"
    cfg = write_config(tmp_path / "exp.yaml", dataset=str(data), storage_uri=str(tmp_path / "runs"), name=name,
                       data={"dataset": str(data), "split": "manifest", "sequence_length": 5, "shuffle_buffer": 8},
                       optim={"batch_size": 4, "max_steps": 4, "validate_every": 2})
    env = {**os.environ, "RAY_ADDRESS": ray_local.address, "DS_ACCELERATOR": "cpu",
           "MLFLOW_TRACKING_URI": mlflow_server.uri}
    proc = subprocess.run([sys.executable, "-m", "somnray.jobs", "train", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("somnray")
    [parent] = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'")
    [child] = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.info.run_name == f"{name}/train" and child.data.params["optim.max_steps"] == "4"
    history = client.get_metric_history(child.info.run_id, "val_macro_f1")
    assert [m.step for m in history] == [2, 4]
    assert parent.info.status == "FINISHED" and "train.val_macro_f1" in parent.data.metrics
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "model")}
    # the whole bundle, its model card included
    assert files == {"model/model.json", "model/model.pt", "model/MODEL_CARD.md", "model/model_card.json"}
    run = tmp_path / "runs" / name
    assert cli.main(["models", "--tracking-uri", mlflow_server.uri, "register",
                     f"runs:/{parent.info.run_id}/model", "--name", name]) == 0
    [version] = client.search_model_versions(f"name = '{name}'")
    assert version.run_id == parent.info.run_id and version.source.endswith("/model")
    assert version.tags["weights_sha256"] == weights_sha256(run / "model")
