"""Worker failure and recovery: the SOMNRAY_FAULT_AT_STEP hook, FailureConfig restarts, resume from checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from somnray.train.config import load_experiment
from somnray.train.loop import FAULT_ENV

from prepared_factory import write_dataset  # tests/train is on sys.path (no package)
from run_factory import write_config


@pytest.mark.integration
def test_killed_worker_resumes_from_latest_checkpoint(tmp_path: Path, ray_local, monkeypatch) -> None:
    """Rank 0 dies after step 5; Ray Train restarts the group, which resumes at a checkpointed step and reaches step 8."""
    from somnray.train.driver import run_experiment

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv(FAULT_ENV, "5")
    data = tmp_path / "prepared"
    write_dataset(data)
    cfg = load_experiment(write_config(
        tmp_path / "exp.yaml", dataset=str(data), storage_uri=str(tmp_path / "runs"), name="faulty",
        data={"dataset": str(data), "split": "manifest", "sequence_length": 5, "shuffle_buffer": 8},
        optim={"batch_size": 4, "max_steps": 8, "validate_every": 2},
        scaling={"num_workers": 1, "use_gpu": False, "max_failures": 1}))
    [result] = run_experiment(cfg)

    phase_dir = tmp_path / "runs" / "faulty" / "train"
    assert (phase_dir / "fault-injected-at-step-5").is_file(), "the fault never fired"
    states = [json.loads(p.read_text())["loop"] for p in phase_dir.glob("checkpoint_*/trainer_state.json")]
    before = sorted(s["step"] for s in states if not s["resumed_from"])
    after = sorted(s["step"] for s in states if s["resumed_from"])
    # Checkpoints at steps 2 and 4 were written before the crash. Ray Train hands the restarted group
    # the latest one its controller registered: step 4, or step 2 if rank 0 died before the controller
    # collected the step-4 report (reports are queued; the step-2 one was collected for sure, since
    # the step-4 report could only be queued after it). CheckpointConfig keeps the best two plus the
    # latest, and a checkpoint whose report was lost is removed when the phase ends, so any
    # pre-crash checkpoint still on disk is one of those two and no more than three remain.
    assert set(before) <= {2, 4}
    assert len(states) <= 3, sorted(s["step"] for s in states)
    final = max((s for s in states if s["resumed_from"]), key=lambda s: s["step"])
    assert final["step"] == 8 and len(final["resumed_from"]) == 1
    resumed = final["resumed_from"][0]
    assert resumed in (2, 4)
    # The restarted group continued from there: everything it checkpointed comes later.
    assert after and all(step > resumed for step in after)
    assert result.checkpoint_uri is not None and 2 <= result.metrics["step"] <= 8
    assert (tmp_path / "runs" / "faulty" / "model" / "model.json").is_file()


def test_checkpoints_ray_train_never_registered_are_removed(tmp_path: Path) -> None:
    """After a phase, checkpoint folders outside the result's kept ones are deleted; other files and kept ones stay."""
    from types import SimpleNamespace

    from somnray.core.storage import resolve
    from somnray.train.driver import remove_unregistered_checkpoints

    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_orphan", "checkpoint_latest"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.pt").write_bytes(b"w")
    (tmp_path / "phase_result.json").write_text("{}")
    result = SimpleNamespace(best_checkpoints=[(SimpleNamespace(path=str(tmp_path / n)), {}) for n in ("checkpoint_a",
                                                                                                      "checkpoint_b")],
                             checkpoint=SimpleNamespace(path=str(tmp_path / "checkpoint_latest")))
    assert remove_unregistered_checkpoints(resolve(str(tmp_path)), result) == ["checkpoint_orphan"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_a", "checkpoint_b", "checkpoint_latest",
                                                          "phase_result.json"]
    # A result that registered nothing (no validation ran) leaves the folder as it is.
    empty = SimpleNamespace(best_checkpoints=[], checkpoint=None)
    assert remove_unregistered_checkpoints(resolve(str(tmp_path)), empty) == []
