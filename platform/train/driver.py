"""The training driver: one Ray Train ``TorchTrainer`` per phase of an experiment.

For each phase, in order, the driver

1. resolves the subject-wise split and the training / validation recordings;
2. computes the training-split statistics the model normalises with (class counts, spectrogram
   per-bin statistics) on the driver, once;
3. builds the window datasets (training: reproducible random offsets per pass; validation: every
   window) and a ``TorchTrainer`` running :func:`somnray.train.loop.train_loop_per_worker` with
   ``ScalingConfig``, ``RunConfig(storage_path=<run>, name=<phase>)``, a ``FailureConfig`` (worker
   failures restart the group from the latest checkpoint) and a ``CheckpointConfig`` keeping the
   best checkpoints by the monitored validation metric (and always the latest);
4. writes ``<run>/<phase>/phase_result.json`` (best checkpoint, its metrics).

After the last phase it writes ``<run>/metrics.json`` (every phase's best metrics) and exports the
last phase's best weights as the run's model bundle ``<run>/model/`` (:mod:`somnray.train.export`).

Rerunning the same experiment (same ``storage.uri`` and ``storage.name``) skips finished phases
and lets Ray Train resume an unfinished one from its latest checkpoint (Ray Train V2 restores a
run from its storage folder; ``resume_from_checkpoint`` is not supported there).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from somnray.core.storage import StorageLocation, resolve

from .config import ExperimentConfig, PhaseConfig, dump_experiment, model_facts
from .distributed import micro_batch_size
from .missing import incomplete_training_plan
from .export import PHASE_RESULT_FILE, export_bundle, write_run_metrics
from .tracking import ExperimentTracking, check_sinks_available, mlflow_loop_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhaseResult:
    """Outcome of one phase.

    Attributes
    ----------
    name : str
        Phase name.
    checkpoint_uri : str or None
        URI of the best checkpoint folder (None if no validation ran).
    metrics : dict
        The metrics reported with that checkpoint.
    """

    name: str
    checkpoint_uri: str | None
    metrics: dict[str, Any]

    def checkpoint(self, storage_options: Mapping[str, Any] | None = None):
        """The best checkpoint as a ``ray.train.Checkpoint`` (None if there is none)."""
        if self.checkpoint_uri is None:
            return None
        from ray.train import Checkpoint

        loc = resolve(self.checkpoint_uri, storage_options)
        return Checkpoint(loc.path, filesystem=loc.pyarrow_filesystem())


def resolve_use_gpu(use_gpu: str | bool) -> bool:
    """``scaling.use_gpu`` for Ray: ``auto`` means "the cluster has GPUs" (call after ``ray.init``)."""
    if use_gpu != "auto":
        return bool(use_gpu)
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _train_passes(phase: PhaseConfig, windows_per_pass: int) -> int:
    """Passes over the training recordings so that the stream outlasts ``max_steps`` steps.

    The worker loop restarts the stream if it ever runs dry, so this only sizes one stream.
    """
    needed = phase.optim.max_steps * phase.optim.batch_size
    return max(1, min(math.ceil(needed / max(windows_per_pass, 1)) + 1, 1000))


def _storage(cfg: ExperimentConfig) -> StorageLocation:
    loc = resolve(cfg.run_uri)
    if loc.is_local:
        # Ray Train needs an absolute local path; create it so the config copy can go there.
        os.makedirs(loc.path, exist_ok=True)
    return loc


def build_trainer(cfg: ExperimentConfig, phase: PhaseConfig, *, init_checkpoint: Any = None,
                  placement_strategy: str | None = None, callbacks: Sequence[Any] = (), continue_from: Any = None,
                  checkpoints_to_keep: int | None = 2, mlflow_parent: str | None = None):
    """The ``TorchTrainer`` of one phase (datasets, statistics and Ray configs resolved).

    ``placement_strategy`` overrides ``phase.scaling.placement_strategy``, Ray's placement-group
    strategy for the worker group (``PACK``, ``SPREAD``, ``STRICT_SPREAD``: one worker per node, ...);
    ``callbacks`` go to ``RunConfig``
    (e.g. Ray Tune's ``TuneReportCallback``). ``continue_from`` (a ``ray.train.Checkpoint`` of
    another run of this phase) starts the run from that run's full state with this phase's
    hyperparameters — Ray Train V2 has no ``resume_from_checkpoint``; see
    :mod:`somnray.train.loop` — and this run's own checkpoints, once it has one, win on a
    worker-failure restart. ``checkpoints_to_keep`` is Ray Train's ``num_to_keep`` (None: all;
    population-based training needs every checkpoint another trial may still continue from).
    ``mlflow_parent`` is the experiment's MLflow run, when the phase logs to MLflow
    (:class:`~somnray.train.tracking.ExperimentTracking`). Call after ``ray.init``.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from somnray.models import create_model

    from .inputs import WindowSpec, compute_training_statistics, resolve_split, window_dataset
    from .loop import FAULT_ENV, loop_config, train_loop_per_worker

    data_loc = resolve(phase.data.dataset)
    options = dict(data_loc.storage_options)
    split = resolve_split(phase.data, options)
    if not split.train or not split.val:
        from somnray.core.errors import ConfigError

        raise ConfigError(phase.data.dataset, [f"data.split: the split has {len(split.train)} training and "
                                               f"{len(split.val)} validation recordings; both must be non-empty"])
    facts = model_facts(phase.model.name, phase.model.overrides)
    modalities = phase.modalities(facts.modalities)

    model = create_model(phase.model.name, **phase.model.overrides)
    micro = micro_batch_size(phase.optim.batch_size, phase.scaling.num_workers, phase.optim.grad_accum_steps)
    for message in model.training_warnings(micro, phase.data.sequence_length):
        log.warning("phase %s: %s", phase.name, message)
    stats = compute_training_statistics(model, phase.data.dataset, split.train, modalities,
                                        seed=phase.seed, storage_options=options)
    # Labelled epochs / L approximates the windows of one pass (it only sizes the stream).
    windows_per_pass = int(stats.class_counts.sum()) // phase.data.sequence_length or len(split.train)

    common = dict(dataset_uri=phase.data.dataset, modalities=modalities, length=phase.data.sequence_length,
                  missing=phase.missing, storage_options=options)
    train_ids, keep_only = split.train, {}
    if phase.missing.incomplete is not None:
        plan_cfg = phase.missing.incomplete
        plan = incomplete_training_plan(split.train, plan_cfg.multimodal, plan_cfg.unimodal,
                                        plan_cfg.keep or modalities, phase.missing.seed)
        train_ids, keep_only = tuple(plan), {rid: m for rid, m in plan.items() if m is not None}
        log.info("phase %s: %d multimodal and %d unimodal training recordings", phase.name,
                 len(plan) - len(keep_only), len(keep_only))
    train_ds = window_dataset(WindowSpec(mode="train", seed=phase.seed, keep_only=keep_only, **common), train_ids,
                              passes=_train_passes(phase, windows_per_pass), shuffle_seed=phase.seed)
    val_ds = window_dataset(WindowSpec(mode="eval", stride=phase.data.stride, **common), split.val)

    use_gpu = resolve_use_gpu(phase.scaling.use_gpu)
    resources = {"CPU": phase.scaling.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = phase.scaling.gpus_per_worker
    env = {} if use_gpu else {"DS_ACCELERATOR": "cpu"}
    for name in ("GLOO_SOCKET_IFNAME", "TORCH_EXTENSIONS_DIR", FAULT_ENV):
        if name in os.environ:
            env[name] = os.environ[name]
    storage = _storage(cfg)
    run_config = RunConfig(
        name=phase.name,
        storage_path=storage.path,
        storage_filesystem=None if storage.is_local else storage.pyarrow_filesystem(),
        failure_config=FailureConfig(max_failures=phase.scaling.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep,
                                           checkpoint_score_attribute=f"val_{phase.optim.monitor}",
                                           checkpoint_score_order=phase.optim.monitor_mode),
        worker_runtime_env={"env_vars": env},
        callbacks=list(callbacks) or None,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(phase, modalities, stats, use_gpu=use_gpu, init_checkpoint=init_checkpoint,
                                      phase_uri=storage.join(phase.name).uri,
                                      storage_options=storage.storage_options, run_name=cfg.storage.name,
                                      continue_from=continue_from, mlflow=mlflow_loop_config(phase, mlflow_parent)),
        scaling_config=ScalingConfig(num_workers=phase.scaling.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=placement_strategy or phase.scaling.placement_strategy),
        run_config=run_config,
        datasets={"train": train_ds, "val": val_ds},
    )


def fit_phase(cfg: ExperimentConfig, phase: PhaseConfig, *, init_checkpoint: Any = None,
              placement_strategy: str | None = None, mlflow_parent: str | None = None) -> PhaseResult:
    """Train one phase to completion (or early stop) and record its best checkpoint."""
    storage = _storage(cfg)
    done = storage.join(phase.name, PHASE_RESULT_FILE)
    if done.exists():
        doc = json.loads(done.read_text())
        log.info("phase %s already finished; skipping (delete %s to retrain)", phase.name, done.uri)
        return PhaseResult(doc["name"], doc["checkpoint_uri"], doc["metrics"])

    result = build_trainer(cfg, phase, init_checkpoint=init_checkpoint, placement_strategy=placement_strategy,
                           mlflow_parent=mlflow_parent).fit()
    remove_unregistered_checkpoints(storage.join(phase.name), result)
    best = result.get_best_checkpoint(metric=f"val_{phase.optim.monitor}", mode=phase.optim.monitor_mode) \
        if result.best_checkpoints else None
    metrics: dict[str, Any] = {}
    uri = None
    if best is not None:
        metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), {})
        uri = storage.with_path(best.path).uri if storage.is_local else f"{storage.protocol}://{best.path}"
    outcome = PhaseResult(phase.name, uri, {k: v for k, v in metrics.items() if _jsonable(v)})
    done.write_text(json.dumps(outcome.__dict__, indent=2, default=float))
    return outcome


