"""The search: packing, settings, reports (unit) and a real ASHA search with resume (integration)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from somnray.core.errors import ConfigError
from somnray.core.storage import resolve
from somnray.tune.report import TrialRecord, leaderboard_csv, leaderboard_markdown, rank, write_report
from somnray.tune.search import SearchSettings, monitored, plan_concurrency, total_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from prepared_factory import write_dataset  # noqa: E402  (tests/train helper, not a package)
from test_space import experiment  # noqa: E402


def test_concurrency_packs_trials_by_worker_cpus() -> None:
    """2 CPUs, 1 kept for Ray Data, 0.01 + 1 × 0.49 per trial → 2 trials; a cap applies."""
    cfg = experiment()
    raw_cfg = cfg.model_dump(mode="json")
    for phase in raw_cfg["phases"]:
        phase["scaling"]["cpus_per_worker"] = 0.49
    from somnray.train.config import validate_experiment

    half = validate_experiment({"description": "", "storage": raw_cfg["storage"], "phases": raw_cfg["phases"]})
    assert plan_concurrency(2.0, half, SearchSettings()) == 2
    assert plan_concurrency(8.0, half, SearchSettings(max_concurrent=3)) == 3
    assert plan_concurrency(1.0, cfg, SearchSettings()) == 1  # never below one
    assert total_steps(cfg) == 4


def test_settings_report_every_problem() -> None:
    """Unknown metric, bad samples, zero trial CPUs and PBT's need of a population are all listed."""
    problems = SearchSettings(metric="f1", num_samples=0, trial_cpus=0.0, scheduler="pbt").problems()
    text = "\n".join(problems)
    assert len(problems) == 4 and "val_macro_f1" in text and "Tune rejects 0" in text
    assert "scheduler 'pbt' needs a population: samples must be >= 2, got 0" in text
    assert SearchSettings(metric="val_loss").resolved_mode == "min"


def test_monitored_aligns_early_stopping_with_the_search_metric() -> None:
    """Every phase monitors the searched metric in the searched direction."""
    cfg = monitored(experiment(), SearchSettings(metric="val_kappa", mode="max"))
    assert all(p.optim.monitor == "kappa" and p.optim.monitor_mode == "max" for p in cfg.phases)


def _records() -> list[TrialRecord]:
    return [
        TrialRecord("a_00000", "done", {"loss_weights.align": 0.1, "missing.curriculum.kind": "linear"},
                    value=0.5, best_step=4, progress=4, metrics={"val_kappa": 0.3}, checkpoint_uri="file:///c/a",
                    started=100.0, finished=130.0),
        TrialRecord("a_00001", "stopped", {"loss_weights.align": 0.5, "missing.curriculum.kind": "cosine"},
                    value=0.7, best_step=2, progress=2, checkpoint_uri="file:///c/b", started=100.0, finished=115.0),
        TrialRecord("a_00002", "error", {"loss_weights.align": 0.2, "missing.curriculum.kind": "linear"},
                    error="RuntimeError: boom"),
    ]


def test_leaderboard_sorts_by_metric_and_names_the_best_checkpoint(tmp_path) -> None:
    """Best first (max mode), unscored trials last; Markdown, CSV and plot are written."""
    records = rank(_records(), "max")
    assert [r.trial_id for r in records] == ["a_00001", "a_00000", "a_00002"]
    assert [r.trial_id for r in rank(_records(), "min")][:2] == ["a_00000", "a_00001"]
    params = ["loss_weights.align", "missing.curriculum.kind"]
    md = leaderboard_markdown(records, params, "val_macro_f1", "max", "file:///s")
    assert "Best trial: `a_00001`" in md and "file:///c/b" in md and "RuntimeError: boom" in md
    rows = list(csv.DictReader(leaderboard_csv(records, params).splitlines()))
    assert rows[0]["trial_id"] == "a_00001" and rows[0]["param:missing.curriculum.kind"] == "cosine"
    assert rows[1]["wall_s"] == "30.0" and rows[2]["value"] == ""
    files = write_report(resolve(str(tmp_path)), records, "val_macro_f1", "max", params, ["loss_weights.align"])
    assert (tmp_path / "params.png").read_bytes()[:4] == b"\x89PNG"
    assert set(files) == {"markdown", "csv", "plot"}


