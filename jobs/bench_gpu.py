"""``somnray bench gpu``: the numbers a GPU machine gives, next to the MC²SleepNet paper's.

Three measurements, all in bf16 on every CUDA device the machine shows:

1. **Training step per architecture** at its paper's batch (:data:`~.bench_models.CASES`), one
   GPU, forward + loss + backward + Adam, reported as seconds per 1,000 steps — the unit of the
   MC²SleepNet paper's Table 2 (1,005 s per 1,000 steps on an RTX 3090).
2. **Ray Train + DeepSpeed ZeRO-2 on one node**: full-size MC²SleepNet on a small synthetic cohort,
   one worker per visible GPU (NCCL), through :func:`somnray.train.driver.run_experiment` exactly as
   ``somnray train`` runs it; seconds per 1,000 steps from the run's wall time (start-up and data
   loading included, so an upper bound).
3. **Cohort scoring on CUDA**: :func:`somnray.serve.cohort.score_cohort` with one actor per GPU.

On a machine without CUDA it says so and fails (exit 1): there is nothing meaningful to measure.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from somnray.core.errors import SomnrayError

from .bench_models import CASES, ModelBenchCase, step_seconds
from .benchreport import BenchResult, stopwatch

#: MC²SleepNet, Table 2: seconds per 1,000 training steps and the GPU they were measured on.
PAPER_SECONDS_PER_1000 = 1005.0
PAPER_GPU = "RTX 3090"


class NoGPUError(SomnrayError):
    """``somnray bench gpu`` on a machine where torch sees no CUDA device."""


@dataclass(frozen=True)
class GpuPlan:
    """What ``bench gpu`` runs on a machine with ``n_gpus`` CUDA devices (built without a GPU, for tests).

    Attributes
    ----------
    n_gpus : int
        Visible CUDA devices: the Ray Train workers and the scoring actors.
    cases : tuple of ModelBenchCase
        Architectures at their paper batches.
    steps : int
        Timed training steps per architecture (median reported).
    train_steps : int
        Optimiser steps of the Ray Train run.
    experiment : dict
        The experiment config of the Ray Train run (``dataset`` and ``storage`` filled in later).
    """

    n_gpus: int
    cases: tuple[ModelBenchCase, ...] = CASES
    steps: int = 20
    train_steps: int = 200
    experiment: dict[str, Any] = field(default_factory=dict)


def gpu_plan(n_gpus: int, *, quick: bool = False) -> GpuPlan:
    """The measurements for ``n_gpus`` devices: bf16, ZeRO-2, one worker and one actor per GPU."""
    if n_gpus < 1:
        raise NoGPUError("no CUDA device is visible (torch.cuda.is_available() is False); "
                         "somnray bench gpu measures GPUs — run it on a machine with one")
    mc2 = next(c for c in CASES if c.name == "mc2sleepnet")
    train_steps = 20 if quick else 200
    experiment = {
        "seed": 0,
        "data": {"split": {"kind": "holdout", "test_fraction": 0.25, "n_val_subjects": 1, "seed": 0},
                 "modalities": ["eeg"], "sequence_length": mc2.length, "shuffle_buffer": 256},
        "model": {"name": mc2.name, "overrides": {"mask_ratio": 0.5}},
        # the paper's per-step batch on every GPU: the global batch grows with the GPUs
        "optim": {"optimizer": "adam", "lr": 5.0e-4, "batch_size": mc2.batch * n_gpus,
                  "max_steps": train_steps, "validate_every": train_steps},
        "deepspeed": {"zero_stage": 2, "precision": "bf16"},
        "scaling": {"num_workers": n_gpus, "use_gpu": True, "gpus_per_worker": 1.0,
                    "cpus_per_worker": 1.0, "max_failures": 0},
    }
    return GpuPlan(n_gpus=n_gpus, steps=5 if quick else 20, train_steps=train_steps, experiment=experiment)


def _train_run(plan: GpuPlan, work: Path, dataset: str) -> float:
    """Seconds per 1,000 steps of the Ray Train + DeepSpeed run (wall time, start-up included)."""
    import yaml

    from somnray.train.config import load_experiment
    from somnray.train.driver import run_experiment

    doc = {**plan.experiment, "data": {**plan.experiment["data"], "dataset": dataset},
           "storage": {"uri": str(work / "runs"), "name": "bench-gpu"}}
    path = work / "bench-gpu.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with stopwatch() as t:
        run_experiment(load_experiment(path))
    return t["s"] * 1000 / plan.train_steps


def _row(case: str, shape: str, per_1000: float | None, *, paper: bool = False, detail: str = "") -> dict[str, Any]:
    return {"case": case, "batch × L": shape, "s per 1,000 steps": per_1000,
            f"× paper ({PAPER_GPU})": PAPER_SECONDS_PER_1000 / per_1000 if paper and per_1000 else None,
            "detail": detail}


def run(quick: bool = False) -> BenchResult:
    """Run the GPU measurements (module docstring) and return the table.

    Raises
    ------
    NoGPUError
        torch sees no CUDA device.
    """
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = gpu_plan(gpus, quick=quick)  # refuses before anything is imported or written

    import ray

    from somnray.core.session import ensure_ray
    from somnray.data import prepare_cohort
    from somnray.data.profiles import load_profile
    from somnray.data.synth import synthesize_cohort
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    rows: list[dict[str, Any]] = []
    for case in plan.cases:
        secs = step_seconds(case.name, case.batch, case.length, "bf16", plan.steps, device="cuda")
        rows.append(_row(f"{case.name} training step, 1 GPU", f"{case.batch} × {case.length}", secs * 1000,
                         paper=case.name == "mc2sleepnet"))

    work = Path(tempfile.mkdtemp(prefix="somnray-bench-gpu-"))
    nights = 8 if quick else 32
    synthesize_cohort("sleep-edf", work / "cohort", n_nights=nights, seed=0, hours=2.0 if quick else 8.0)
    ensure_ray(include_dashboard=False, temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"), log_to_driver=False)
    try:
        prepared = prepare_cohort(str(work / "cohort" / "manifest.csv"), load_profile("sleep-edf"),
                                  f"file://{work / 'store'}", progress=False)
        per_1000 = _train_run(plan, work, prepared.dataset_uri)
        mc2 = plan.experiment["data"]["sequence_length"]
        rows.append(_row(f"Ray Train + DeepSpeed ZeRO-2, {gpus} GPU(s), NCCL",
                         f"{plan.experiment['optim']['batch_size']} × {mc2}", per_1000, paper=True))
        with stopwatch() as t:
            result = score_cohort(str(work / "runs" / "bench-gpu"), str(work / "cohort" / "manifest.csv"),
                                  str(work / "scored"), CohortScoringOptions(workers=gpus, device="cuda",
                                                                             precision="bf16", progress=False))
        rows.append(_row(f"cohort scoring, {gpus} actor(s) on CUDA", f"{result.scored} nights", None,
                         detail=f"{60 * result.scored / t['s']:.1f} nights/min"))
    finally:
        ray.shutdown()
    notes = [f"GPU: {torch.cuda.get_device_name(0)} × {gpus}; bf16 autocast; paper batches; "
             f"median of {plan.steps} steps after a warm-up step.",
             f"Paper reference: MC²SleepNet {PAPER_SECONDS_PER_1000:g} s per 1,000 steps on an {PAPER_GPU} "
             "(Table 2); '× paper' > 1 means faster.",
             f"Ray Train run: {plan.train_steps} steps of full-size MC²SleepNet on {nights} synthetic nights, "
             "wall time including worker start-up and data loading."]
    return BenchResult("gpu", "GPU: training steps, Ray Train + DeepSpeed, cohort scoring", rows, notes)
