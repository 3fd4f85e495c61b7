"""The Ray Train worker loop: one phase of DeepSpeed training with validation and checkpoints.

:func:`train_loop_per_worker` runs on every worker. It rebuilds the typed phase config from the
plain data the driver sends, builds the model and a torch client optimizer, hands both to
``deepspeed.initialize`` (reusing the process group Ray Train created), and then runs one linear
loop: micro-batches → missing-modality masks at the step's rate → forward → model-owned loss → backward →
step; every ``validate_every`` steps it validates on its shard of the validation windows,
all-reduces the confusion matrix, and every rank saves a DeepSpeed checkpoint and calls
``ray.train.report`` (Ray merges the ranks' folders into one checkpoint). Early stopping counts
validation checks without improvement of the monitored metric.

A checkpoint folder holds:

* ``state/`` — DeepSpeed's engine, optimizer and scheduler state (resume);
* ``model.pt`` — the full model ``state_dict`` in fp32 (the next phase's ``init_from`` and
  scoring read this, without DeepSpeed);
* ``trainer_state.json`` — step, best metric, checks without improvement, phase name.

After a worker failure Ray Train restarts the group and :func:`ray.train.get_checkpoint` returns
the latest checkpoint; the loop resumes from its step (the data stream restarts from the
beginning of the shard; window offsets of a pass are reproducible, not its position), and
``trainer_state.json`` lists the steps it resumed from in ``loop.resumed_from``.

A run can also *continue another run's state* (``continue_from`` in the loop config; population-based
training's exploit, :mod:`somnray.tune.search`): when this run has no checkpoint of its own yet, the
loop loads that checkpoint's full state (weights, DeepSpeed optimizer and scheduler state, step,
early-stopping state) and then re-applies **this** phase config's optimizer hyperparameters (learning
rate, weight decay, betas, ...; :func:`apply_optim_hyperparameters`), because the restored optimizer and
scheduler carry the other run's values. Loss weights and the missing-modality curriculum need nothing:
the loop reads them from the phase config at every step. ``loop.continued_from`` records the step and
checkpoint continued from. Once the run has reported a checkpoint of its own, a worker failure resumes
from that one exactly as above (Ray Train's checkpoint wins over ``continue_from``).

Test hook: with the environment variable ``SOMNRAY_FAULT_AT_STEP=N`` (passed to the workers by the
driver), rank 0 kills its own process with ``os._exit(1)`` right after optimizer step ``N``, once
per phase: a marker file ``<run>/<phase>/fault-injected-at-step-N`` makes the restarted group
carry on. It exists to test recovery end to end (tests/train/test_fault_tolerance.py). The group
resumes from the latest checkpoint the Ray Train controller has registered: a report still queued
when the process dies is lost, as it would be on a real crash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .config import PhaseConfig
from .distributed import autocast_dtype, build_deepspeed_config, precision_of, training_device
from .inputs import TrainingStatistics, apply_training_statistics, iter_window_batches, to_sleep_batch
from .metrics import StagingMetrics
from .missing import MissingSimulator
from .optim import build_optimizer, build_scheduler, group_base_lrs, learning_rate_groups
from .tracking import MetricSinks

log = logging.getLogger(__name__)

#: DeepSpeed checkpoint tag inside a checkpoint folder.
STATE_TAG = "state"
MODEL_FILE = "model.pt"
TRAINER_STATE_FILE = "trainer_state.json"
#: Environment variable of the fault-injection test hook (see the module docstring).
FAULT_ENV = "SOMNRAY_FAULT_AT_STEP"


@dataclass
class LoopState:
    """What the loop needs to resume besides the DeepSpeed state."""

    step: int = 0
    best: float | None = None
    bad_checks: int = 0
    stopped_early: bool = False
    #: Steps this phase resumed from after worker failures, in order.
    resumed_from: list[int] = field(default_factory=list)
    #: Other runs' checkpoints this lineage continued from (``{"step", "checkpoint"}``), in order.
    continued_from: list[dict[str, Any]] = field(default_factory=list)

    def improved(self, value: float, mode: str) -> bool:
        """Whether ``value`` beats the best so far (and record it)."""
        better = self.best is None or (value < self.best if mode == "min" else value > self.best)
        if better:
            self.best, self.bad_checks = value, 0
        else:
            self.bad_checks += 1
        return better


def loop_config(phase: PhaseConfig, modalities: tuple[str, ...], stats: TrainingStatistics, *,
                use_gpu: bool, init_checkpoint: Any = None, phase_uri: str | None = None,
                storage_options: Mapping[str, Any] | None = None, run_name: str = "",
                continue_from: Any = None, mlflow: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``train_loop_config`` the driver passes: plain, picklable data only.

    ``phase_uri`` (``<run>/<phase>``) is where rank 0 writes TensorBoard files and the
    fault-injection marker; ``storage_options`` reach it (resolved on the driver, because workers
    may have started before the driver's environment named the store). ``init_checkpoint`` gives
    initial weights only: a ``ray.train.Checkpoint`` holding ``model.pt`` (``init_from: previous``)
    or a ``ray.ObjectRef`` of a ``state_dict`` (``init_from: <URI>``,
    :meth:`somnray.train.finetune.SourceModel.init_weights`); ``continue_from`` another run's checkpoint whose
    full state this run continues with this phase's hyperparameters (see the module docstring).
    ``mlflow`` is :func:`somnray.train.tracking.mlflow_loop_config` (resolved on the driver, whose
    environment may name the server).
    """
    return {
        "phase": phase.model_dump(mode="json"),
        "phase_uri": phase_uri,
        "storage_options": dict(storage_options or {}),
        "run_name": run_name,
        "use_gpu": bool(use_gpu),
        "modalities": list(modalities),
        "class_counts": stats.class_counts.tolist(),
        "fitted": {name: value.tolist() for name, value in stats.fitted.items()},
        "init_checkpoint": init_checkpoint,
        "continue_from": continue_from,
        "mlflow": dict(mlflow) if mlflow else None,
    }


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def _cycle(make: Any) -> Iterator[Mapping[str, torch.Tensor]]:
    """Iterate ``make()`` forever (a new pass over the shard when one ends)."""
    while True:
        empty = True
        for batch in make():
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the training shard yielded no batch: fewer windows than one micro-batch "
                               "per worker; lower optim.batch_size or use more recordings")