# ------------------------------------------------------------------------------------------------
# integration: a real search on the session's 2-CPU cluster
# ------------------------------------------------------------------------------------------------
SPACE = textwrap.dedent("""\
    # test space
    params:
      missing.curriculum.end_rate: {distribution: uniform, low: 0.1, high: 0.5}
      missing.curriculum.kind: {distribution: choice, values: [linear, cosine]}
      loss_weights.align: {distribution: loguniform, low: 0.01, high: 1.0}
    """)


def write_search_inputs(root: Path, space: str = SPACE, *, max_steps: int = 4, validate_every: int = 2,
                        ramp_steps: int = 2) -> tuple[Path, Path, Path]:
    """A prepared synthetic dataset, an experiment config (tiny CoRe-Sleep) and a space YAML under ``root``."""
    data = root / "prepared"
    write_dataset(data)
    cfg = root / "exp.yaml"
    cfg.write_text(textwrap.dedent(f"""
        seed: 3
        data: {{dataset: {data}, split: manifest, sequence_length: 5, shuffle_buffer: 8}}
        model: {{name: coresleep_tiny}}
        missing: {{kind: partial_chunks, rate: 0.3, chunk_epochs: 5,
                   curriculum: {{kind: linear, start_rate: 0.0, end_rate: 0.3, ramp_steps: {ramp_steps}}}}}
        optim: {{optimizer: adamw, lr: 1.0e-3, batch_size: 4, max_steps: {max_steps}, validate_every: {validate_every}}}
        scaling: {{num_workers: 1, use_gpu: false, max_failures: 0, cpus_per_worker: 0.49}}
        storage: {{uri: {root}/runs, name: exp}}
        """))
    space_path = root / "space.yaml"
    space_path.write_text(space)
    return cfg, space_path, data


def _packing(records) -> int:
    """Most trials whose [start, last report] intervals overlap."""
    spans = [(r.started, r.finished) for r in records if r.started is not None]
    return max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)


