"""A training run stored on S3 (moto): checkpoints, results, metrics, TensorBoard files and the bundle land there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from somnray.train.config import load_experiment

from prepared_factory import write_dataset  # tests/train is on sys.path (no package)
from run_factory import write_config


@pytest.mark.integration
def test_run_on_s3_writes_everything_and_bundle_loads(tmp_path: Path, ray_local, s3_server, monkeypatch) -> None:
    """storage.uri s3://bucket/runs: every run artefact is an object there and Scorer.load reads the bundle back."""
    import s3fs

    from somnray.train.driver import run_experiment
    from somnray.scoring.scorer import Scorer

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    data = tmp_path / "prepared"
    write_dataset(data)
    bucket = s3_server.make_bucket()
    cfg = load_experiment(write_config(
        tmp_path / "exp.yaml", dataset=str(data), storage_uri=f"{bucket}/runs", name="s3run",
        data={"dataset": str(data), "split": "manifest", "sequence_length": 5, "shuffle_buffer": 8},
        optim={"batch_size": 4, "max_steps": 4, "validate_every": 2},
        logging={"tensorboard": True}))
    [result] = run_experiment(cfg)

    run = f"{bucket.removeprefix('s3://')}/runs/s3run"
    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    for key in ("config.yaml", "metrics.json", "train/phase_result.json", "model/model.pt", "model/model.json"):
        assert fs.exists(f"{run}/{key}"), key
    assert result.checkpoint_uri.startswith(f"s3://{run}/train/checkpoint_")
    ckpt = result.checkpoint_uri.removeprefix("s3://")
    assert fs.exists(f"{ckpt}/model.pt") and fs.exists(f"{ckpt}/trainer_state.json")
    assert fs.find(f"{ckpt}/state"), "no DeepSpeed state in the checkpoint"
    events = [p for p in fs.find(f"{run}/train/tensorboard") if "tfevents" in p]
    assert events and fs.size(events[0]) > 0
    metrics = json.loads(fs.cat_file(f"{run}/metrics.json"))
    assert metrics["phases"]["train"]["metrics"]["val_macro_f1"] == result.metrics["val_macro_f1"]

    scorer = Scorer.load(f"s3://{run}", device="cpu", precision="fp32")
    model, info = scorer.model, scorer.info
    assert info.model == "coresleep_tiny" and info.extra["run_uri"] == f"s3://{run}"
    assert info.extra["checkpoint_uri"] == result.checkpoint_uri
    assert not model.training