def _initial_weights(init: Any) -> Mapping[str, torch.Tensor]:
    """The ``state_dict`` a phase starts from: another model's weights the driver put in Ray's object
    store (``init_from: <URI>``), or the ``model.pt`` of the previous phase's best checkpoint."""
    import ray

    if isinstance(init, ray.ObjectRef):
        return ray.get(init)
    with init.as_directory() as folder:
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{init.path}: no {MODEL_FILE} in the previous phase's checkpoint")
        return torch.load(path, map_location="cpu", weights_only=True)


def start_from_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], stats: TrainingStatistics,
                       init_statistics: str) -> list[str]:
    """Load the weights a phase starts from into ``model``, then apply ``init_statistics``.

    The weights carry the statistics buffers their model was trained with (spectrogram
    normalisation, ...). ``keep`` leaves those: the new data are normalised as the source's
    training data were, which the source's later layers expect. ``refit`` installs ``stats``, the
    statistics fitted on this phase's own training split, over them.

    Parameters
    ----------
    model : SleepStagingModel
        The phase's freshly built model.
    state : mapping of str to Tensor
        The source's (or the previous phase's) ``state_dict``.
    stats : TrainingStatistics
        What the model fitted on this phase's training split.
    init_statistics : {"keep", "refit"}
        The phase's ``init_statistics``.

    Returns
    -------
    list of str
        The buffers refitted (empty with ``keep``).
    """
    model.load_state_dict(state)
    return apply_training_statistics(model, stats) if init_statistics == "refit" else []