@pytest.mark.integration
def test_asha_search_writes_leaderboard_plot_and_an_evaluable_best(tmp_path, ray_local, monkeypatch, capsys) -> None:
    """4 trials, 2 at a time, ASHA: leaderboard (md + csv), plot, and best/ loads as a bundle."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from somnray.jobs import cmd_tune
    from somnray.models.bundle import load_bundle

    cfg, space, _ = write_search_inputs(tmp_path)
    start = time.perf_counter()
    status = cmd_tune.main([str(cfg), str(space), "--samples", "4", "--scheduler", "asha",
                            "--storage", str(tmp_path / "runs"), "--name", "s1"])
    wall = time.perf_counter() - start
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    search = tmp_path / "runs" / "s1"
    assert out[-1] == f"file://{search / 'best'}"
    rows = list(csv.DictReader((search / "leaderboard.csv").read_text().splitlines()))
    assert len(rows) == 4 and rows[0]["value"] and rows[0]["checkpoint_uri"]
    values = [float(r["value"]) for r in rows if r["value"]]
    assert values == sorted(values, reverse=True)
    assert "Best trial" in (search / "leaderboard.md").read_text()
    assert (search / "params.png").stat().st_size > 1000
    model, info = load_bundle(search / "best" / "model")
    assert info.model == "coresleep_tiny" and info.extra["metrics"]
    assert (search / "best" / "config.yaml").is_file()
    from somnray.tune.search import read_search

    print(f"\n[tune] 4-trial ASHA search: {wall:.1f} s wall; leaderboard statuses "
          f"{[r['status'] for r in rows]}; progress {[r['progress'] for r in rows]}", file=sys.stderr)
    try:
        from somnray.train.evaluate import evaluate_run  # noqa: F401 - present once evaluation lands
    except ImportError:
        return
    from somnray.scoring.scorer import Scorer

    assert Scorer.load(str(search / "best"), device="cpu", precision="fp32").info.model == "coresleep_tiny"


# slow: a Tune search with MLflow logging (~1 min idle, 4 loaded); training's MLflow logging is
# checked in the default tier.
@pytest.mark.integration
@pytest.mark.slow
def test_search_that_logs_to_mlflow_puts_the_winners_bundle_in_a_best_run(
        tmp_path, ray_local, mlflow_server, monkeypatch, capsys) -> None:
    """logging.mlflow on a 1-trial search: an MLflow run <search>/best holds the winner's bundle and metrics."""
    from mlflow import MlflowClient

    from somnray.jobs import cmd_tune

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cfg, space, _ = write_search_inputs(tmp_path)
    experiment = f"tune-{tmp_path.name[-8:]}"
    with cfg.open("a") as fh:
        fh.write(f"logging: {{mlflow: {{tracking_uri: '{mlflow_server.uri}', experiment: {experiment}}}}}\n")
    assert cmd_tune.main([str(cfg), str(space), "--samples", "1", "--scheduler", "fifo",
                          "--storage", str(tmp_path / "runs"), "--name", "s1"]) == 0
    capsys.readouterr()
    [row] = list(csv.DictReader((tmp_path / "runs" / "s1" / "leaderboard.csv").read_text().splitlines()))

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    [best] = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 's1/best'")
    assert best.info.status == "FINISHED" and best.data.params["model"] == "coresleep_tiny"
    assert best.data.metrics["train.val_macro_f1"] == pytest.approx(float(row["value"]))
    files = {f.path for f in client.list_artifacts(best.info.run_id, "model")}
    assert files == {"model/model.json", "model/model.pt", "model/MODEL_CARD.md", "model/model_card.json"}
    logged = Path(client.download_artifacts(best.info.run_id, "model/model.json", str(tmp_path)))
    local = tmp_path / "runs" / "s1" / "best" / "model" / "model.json"
    assert json.loads(logged.read_text())["weights_sha256"] == json.loads(local.read_text())["weights_sha256"]


@pytest.mark.integration
@pytest.mark.slow  # ≈ 2 min: two searches, one killed midway (`make test-slow`)
def test_interrupted_search_completes_with_resume(tmp_path, ray_local, monkeypatch, capsys) -> None:
    """Kill the driver once a trial has finished; `somnray tune --resume` completes all 4 and keeps it."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from somnray.jobs import cmd_tune

    cfg, space, _ = write_search_inputs(tmp_path)
    search = tmp_path / "runs" / "s2"
    env = {**os.environ, "RAY_ADDRESS": ray_local.address}
    log = open(tmp_path / "driver.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "somnray.jobs.cmd_tune", str(cfg), str(space),
                             "--samples", "4", "--scheduler", "fifo", "--max-concurrent", "2",
                             "--storage", str(tmp_path / "runs"), "--name", "s2"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 420  # generous: shared 2-core machines
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(search.glob("trial_*/train/phase_result.json"))
            states = list(search.glob("experiment_state-*.json"))
            if len(done) >= 1 and states and max(s.stat().st_mtime for s in states) > max(
                    d.stat().st_mtime for d in done):
                break
            time.sleep(1)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    finished_before = {p.parent.parent.name for p in search.glob("trial_*/train/phase_result.json")}
    assert 1 <= len(finished_before) < 4
    status = cmd_tune.main(["--resume", str(search)])
    assert status == 0
    rows = list(csv.DictReader((search / "leaderboard.csv").read_text().splitlines()))
    assert len(rows) == 4 and all(r["value"] for r in rows)
    assert {f"trial_{r['trial_id']}" for r in rows} >= finished_before
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"file://{search / 'best'}"
