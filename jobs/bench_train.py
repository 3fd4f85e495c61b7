"""``somnray bench train``: the cost of Ray Train + DeepSpeed per step, and whether the input pipeline keeps up.

Two measurements, side by side in one run:

(a) **Framework overhead.** The wall time of one training step of the same model on the same
    fixed batch: the training loop's own step (:class:`somnray.train.loop.ForwardBackward` —
    forward, model-owned loss, backward — then ``engine.step()``), (i) in this process with a
    plain PyTorch stand-in for the engine (:class:`PlainEngine`: ``loss.backward()``, the phase's
    Adam and schedule) and (ii) inside a Ray Train ``TorchTrainer`` worker (1 worker) with the
    DeepSpeed engine the loop builds (:func:`somnray.train.loop.build_engine`: client Adam
    optimizer, ZeRO 0, fp32, ``dist_init_required=False`` on Ray's gloo group). Both use the same
    number of torch threads. Steady state only: the first ``warmup`` steps and every start-up cost
    (Ray, the worker group, DeepSpeed's initialisation) are excluded. Target: ≤ 1.10×.
(b) **Input pipeline headroom.** Windows per second that :func:`somnray.train.inputs.iter_window_batches`
    delivers from a prepared dataset (Ray Data reads the Parquet recordings and cuts training
    windows with random offsets), against the rate at which the model of (a) consumes them under
    Ray Train. Target: ≥ 3×.

The default model is the paper-size ``coresleep`` at batch 4 × 21 epochs (the paper trains at 16 ×
21; a CPU step at 16 takes several seconds, so the benchmark scales the batch down — overhead is a
ratio, and a smaller batch makes a fixed per-step overhead *more* visible, not less). ``--quick``
uses ``coresleep_tiny`` at batch 8 × 21 and a smaller cohort.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .benchreport import BenchResult, stopwatch

OVERHEAD_TARGET = 1.10
PIPELINE_TARGET = 3.0


def _fixed_batch(model: Any, batch: int, length: int, seed: int = 0):
    import torch

    from somnray.models import EPOCH_SAMPLES, SleepBatch

    gen = torch.Generator().manual_seed(seed)
    signals = {m: torch.randn(batch, length, EPOCH_SAMPLES, generator=gen) for m in model.modalities}
    present = torch.ones(batch, length, len(model.modalities), dtype=torch.bool)
    labels = torch.randint(0, 5, (batch, length), generator=gen)
    return SleepBatch(signals, present, labels, tuple(model.modalities))


def _bench_phase(model_name: str, batch: int, length: int, dataset: str = "unused"):
    """The phase both sides train: Adam at 1e-4, ZeRO 0, fp32, one worker (``dataset`` is not read)."""
    from somnray.train.config import PhaseConfig

    return PhaseConfig.model_validate({
        "name": "bench", "data": {"dataset": dataset, "split": "manifest", "sequence_length": length},
        "model": {"name": model_name}, "optim": {"optimizer": "adam", "lr": 1e-4, "batch_size": batch},
        "deepspeed": {"zero_stage": 0, "precision": "fp32"}, "scaling": {"num_workers": 1, "use_gpu": False}})


def _timed_steps(engine: Any, phase: Any, length: int, steps: int, warmup: int) -> list[float]:
    """Seconds per training step of ``engine`` after ``warmup`` steps, on one fixed batch.

    A step is the training loop's own unit: :class:`somnray.train.loop.ForwardBackward` (forward,
    the model's loss, the engine's backward), then ``engine.step()``, as the loop runs them.
    """
    from somnray.train.loop import ForwardBackward

    model = engine.module
    weights = model.resolve_loss_weights(phase.loss_weights)
    forward_backward = ForwardBackward(engine, world=1, zero_stage=phase.deepspeed.zero_stage)
    b = _fixed_batch(model, phase.optim.batch_size, length)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        forward_backward(b, weights)
        engine.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


class PlainEngine:
    """The DeepSpeed engine's part that the training step uses, in plain PyTorch (the bare side).

    The bare side must run the same step as the Ray Train side, not a loop of its own, or the
    ratio would compare two pieces of code rather than measure the framework.  So it runs the
    training loop's own step (:func:`_timed_steps`) with this object in DeepSpeed's place: the
    same model call and model-owned loss, ``loss.backward()``, then the phase's optimizer and
    schedule step and the gradients are zeroed, as ``DeepSpeedEngine.step`` does at ZeRO 0.

    Parameters
    ----------
    model : torch.nn.Module
        The model, as ``engine.module``.
    phase : PhaseConfig
        Its optimizer and schedule are built with :mod:`somnray.train.optim`, as the loop's are.
    """

    def __init__(self, model: Any, phase: Any):
        from somnray.train.optim import build_optimizer, build_scheduler

        self.module = model
        self.optimizer = build_optimizer(model.parameters(), phase.optim)
        self.scheduler = build_scheduler(self.optimizer, phase.optim)

    def __call__(self, *inputs: Any) -> Any:
        return self.module(*inputs)

    def backward(self, loss: Any) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def bare_step_times(model_name: str, batch: int, length: int, steps: int, warmup: int, threads: int) -> list[float]:
    """Seconds per training step in this process, without Ray or DeepSpeed, after ``warmup`` steps."""
    import torch

    from somnray.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    phase = _bench_phase(model_name, batch, length)
    engine = PlainEngine(create_model(model_name).train(), phase)
    return _timed_steps(engine, phase, length, steps, warmup)


def deepspeed_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: the training loop's step on a fixed batch, in the loop's DeepSpeed engine, timed."""
    import json

    import ray.train
    import torch

    from somnray.models import create_model
    from somnray.train.config import PhaseConfig
    from somnray.train.loop import build_engine

    torch.set_num_threads(config["threads"])
    phase = PhaseConfig.model_validate(config["phase"])
    torch.manual_seed(0)
    engine = build_engine(create_model(phase.model.name).train(), phase, 1, torch.device("cpu"))[0]
    times = _timed_steps(engine, phase, config["length"], config["steps"], config["warmup"])
    # Result.metrics is only filled when a report carries a checkpoint.
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "times.json").write_text(json.dumps(times))
        ray.train.report({"median_step_s": statistics.median(times), "times": times},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def ray_deepspeed_step_times(model_name: str, batch: int, length: int, steps: int, warmup: int,
                             threads: int, storage: str) -> list[float]:
    """Seconds per step inside a 1-worker ``TorchTrainer`` with DeepSpeed (ZeRO 0, fp32)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    phase = _bench_phase(model_name, batch, length, storage)
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads)}
    for name in ("GLOO_SOCKET_IFNAME", "TORCH_EXTENSIONS_DIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    trainer = TorchTrainer(
        deepspeed_worker,
        train_loop_config={"phase": phase.model_dump(mode="json"), "length": length,
                           "steps": steps, "warmup": warmup, "threads": threads},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name="bench-train", storage_path=storage, worker_runtime_env={"env_vars": env}),
    )
    result = trainer.fit()
    return list(result.metrics["times"])


def pipeline_windows_per_s(dataset_uri: str, modalities: tuple[str, ...], length: int, batch: int,
                           passes: int) -> tuple[float, int]:
    """Windows per second (and windows counted) from ``iter_window_batches`` over training windows.

    The clock starts at the first batch, so Ray Data's plan start-up is excluded, as the training
    loop only pays it once per run.
    """
    from somnray.data.dataset import PreparedDataset
    from somnray.train.inputs import WindowSpec, iter_window_batches, window_dataset

    ids = [e.recording_id for e in PreparedDataset.open(dataset_uri).entries()]
    ds = window_dataset(WindowSpec(dataset_uri, modalities, length, mode="train", seed=0), ids, passes=passes,
                        shuffle_seed=0)
    count, start = 0, None
    for b in iter_window_batches(ds, batch, prefetch_batches=2):
        if start is None:
            start = time.perf_counter()
            continue  # the first batch pays the start-up
        count += int(b["labels"].shape[0])
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    return count / elapsed if elapsed > 0 else float("nan"), count


def run(model: str = "coresleep", batch: int = 4, length: int = 21, steps: int = 10, warmup: int = 3,
        threads: int | None = None, nights: int = 4, hours: float = 4.0, passes: int = 2,
        quick: bool = False) -> BenchResult:
    """Run both measurements and return the result table.

    Parameters
    ----------
    model, batch, length : str, int, int
        The model and the batch of ``batch`` sequences of ``length`` epochs.
    steps, warmup : int
        Timed steps (median reported) after ``warmup`` untimed ones, in each loop.
    threads : int, optional
        Torch threads of both loops (default: ``os.cpu_count()``); the Ray Train worker reserves
        that many Ray CPUs.
    nights, hours, passes : int, float, int
        The synthetic Sleep-EDF-like cohort the input pipeline reads, and passes over it.
    quick : bool
        ``coresleep_tiny`` at batch 8, 3 timed steps, 2 nights of 1 h: a smoke run.
    """
    import ray

    from somnray.core.session import ensure_ray
    from somnray.data import prepare_cohort
    from somnray.data.profiles import load_profile
    from somnray.data.synth import synthesize_cohort
    from somnray.models import create_model

    if quick:
        model, batch, steps, warmup, nights, hours, passes = "coresleep_tiny", 8, 3, 2, 2, 1.0, 1
    threads = threads or max(1, os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="somnray-bench-train-"))
    started_here = not ray.is_initialized()
    ensure_ray()
    try:
        bare = bare_step_times(model, batch, length, steps, warmup, threads)
        framed = ray_deepspeed_step_times(model, batch, length, steps, warmup, threads, str(work / "runs"))
        synthesize_cohort("sleep-edf", work / "cohort", n_nights=nights, seed=0, hours=hours)
        with stopwatch() as prep:
            prepared = prepare_cohort(str(work / "cohort" / "manifest.csv"), load_profile("sleep-edf"),
                                      f"file://{work / 'store'}", progress=False)
        modalities = tuple(create_model(model).modalities)
        rate, windows = pipeline_windows_per_s(prepared.dataset_uri, modalities, length, batch, passes)
    finally:
        if started_here:
            ray.shutdown()

    bare_s, framed_s = statistics.median(bare), statistics.median(framed)
    overhead = framed_s / bare_s
    consumption = batch / framed_s
    headroom = rate / consumption
    shape = f"{batch} × {length}"
    rows = [
        {"case": "bare PyTorch loop (Adam, fp32)", "model": model, "batch × L": shape,
         "step s (median)": bare_s, "windows/s": batch / bare_s, "ratio": 1.0},
        {"case": "Ray Train + DeepSpeed, 1 worker (ZeRO 0, fp32)", "model": model, "batch × L": shape,
         "step s (median)": framed_s, "windows/s": consumption, "ratio": overhead},
        {"case": "input pipeline: iter_window_batches (Ray Data)", "model": model, "batch × L": shape,
         "step s (median)": None, "windows/s": rate, "ratio": headroom},
    ]
    notes = [
        f"Step = forward + loss + backward + optimizer step on one fixed batch, median of {steps} steps "
        f"after {warmup} warm-up steps, {threads} torch thread(s) in both loops; start-up excluded.",
        f"Model: {model}" + (" (paper size; batch scaled down from the paper's 16 for CPU)" if model == "coresleep"
                             else " (tiny test variant)") + ".",
        f"Input pipeline: {windows} training windows of {length} epochs from {nights} synthetic Sleep-EDF-like "
        f"nights of {hours:g} h ({passes} pass(es), prepared in {prep['s']:.0f} s), clock started at the first batch; "
        f"its ratio is windows/s delivered ÷ windows/s the Ray Train + DeepSpeed step consumes.",
        f"Target overhead ≤ {OVERHEAD_TARGET:.2f}×: {'met' if overhead <= OVERHEAD_TARGET else 'NOT met'} ({overhead:.2f}×); "
        f"target pipeline ≥ {PIPELINE_TARGET:g}× consumption: {'met' if headroom >= PIPELINE_TARGET else 'NOT met'} "
        f"({headroom:.1f}×).",
        "Measure on an idle machine: both loops share its cores with everything else running.",
    ]
    return BenchResult("train", "Train: Ray Train + DeepSpeed overhead and input-pipeline headroom (CPU)", rows, notes)
