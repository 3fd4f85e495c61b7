"""End-to-end: a two-phase recipe trained with TorchTrainer + DeepSpeed on CPU (somnray.train.driver/loop)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from prepared_factory import write_dataset  # tests/train is on sys.path (no package)

from somnray.train.config import load_experiment
from somnray.train.loop import LoopState


def test_loop_state_tracks_improvement_and_patience() -> None:
    """Improvement resets the bad-check count; min and max modes compare the right way."""
    state = LoopState()
    assert state.improved(0.5, "max") and not state.improved(0.4, "max") and state.bad_checks == 1
    assert state.improved(0.6, "max") and state.bad_checks == 0 and state.best == 0.6
    low = LoopState()
    assert low.improved(1.0, "min") and low.improved(0.9, "min") and not low.improved(0.95, "min")


def _scaled(tmp_path: Path, **scaling):
    from run_factory import write_config

    return load_experiment(write_config(tmp_path / "exp.yaml", dataset=str(tmp_path / "ds"),
                                        storage_uri=str(tmp_path / "runs"), name="cpu-check",
                                        scaling={"num_workers": 2, "use_gpu": False, **scaling}))


def test_workers_that_starve_ray_data_are_refused_on_one_node(tmp_path: Path, caplog) -> None:
    """2 workers × 1 CPU on a 2-CPU node would hang: refused with the numbers and a fitting value;
    0.5 CPU each fits; on two nodes it is only a warning; a group too big to start is left to Ray."""
    from somnray.core.errors import ConfigError
    from somnray.train.driver import check_cpus_for_data

    with pytest.raises(ConfigError) as info:
        check_cpus_for_data(_scaled(tmp_path, cpus_per_worker=1.0), cluster_cpus=2.0, n_nodes=1)
    [problem] = info.value.errors
    assert "2 worker(s) x 1 CPU leave 0 of the cluster's 2 CPUs" in problem
    assert "scaling.cpus_per_worker to 0.5 or less" in problem
    check_cpus_for_data(_scaled(tmp_path, cpus_per_worker=0.5), cluster_cpus=2.0, n_nodes=1)
    with caplog.at_level("WARNING", logger="somnray.train.driver"):
        check_cpus_for_data(_scaled(tmp_path, cpus_per_worker=1.0), cluster_cpus=2.0, n_nodes=2)
    assert "would wait forever" in caplog.text
    check_cpus_for_data(_scaled(tmp_path, cpus_per_worker=4.0), cluster_cpus=2.0, n_nodes=1)


def test_placement_strategy_is_a_validated_scaling_field(tmp_path: Path) -> None:
    """scaling.placement_strategy defaults to PACK, takes Ray's strategies and refuses others."""
    from somnray.core.errors import ConfigError

    assert _scaled(tmp_path).phases[0].scaling.placement_strategy == "PACK"
    assert _scaled(tmp_path, placement_strategy="STRICT_SPREAD").phases[0].scaling.placement_strategy == "STRICT_SPREAD"
    with pytest.raises(ConfigError, match="placement_strategy"):
        _scaled(tmp_path, placement_strategy="ANYWHERE")


@pytest.mark.integration
def test_two_phase_recipe_trains_checkpoints_and_chains(tmp_path: Path, ray_local, monkeypatch) -> None:
    """Both phases report validated checkpoints with full weights; phase 2 starts from phase 1 and freezes."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    data = tmp_path / "prepared"
    write_dataset(data)
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text(textwrap.dedent(f"""
        seed: 3
        data: {{dataset: {data}, split: manifest, sequence_length: 5, shuffle_buffer: 8}}
        model: {{name: coresleep_tiny}}
        missing: {{kind: partial_chunks, rate: 0.3, chunk_epochs: 5}}
        optim: {{optimizer: adamw, lr: 1.0e-3, batch_size: 4, max_steps: 4, validate_every: 2, clip_norm: 1.0}}
        deepspeed: {{zero_stage: 1}}
        scaling: {{num_workers: 1, use_gpu: false, max_failures: 0}}
        storage: {{uri: {tmp_path}/runs, name: demo}}
        phases:
          - {{name: pretrain}}
          - {{name: finetune, init_from: previous, freeze: [inner_eeg, inner_eog], optim: {{max_steps: 2}}}}
        """))
    cfg = load_experiment(cfg_file)
    from somnray.train.driver import run_experiment

    pre, fine = run_experiment(cfg)
    run = tmp_path / "runs" / "demo"
    assert (run / "config.yaml").is_file()
    for result in (pre, fine):
        assert result.checkpoint_uri is not None
        folder = Path(result.checkpoint_uri.removeprefix("file://"))
        assert (folder / "model.pt").is_file() and (folder / "state").is_dir()
        state = json.loads((folder / "trainer_state.json").read_text())
        assert 0.0 <= result.metrics["val_accuracy"] <= 1.0 and "val_kappa" in result.metrics
        assert state["phase"] == result.name
        assert json.loads((run / result.name / "phase_result.json").read_text())["name"] == result.name
    pre_w = torch.load(Path(pre.checkpoint_uri.removeprefix("file://")) / "model.pt")
    fine_w = torch.load(Path(fine.checkpoint_uri.removeprefix("file://")) / "model.pt")
    from somnray.models import create_model

    groups = create_model("coresleep_tiny").parameter_groups()
    frozen = groups["inner_eeg"] + groups["inner_eog"]
    trained = groups["outer_eeg"] + groups["heads"]
    assert frozen and all(torch.equal(pre_w[k], fine_w[k]) for k in frozen)
    assert any(not torch.equal(pre_w[k], fine_w[k]) for k in trained)
    # Rerunning skips finished phases instead of retraining them.
    assert [r.checkpoint_uri for r in run_experiment(cfg)] == [pre.checkpoint_uri, fine.checkpoint_uri]
