"""Population-based training: settings validation, mutation derivation, the optimizer override after
continuing another run (unit), and a real PBT search with exploits (integration)."""

from __future__ import annotations

import csv
import json
import math
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from somnray.train.config import validate_experiment
from somnray.train.loop import apply_optim_hyperparameters
from somnray.train.optim import build_optimizer, build_scheduler
from somnray.tune.search import SearchSettings
from somnray.tune.space import clip_to_bounds, pbt_bounds, pbt_fixed_reason, pbt_mutations, space_from_mapping

from test_search import write_search_inputs  # (it puts tests/train on sys.path too)
from test_space import experiment

SPACE = {"params": {
    "optim.lr": {"distribution": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
    "loss_weights.align": {"distribution": "loguniform", "low": 0.01, "high": 1.0},
    "missing.curriculum.end_rate": {"distribution": "uniform", "low": 0.1, "high": 0.5},
    "missing.curriculum.kind": {"distribution": "choice", "values": ["linear", "cosine"]},
    "missing.curriculum.ramp_steps": {"distribution": "randint", "low": 2, "high": 8},
    "optim.batch_size": {"distribution": "choice", "values": [4, 8]},
    "seed": {"distribution": "choice", "values": [1, 2]},
}}


def test_mutations_come_from_the_perturbable_entries_of_the_space() -> None:
    """Numbers and choices of loss weights, missing settings and optimizer hyperparameters are perturbed;
    randint, batch size and seed stay fixed per lineage, each with its reason."""
    from ray import tune

    space = space_from_mapping(SPACE, experiment())
    mutations = pbt_mutations(space)
    assert set(mutations) == {"optim.lr", "loss_weights.align", "missing.curriculum.end_rate",
                              "missing.curriculum.kind"}
    assert isinstance(mutations["optim.lr"], tune.search.sample.Float)
    assert mutations["missing.curriculum.kind"] == ["linear", "cosine"]
    reasons = {p.path: pbt_fixed_reason(p) for p in space.params}
    assert "'randint' entries are not perturbed" in reasons["missing.curriculum.ramp_steps"]
    assert "checkpoint cannot continue" in reasons["optim.batch_size"]
    assert "checkpoint cannot continue" in reasons["seed"]
    bounds = pbt_bounds(space)
    assert bounds == {"optim.lr": (1e-4, 1e-2), "loss_weights.align": (0.01, 1.0),
                      "missing.curriculum.end_rate": (0.1, 0.5)}
    clipped = clip_to_bounds({"optim.lr": 0.012, "missing.curriculum.end_rate": 0.05,
                              "loss_weights.align": 0.5, "missing.curriculum.kind": "cosine"}, bounds)
    assert clipped == {"optim.lr": 0.01, "missing.curriculum.end_rate": 0.1, "loss_weights.align": 0.5,
                       "missing.curriculum.kind": "cosine"}


def test_pbt_settings_report_every_problem() -> None:
    """Grid entries, optuna, a single sample, bad fractions, an interval shorter than validate_every
    and a space with nothing to perturb are each refused with the reason."""
    cfg = experiment()  # 4 steps, validates every 2
    grid = space_from_mapping({"params": {"optim.lr": {"distribution": "grid", "values": [1e-3, 1e-4]}}}, cfg)
    problems = SearchSettings(scheduler="pbt", num_samples=1, search_alg="optuna", quantile_fraction=0.7,
                              resample_probability=1.5, perturbation_steps=1).problems(grid, cfg)
    text = "\n".join(problems)
    assert "samples must be >= 2" in text
    assert "cannot run with search_alg 'optuna'" in text
    assert "quantile_fraction: must lie in (0, 0.5], got 0.7" in text
    assert "resample_probability: must lie in [0, 1], got 1.5" in text
    assert "cannot run 'grid' entries (optim.lr)" in text
    assert "nothing to perturb" in text and "'grid' entries are not perturbed" in text
    assert "at least once per interval (1 steps), but phase train validates every 2" in text
    assert "cannot run 'grid' entries; use choice" in text  # optuna's own refusal of grids
    long = SearchSettings(scheduler="pbt", num_samples=4, perturbation_steps=4).problems(None, cfg)
    assert long == ["perturbation_steps: the interval (4) must be below the recipe's 4 steps, or PBT never perturbs"]
    space = space_from_mapping(SPACE, cfg)
    assert SearchSettings(scheduler="pbt", num_samples=4, perturbation_steps=2).problems(space, cfg) == []
    assert SearchSettings(scheduler="pbt").perturbation_interval(cfg) == 4  # default: 2 x validate_every


def test_continued_optimizer_takes_the_new_phase_hyperparameters() -> None:
    """After loading another run's optimizer and scheduler state, lr (within the schedule) and weight
    decay are the new config's, the moments and step count are the loaded ones, and later steps follow
    the new base lr."""
    def phase(lr: float, wd: float):
        raw = experiment().model_dump(mode="json")["phases"][0]
        raw["optim"].update(optimizer="adamw", lr=lr, weight_decay=wd, schedule="warmup_cosine",
                            warmup_steps=2, max_steps=10)
        return validate_experiment({"storage": {"uri": "/tmp/x", "name": "x"}, "phases": [raw]}).phases[0]

    old, new = phase(1e-3, 0.0), phase(4e-4, 0.05)
    w = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([w], old.optim)
    sched = build_scheduler(opt, old.optim)
    for _ in range(4):
        (w ** 2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = build_optimizer([w2], new.optim)
    sched2 = build_scheduler(opt2, new.optim)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])  # the old run's lr, before
    apply_optim_hyperparameters(SimpleNamespace(optimizer=opt2), opt2, sched2, new)
    from somnray.train.optim import lr_factor

    assert sched2.last_epoch == 4
    assert opt2.param_groups[0]["lr"] == pytest.approx(4e-4 * lr_factor(new.optim, 4))
    assert opt2.param_groups[0]["weight_decay"] == 0.05
    assert torch.equal(opt2.state[w2]["exp_avg"], opt.state[w]["exp_avg"])
    (w2 ** 2).sum().backward()
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(4e-4 * lr_factor(new.optim, 5))