def _maybe_inject_fault(phase_uri: str | None, storage_options: Mapping[str, Any], step: int, rank: int) -> None:
    """The ``SOMNRAY_FAULT_AT_STEP`` test hook: kill rank 0 once, right after step ``N``."""
    at = os.environ.get(FAULT_ENV)
    if not at or rank != 0 or phase_uri is None or int(at) != step:
        return
    from somnray.core.storage import resolve

    marker = resolve(phase_uri, storage_options).join(f"fault-injected-at-step-{step}")
    if marker.exists():
        return
    marker.parent.makedirs()
    marker.write_text(f"{FAULT_ENV}={at}: rank 0 exited after step {step}\n")
    log.warning("%s=%s: killing rank 0 after step %d (test hook)", FAULT_ENV, at, step)
    os._exit(1)  # a hard crash, as a lost node would be: no Python clean-up, no report


def _full_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """The fp32 model weights on rank 0 (every rank must call it under ZeRO-3)."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: gathers the shards
    else:
        state = engine.module.state_dict()
    if state is None:
        return None
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}


@torch.no_grad()
def validate(engine: Any, shard: Any, modalities: tuple[str, ...], phase: PhaseConfig, device: torch.device,
             dtype: torch.dtype, loss_weights: Mapping[str, float],
             simulator: MissingSimulator | None = None) -> dict[str, float]:
    """Loss and metrics over the worker's validation shard, all-reduced over workers.

    Each epoch counts once (the window's ``scored`` mask), whatever the evaluation stride. With
    ``missing.validation: masked`` the windows get their recordings' masks at the simulator's
    validation rate (the same masks at every check; noise drawn from the phase seed).
    """
    masked = simulator is not None and phase.missing.validation == "masked"
    rate = simulator.validation_rate if masked else 0.0
    rng = np.random.default_rng(phase.seed)
    engine.eval()
    cm = torch.zeros(5, 5, dtype=torch.float64)
    loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of batch losses × scored epochs, scored epochs)
    micro = max(phase.optim.batch_size // max(phase.scaling.num_workers * phase.optim.grad_accum_steps, 1), 1)
    for raw in iter_window_batches(shard, micro, prefetch_batches=phase.data.prefetch_batches):
        batch = to_sleep_batch(raw, modalities, simulator=simulator if masked else None, rate=rate, rng=rng,
                               device=device, dtype=dtype)
        batch.labels = torch.where(raw["scored"].to(device), batch.labels, torch.full_like(batch.labels, -1))
        output = engine(batch.signals, batch.present)
        n_scored = int((batch.labels >= 0).sum())
        if not n_scored:
            continue
        total = engine.module.loss(output, batch, loss_weights)["total"]
        loss_sum += torch.tensor([float(total) * n_scored, n_scored], dtype=torch.float64)
        keep = batch.labels >= 0
        pred = output.logits.argmax(-1)[keep].cpu()
        true = batch.labels[keep].cpu()
        cm += torch.bincount(true * 5 + pred, minlength=25).reshape(5, 5).double()
    _all_reduce(cm)
    _all_reduce(loss_sum)
    engine.train()
    metrics = StagingMetrics.from_confusion(cm.long().numpy())
    out = {f"val_{k}": v for k, v in metrics.as_flat_dict().items()}
    out["val_loss"] = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else float("nan")
    return out


class _ForwardAndLoss(torch.nn.Module):
    """``engine(signals, present)`` then the model's loss, as one module call for ``functional_call``."""

    def __init__(self, engine: Any):
        super().__init__()
        self.engine = engine

    def forward(self, batch: Any, loss_weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
        output = self.engine(batch.signals, batch.present)  # DeepSpeed's forward and its backward hooks
        return self.engine.module.loss(output, batch, loss_weights)


class ForwardBackward:
    """One micro-batch: forward, the model's loss terms, and DeepSpeed's backward.

    The missing-modality models run a different graph for different batches: a modality absent
    from a whole batch skips its branch, an epoch without a second modality skips cross-attention.
    On several workers that breaks ZeRO-1/2, which reduces gradients as autograd produces them
    (ranks whose graphs differ reduce different sets, or the same set in another order: a
    collective mismatch or silently mixed-up gradients). So on several workers under ZeRO the
    forward pass reads every trainable parameter through one concatenated vector: autograd then
    hands every parameter its gradient (zeros where unused) in one step, in parameter order, on
    every rank. The copy costs one pass over the weights (a few MB for these models). Stage 0
    needs none of this: DeepSpeed reduces in parameter order and zero-fills missing gradients.

    Parameters
    ----------
    engine : deepspeed.DeepSpeedEngine
        The initialised engine (its module is a :class:`~somnray.models.base.SleepStagingModel`);
        which parameters are trainable is read once, here (a phase's frozen groups stay frozen).
    world : int
        Number of data-parallel workers.
    zero_stage : int
        The DeepSpeed ZeRO stage.
    """

    def __init__(self, engine: Any, *, world: int, zero_stage: int):
        self.engine = engine
        self._step = _ForwardAndLoss(engine)
        self._trainable = ([(f"engine.module.{name}", p) for name, p in engine.module.named_parameters()
                            if p.requires_grad] if world > 1 and zero_stage > 0 else None)

    def __call__(self, batch: Any, loss_weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Run ``batch`` (a ``SleepBatch`` on the engine's device); return its loss terms, ``total`` included."""
        if self._trainable is None:
            losses = self._step(batch, loss_weights)
        else:
            flat = torch.cat([p.reshape(-1) for _, p in self._trainable])
            views = flat.split([p.numel() for _, p in self._trainable])
            params = {name: v.view_as(p) for (name, p), v in zip(self._trainable, views)}
            losses = torch.func.functional_call(self._step, params, (batch, loss_weights))
        self.engine.backward(losses["total"])
        return losses


def build_engine(model: torch.nn.Module, phase: PhaseConfig, world: int,
                 device: torch.device) -> tuple[Any, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR,
                                                dict[str, Any]]:
    """The DeepSpeed engine of one phase on a worker of ``world``.

    ``phase.optim``'s torch optimizer and schedule (:mod:`.optim`) are handed to
    ``deepspeed.initialize`` as client objects, with the DeepSpeed config of ``phase``; the engine
    joins the process group Ray Train created (``dist_init_required=False``).

    Returns
    -------
    tuple
        ``(engine, optimizer, scheduler, ds_config)``.
    """
    import deepspeed

    ds_config = build_deepspeed_config(phase, world, device)
    params = (learning_rate_groups(model.named_parameters(), model.parameter_groups(), phase.optim)
              if phase.optim.group_lr else model.parameters())
    optimizer = build_optimizer(params, phase.optim)
    scheduler = build_scheduler(optimizer, phase.optim)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    return engine, optimizer, scheduler, ds_config


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one phase on this worker (Ray Train's ``train_loop_per_worker``).

    Parameters
    ----------
    config : dict
        Built by :func:`loop_config` on the driver.
    """
    import ray.train
    import ray.train.torch

    from somnray.models import create_model

    phase = PhaseConfig.model_validate(config["phase"])  # the typed config, again, on the worker
    modalities = tuple(config["modalities"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # The driver resolved use_gpu ("auto" → whether the cluster has GPUs); Ray Train then
    # assigns each worker its GPU and reports it through get_device().
    device = ray.train.torch.get_device() if config["use_gpu"] else training_device(False)

    # Same seed on every rank for the initial weights (DeepSpeed also broadcasts rank 0's).
    _seed_everything(phase.seed)
    model = create_model(phase.model.name, **phase.model.overrides)
    stats = TrainingStatistics(np.asarray(config["class_counts"]),
                               {name: np.asarray(value) for name, value in config["fitted"].items()})
    fitted = apply_training_statistics(model, stats)
    if rank == 0 and fitted:
        print(f"[{phase.name}] fitted on the training split: {', '.join(fitted)}", flush=True)
    if config.get("init_checkpoint") is not None:
        start_from_weights(model, _initial_weights(config["init_checkpoint"]), stats, phase.init_statistics)
    if phase.freeze:
        model.freeze(phase.freeze)
    loss_weights = model.resolve_loss_weights(phase.loss_weights)

    engine, optimizer, scheduler, ds_config = build_engine(model, phase, world, device)
    dtype = autocast_dtype(precision_of(ds_config))

    state = LoopState()
    resume = ray.train.get_checkpoint()
    # This run's own checkpoint (a worker-failure restart) wins; another run's state is only the start.
    continued = resume is None and config.get("continue_from") is not None
    if continued:
        resume = config["continue_from"]
    if resume is not None:
        with resume.as_directory() as folder:
            engine.load_checkpoint(folder, tag=STATE_TAG)
            state = LoopState(**json.loads((Path(folder) / TRAINER_STATE_FILE).read_text())["loop"])
        if continued:
            apply_optim_hyperparameters(engine, optimizer, scheduler, phase)
            state.continued_from.append({"step": state.step, "checkpoint": str(resume.path)})
            if rank == 0:
                print(f"[{phase.name}] continuing {resume.path} from step {state.step} with this phase's "
                      f"hyperparameters (lr {float(engine.get_lr()[0]):.3g})", flush=True)
        else:
            state.resumed_from.append(state.step)
            if rank == 0:
                print(f"[{phase.name}] resumed from the checkpoint at step {state.step}", flush=True)
    if state.stopped_early or state.step >= phase.optim.max_steps:
        return
    sinks = MetricSinks(phase, config.get("phase_uri"), config.get("storage_options"), active=rank == 0,
                        run_name=config.get("run_name", ""), tracking=config.get("mlflow"))

    simulator = MissingSimulator(phase.missing, modalities)
    # Masks come with the windows (drawn per recording); this generator only draws noise values.
    rng = np.random.default_rng([phase.seed, rank, state.step])
    _seed_everything(phase.seed + 7919 * (rank + 1) + state.step)
    micro = ds_config["train_micro_batch_size_per_gpu"]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batches = _cycle(lambda: iter_window_batches(
        train_shard, micro, shuffle_buffer=phase.data.shuffle_buffer, seed=phase.seed + rank,
        prefetch_batches=phase.data.prefetch_batches, drop_last=True))

    forward_backward = ForwardBackward(engine, world=world, zero_stage=phase.deepspeed.zero_stage)
    engine.train()
    running: dict[str, list[float]] = {}  # loss term → values since the last validation
    try:
        while state.step < phase.optim.max_steps:
            step_losses: dict[str, list[float]] = {}
            for _ in range(phase.optim.grad_accum_steps):
                batch = to_sleep_batch(next(batches), modalities, simulator=simulator,
                                       rate=simulator.curriculum.rate_at(state.step), rng=rng, device=device,
                                       dtype=dtype)
                losses = forward_backward(batch, loss_weights)
                engine.step()  # steps the optimizer and scheduler at the accumulation boundary
                for name, value in losses.items():
                    step_losses.setdefault(name, []).append(float(value.detach()))
            state.step += 1
            means = {name: float(np.mean(v)) for name, v in step_losses.items()}
            for name, value in means.items():
                running.setdefault(name, []).append(value)
            sinks.log_step(state.step, means, float(engine.get_lr()[0]))
            _maybe_inject_fault(config.get("phase_uri"), config.get("storage_options") or {}, state.step, rank)

            if state.step % phase.optim.validate_every and state.step < phase.optim.max_steps:
                continue
            if _validate_and_report(engine, val_shard, modalities, phase, device, dtype, loss_weights,
                                    state, running, simulator, sinks, rank):
                break
            running = {}
    finally:
        sinks.close()


def apply_optim_hyperparameters(engine: Any, optimizer: torch.optim.Optimizer,
                                scheduler: torch.optim.lr_scheduler.LambdaLR, phase: PhaseConfig) -> None:
    """Make ``phase.optim``'s hyperparameters current after loading another run's optimizer state.

    ``engine.load_checkpoint`` restores the optimizer's param groups (lr, weight decay, betas...) and
    the scheduler's ``base_lrs`` from the checkpoint: the other run's values. ``optimizer.defaults``
    still holds this phase's (load_state_dict leaves them), the scheduler's lambda is this phase's
    (LambdaLR does not save plain functions), and ``last_epoch`` — the steps taken — stays restored,
    so the schedule continues where the other run was, scaled to this phase's ``lr``.
    """
    from .optim import lr_factor

    # Each group's own configured rate (optim.group_lr), in the order the groups were built.
    bases = group_base_lrs(optimizer.param_groups, phase.optim)
    scheduler.base_lrs = list(bases)
    factor = lr_factor(phase.optim, max(scheduler.last_epoch, 0))
    # DeepSpeed's wrappers (ZeRO, bf16) expose the client optimizer's groups; update each group once.
    base_of = {id(g): b for g, b in zip(optimizer.param_groups, bases)}
    groups = {id(g): g for g in list(optimizer.param_groups) + list(getattr(engine.optimizer, "param_groups", []))}
    for key_id, group in groups.items():
        base = base_of.get(key_id, phase.optim.lr)
        for key, value in optimizer.defaults.items():
            if key in group and key not in ("params", "lr"):
                group[key] = value
        group["initial_lr"] = base
        group["lr"] = base * factor
    scheduler._last_lr = [b * factor for b in bases]


def _validate_and_report(engine: Any, val_shard: Any, modalities: tuple[str, ...], phase: PhaseConfig,
                         device: torch.device, dtype: torch.dtype, loss_weights: Mapping[str, float],
                         state: LoopState, running: Mapping[str, list[float]], simulator: MissingSimulator,
                         sinks: MetricSinks, rank: int) -> bool:
    """Validate, update early stopping, checkpoint and report; True when training should stop."""
    metrics = validate(engine, val_shard, modalities, phase, device, dtype, loss_weights, simulator)
    total = running.get("total", [])
    metrics.update(step=state.step, train_loss=float(np.mean(total)) if total else float("nan"),
                   lr=float(engine.get_lr()[0]), missing_rate=simulator.curriculum.rate_at(state.step))
    metrics.update({f"train_loss_{name}": float(np.mean(v)) for name, v in running.items() if name != "total" and v})
    monitored = metrics[f"val_{phase.optim.monitor}"]
    state.improved(monitored, phase.optim.monitor_mode)
    if phase.optim.patience is not None and state.bad_checks >= phase.optim.patience:
        state.stopped_early = True
    metrics.update(best=state.best, stopped_early=float(state.stopped_early))
    sinks.log_validation(metrics)
    _save_and_report(engine, phase, state, metrics, rank)
    if state.stopped_early and rank == 0:
        print(f"[{phase.name}] early stop at step {state.step}: {phase.optim.monitor} did not improve "
              f"for {phase.optim.patience} checks", flush=True)
    return state.stopped_early


def _save_and_report(engine: Any, phase: PhaseConfig, state: LoopState, metrics: dict[str, float],
                     rank: int) -> None:
    import ray.train

    weights = _full_state_dict(engine, phase.deepspeed.zero_stage)
    with tempfile.TemporaryDirectory(prefix="somnray-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=STATE_TAG)  # every rank writes its shard of the state
        if rank == 0:
            if weights is not None:
                torch.save(weights, os.path.join(tmp, MODEL_FILE))
            doc = {"phase": phase.name, "loop": state.__dict__, "metrics": metrics}
            Path(tmp, TRAINER_STATE_FILE).write_text(json.dumps(doc, indent=2, default=float))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