def remove_unregistered_checkpoints(phase_folder: StorageLocation, result: Any) -> list[str]:
    """Delete the phase's checkpoint folders Ray Train never registered.

    A worker that dies after writing a checkpoint but before its report reaches the controller
    leaves a folder that ``num_to_keep`` never counts, so it would stay on disk for ever. Once the
    phase has finished, every ``checkpoint_*`` folder that is neither one of the result's kept
    checkpoints nor its latest one is such an orphan.

    Parameters
    ----------
    phase_folder : StorageLocation
        The phase's Ray Train run folder (``<run>/<phase>``).
    result : ray.train.Result
        What ``fit()`` returned.

    Returns
    -------
    list of str
        The folder names removed.
    """
    kept = {c.path.rstrip("/") for c, _ in (result.best_checkpoints or [])}
    if result.checkpoint is not None:
        kept.add(result.checkpoint.path.rstrip("/"))
    if not kept or not phase_folder.exists():
        return []  # nothing registered: keep everything rather than guess
    removed = []
    with phase_folder.errors():
        for path in phase_folder.fs.ls(phase_folder.path, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("checkpoint_") and path.rstrip("/") not in kept and phase_folder.fs.isdir(path):
                phase_folder.fs.rm(path, recursive=True)
                removed.append(name)
    if removed:
        log.info("phase folder %s: removed %d checkpoint(s) whose report never reached Ray Train: %s",
                 phase_folder.uri, len(removed), ", ".join(sorted(removed)))
    return removed


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


#: CPUs a training run leaves free for Ray Data's read-and-cut tasks (each asks for one CPU).
DATA_CPUS = 1.0


def check_cpus_for_data(cfg: ExperimentConfig, cluster_cpus: float | None = None,
                        n_nodes: int | None = None) -> None:
    """Refuse a phase whose workers would take every CPU Ray Data needs (it would hang, not fail).

    A worker group that holds all of a fixed cluster's CPUs starves the window-reading tasks, and
    the first batch never arrives. On a single-node cluster that is certain, so it is an error;
    with several nodes (or an autoscaler that may add some) it is only logged.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    cluster_cpus, n_nodes : float, int, optional
        The cluster's CPUs and alive nodes (default: asked from the connected Ray cluster).

    Raises
    ------
    ConfigError
        Naming the phase, the numbers, and a ``cpus_per_worker`` that would fit.
    """
    from somnray.core.errors import ConfigError

    if cluster_cpus is None or n_nodes is None:
        import ray

        cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
        n_nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    problems = []
    for i, phase in enumerate(cfg.phases):
        sc = phase.scaling
        held = sc.num_workers * sc.cpus_per_worker
        if held > cluster_cpus or cluster_cpus - held >= DATA_CPUS - 1e-9:
            continue  # fits with room for Ray Data, or cannot start yet (Ray waits / autoscales)
        fitting = math.floor((cluster_cpus - DATA_CPUS) / sc.num_workers * 100) / 100
        advice = (f"set scaling.cpus_per_worker to {fitting:g} or less" if fitting > 0
                  else "use fewer workers or a bigger cluster")
        problem = (f"phases.{i} ({phase.name}) scaling: {sc.num_workers} worker(s) x {sc.cpus_per_worker:g} CPU "
                   f"leave {cluster_cpus - held:g} of the cluster's {cluster_cpus:g} CPUs for Ray Data, which "
                   f"needs {DATA_CPUS:g} to read windows; the run would wait forever for its first batch "
                   f"({advice})")
        if n_nodes > 1:
            log.warning("%s: %s (not refused: a multi-node cluster may add resources)", cfg.run_uri, problem)
        else:
            problems.append(problem)
    if problems:
        raise ConfigError(cfg.run_uri, problems)


def init_sources(cfg: ExperimentConfig) -> dict[str, Any]:
    """Phase name → :class:`~somnray.train.finetune.SourceModel` of each phase that starts from another
    trained model, every one checked against its phase and dataset.

    Raises
    ------
    ConfigError
        A source that is missing, another architecture, or saw other modalities (see
        :func:`~somnray.train.finetune.check_source`).
    """
    from somnray.data.dataset import PreparedDataset

    from .finetune import check_source, is_source_uri

    out = {}
    for phase in cfg.phases:
        if is_source_uri(phase.init_from):
            data = resolve(phase.data.dataset)
            modalities = PreparedDataset.open(data.uri, data.storage_options).modalities
            out[phase.name] = check_source(phase, modalities, data.storage_options)
    return out


def run_experiment(cfg: ExperimentConfig, *, placement_strategy: str | None = None) -> list[PhaseResult]:
    """Run every phase in order; ``init_from: previous`` phases start from the previous best checkpoint,
    ``init_from: <URI>`` phases from another trained model (checked before any phase runs,
    :func:`somnray.train.finetune.check_source`; its weights reach the workers through Ray's object
    store and ``<run>/<phase>/init_source.json`` records which they were).

    The resolved config is written to ``<run>/config.yaml`` first; at the end, ``<run>/metrics.json``
    and the model bundle ``<run>/model/`` (from the last phase's best checkpoint). When a phase logs
    to MLflow, the experiment is one MLflow run too (the phases' runs its children, the bundle its
    artifact ``model/``). Call after ``ray.init``. ``placement_strategy`` overrides every phase's
    ``scaling.placement_strategy``.

    Raises
    ------
    ConfigError
        A configured metric sink (TensorBoard, MLflow) is not installed, or a phase's workers would
        leave Ray Data no CPU on a single-node cluster (both checked before any phase); an
        ``init_from`` source that is missing or does not fit its phase.
    """
    for phase in cfg.phases:
        check_sinks_available(phase.logging, f"{cfg.run_uri} (phase {phase.name})")
    sources = init_sources(cfg)
    check_cpus_for_data(cfg)
    storage = _storage(cfg)
    dump_experiment(cfg, storage.join("config.yaml").uri)
    results: list[PhaseResult] = []
    tracking = ExperimentTracking(cfg)
    try:
        for phase in cfg.phases:
            init = sources[phase.name].init_weights(storage.join(phase.name)) if phase.name in sources else None
            if phase.init_from == "previous":
                init = results[-1].checkpoint(storage.storage_options)
                if init is None:
                    raise RuntimeError(f"phase {phase.name!r} starts from the previous phase's best checkpoint, "
                                       f"but phase {results[-1].name!r} produced none (did it validate?)")
            results.append(fit_phase(cfg, phase, init_checkpoint=init, placement_strategy=placement_strategy,
                                     mlflow_parent=tracking.run_id))
    except BaseException:
        tracking.fail()
        raise
    write_run_metrics(storage.uri, results)
    bundle = None
    if results[-1].checkpoint_uri is not None:
        bundle = export_bundle(storage.uri, cfg=cfg)
    else:
        log.warning("phase %s produced no checkpoint; no model bundle exported", results[-1].name)
    tracking.finish(results, bundle, storage.storage_options)
    return results