def test_leaderboard_names_a_trial_by_its_folder_when_its_last_result_is_the_donors(tmp_path) -> None:
    """A trial exploited at its last report ends with the donor's last result (Tune restores it with
    the donor's metrics, trial_id included): the leaderboard still has one row per trial folder, each
    with its own reports' value."""
    from somnray.core.storage import resolve
    from somnray.tune.layout import GENERATION, REPORTS_FILE, TIME_ATTR
    from somnray.tune.report import collect_records

    cfg = experiment()
    for trial, loss in (("a_00000", 0.9), ("a_00001", 0.4)):
        folder = tmp_path / f"trial_{trial}"
        folder.mkdir()
        (folder / REPORTS_FILE).write_text(json.dumps({"val_loss": loss, TIME_ATTR: 4, GENERATION: 0,
                                                       "phase": cfg.phases[-1].name, "step": 4}) + "\n")
    donor_result = {"trial_id": "a_00001", "val_loss": 0.4, TIME_ATTR: 4}
    grid = [SimpleNamespace(metrics=dict(donor_result), path=str(tmp_path / f"trial_{t}"), config={},
                            error=None, metrics_dataframe=None) for t in ("a_00000", "a_00001")]
    records = collect_records(resolve(str(tmp_path)), grid, cfg, SimpleNamespace(metric="val_loss",
                                                                                 resolved_mode="min"))
    assert [(r.trial_id, r.value) for r in records] == [("a_00001", 0.4), ("a_00000", 0.9)]


def test_leaderboard_shows_the_config_of_the_final_lineage_not_the_donors(tmp_path) -> None:
    """A trial exploited at its last report carries the donor's config in Tune's last result; its
    leaderboard row shows the perturbed config its final lineage started with."""
    from somnray.core.storage import resolve
    from somnray.tune.layout import GENERATION, LINEAGE_FILE, REPORTS_FILE, TIME_ATTR
    from somnray.tune.report import collect_records

    cfg = experiment()
    folder = tmp_path / "trial_a_00000"
    folder.mkdir()
    (folder / REPORTS_FILE).write_text(json.dumps({"val_loss": 0.5, TIME_ATTR: 4, GENERATION: 0,
                                                   "phase": cfg.phases[-1].name, "step": 4}) + "\n")
    (folder / LINEAGE_FILE).write_text(json.dumps({"exploits": [
        {"generation": 1, "folder": str(folder / "exploit-1"), "config": {"optim.lr": 0.8e-3},
         "donor_config": {"optim.lr": 1e-3}}]}))
    grid = [SimpleNamespace(metrics={"val_loss": 0.4, TIME_ATTR: 4}, path=str(folder),
                            config={"optim.lr": 1e-3}, error=None, metrics_dataframe=None)]
    [record] = collect_records(resolve(str(tmp_path)), grid, cfg, SimpleNamespace(metric="val_loss",
                                                                                  resolved_mode="min"))
    assert record.exploits == 1 and record.params == {"optim.lr": 0.8e-3}


# ------------------------------------------------------------------------------------------------
# integration: a real PBT search on the session's 2-CPU cluster
# ------------------------------------------------------------------------------------------------
PBT_SPACE = textwrap.dedent("""\
    # PBT test space: every entry is perturbable
    params:
      optim.lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}
      loss_weights.align: {distribution: loguniform, low: 0.01, high: 1.0}
      missing.curriculum.end_rate: {distribution: uniform, low: 0.1, high: 0.5}
      missing.curriculum.kind: {distribution: choice, values: [linear, cosine]}
    """)
MAX_STEPS, EVERY = 6, 2


def _reports(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "reports.jsonl").read_text().splitlines() if line.strip()]


def _path(uri: str) -> str:
    return uri.removeprefix("file://")


@pytest.mark.integration
def test_pbt_search_exploits_and_continues_the_donor_checkpoint(tmp_path, tmp_path_factory, ray_local, synth_cohort,
                                                                monkeypatch, capsys) -> None:
    """4 trials, 2 at a time, PBT every 2 steps: an exploited trial continues the donor's checkpoint (its
    step count goes on from the donor's), reports the perturbed lr, and the search ends with a
    leaderboard of final configs and a best/ that evaluate_run scores.

    Training is seeded, so the two trials started together rank the same way at each report; with two
    trials in lockstep that guarantees an exploit at step 4 (the weaker clones the stronger's save)."""
    import random

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    random.seed(0)  # PBT's choices (which donor, which factor) use the driver's `random`
    from somnray.jobs import cmd_tune

    cfg, space, _ = write_search_inputs(tmp_path, PBT_SPACE, max_steps=MAX_STEPS, validate_every=EVERY,
                                         ramp_steps=4)
    start = time.perf_counter()
    status = cmd_tune.main([str(cfg), str(space), "--samples", "4", "--scheduler", "pbt", "--max-concurrent", "2",
                            "--metric", "val_loss", "--perturbation-steps", str(EVERY), "--quantile-fraction", "0.5",
                            "--resample-probability", "0", "--storage", str(tmp_path / "runs"), "--name", "pbt"])
    wall = time.perf_counter() - start
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0, out[-20:]
    search = tmp_path / "runs" / "pbt"
    assert out[-1] == f"file://{search / 'best'}"

    exploits = [(trial, e) for trial in sorted(search.glob("trial_*")) if (trial / "lineage.json").exists()
                for e in json.loads((trial / "lineage.json").read_text())["exploits"]]
    print(f"\n[tune] 4-trial PBT search: {wall:.1f} s wall; exploits "
          f"{[(t.name, e['donor_trial'], e['step']) for t, e in exploits]}", file=sys.stderr)
    assert exploits, "PBT exploited no trial"
    continued = [(t, e) for t, e in exploits if e["step"] < MAX_STEPS]
    assert continued, "every exploit happened at the end of training: nothing left to check"
    for trial, e in continued:
        assert e["donor_trial"] != trial.name.removeprefix("trial_")
        assert Path(_path(e["checkpoint_uri"])).is_relative_to(search / f"trial_{e['donor_trial']}")
        # The exploit's own Ray Train run lives in the exploited trial's folder and goes on from the
        # donor's step with the donor's state.
        folder = Path(_path(e["folder"]))
        states = [json.loads(p.read_text()) for p in folder.glob("train/checkpoint_*/trainer_state.json")]
        assert folder.parent == trial and states
        first = min(states, key=lambda s: s["loop"]["step"])
        assert first["loop"]["step"] == e["step"] + EVERY
        assert first["loop"]["continued_from"][-1] == {"step": e["step"], "checkpoint": _path(e["checkpoint_uri"])}
        # Tune saw the generation's reports continue the donor's tune_step, with the new config's lr.
        rows = [r for r in _reports(trial) if r.get("generation") == e["generation"]]
        assert rows and rows[0]["step"] == e["step"] + EVERY and rows[0]["tune_step"] == e["tune_step"] + EVERY
        new_lr, donor_lr = e["config"]["optim.lr"], e["donor_config"]["optim.lr"]
        assert not math.isclose(new_lr, donor_lr, rel_tol=1e-6)  # perturbed (× 0.8 or × 1.2)
        assert rows[0]["config"]["optim.lr"] == pytest.approx(new_lr)
        assert rows[0]["lr"] == pytest.approx(new_lr)  # constant schedule: the lr in force is the new one
        assert first["metrics"]["lr"] == pytest.approx(new_lr)

    rows = list(csv.DictReader((search / "leaderboard.csv").read_text().splitlines()))
    assert len(rows) == 4 and all(r["value"] for r in rows)
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values)  # val_loss: minimised
    by_trial = {r["trial_id"]: r for r in rows}
    for trial, e in exploits:
        row = by_trial[trial.name.removeprefix("trial_")]
        lineage = json.loads((trial / "lineage.json").read_text())["exploits"]
        assert int(row["exploits"]) == len(lineage)
        assert float(row["param:optim.lr"]) == pytest.approx(lineage[-1]["config"]["optim.lr"])  # final config
        assert _path(row["checkpoint_uri"]).startswith(_path(lineage[-1]["folder"])) or \
            row["checkpoint_uri"] == lineage[-1]["checkpoint_uri"]
    assert "final lineage" in (search / "leaderboard.md").read_text()

    from run_factory import prepared_cohort

    from somnray.train.evaluate import EvaluationOptions, EvaluationRun, evaluate_run

    prepared = prepared_cohort(tmp_path_factory, synth_cohort, n_nights=4, hours=1.0)  # shared with test_evaluate
    report = evaluate_run([EvaluationRun(str(search / "best"))], prepared,
                          EvaluationOptions(split="all", scenarios=["all"], workers=1, write=False))
    assert report.model == "coresleep_tiny" and 0.0 <= report.pooled("all").accuracy <= 1.0
