"""The hyperparameter search: Ray Tune around the same trainer ``somnray train`` uses.

Ray Train V2 cannot hand a Trainer to ``Tuner``; each **trial** is a function that builds the
phase's ``TorchTrainer`` with :func:`somnray.train.driver.build_trainer` (the one training path)
and fits it, with a :class:`TrialReportCallback` forwarding every validation report to Tune.

Layout of a search folder ``<storage>/<name>`` (any storage URI; ``--storage`` and ``--name``)::

    search.json                  the searched experiment, the space and the settings (resume reads it)
    trial_<trial id>/            one somnray run folder per trial, plus Tune's own files:
        config.yaml                the trial's resolved experiment config (PBT: its current one)
        <phase>/checkpoint_*/      Ray Train checkpoints (state/, model.pt, trainer_state.json)
        <phase>/phase_result.json  best checkpoint of a phase that ran to its end
        reports.jsonl              every report, with the config in force (the leaderboard reads it)
        result.json, params.json   Tune's per-trial reports and sampled values
        PBT only: checkpoint_*/pointer.json   Tune checkpoints: pointers to Ray Train checkpoints
                  lineage.json, exploit-<k>/  the exploits of this trial and the run folder of each
    experiment_state-*.json, tuner.pkl, ...   Tune's experiment state (``Tuner.restore`` reads it)
    leaderboard.md, leaderboard.csv, params.png   written by :mod:`somnray.tune.report`
    best/                        the winning trial as a run folder ``somnray evaluate`` accepts:
        config.yaml, metrics.json, <phase>/phase_result.json, model/{model.pt, model.json}

Decisions:

* The search metric is a validation metric the training loop reports (``val_macro_f1``,
  ``val_kappa``, ``val_accuracy``, ``val_loss``); every trial's ``optim.monitor`` / ``optim.mode``
  are set to it, so early stopping, the checkpoints Ray Train keeps and the search agree on
  what "best" means.
* Progress is ``tune_step``: the optimizer step summed over the recipe's phases (a phase's
  ``step`` restarts at 0). ASHA's rungs are in these steps; its grace period defaults to the
  first phase's ``validate_every`` (the first report).
* Trials are packed by resources: the trial function itself holds ``trial_cpus`` (0.01), its
  Ray Train workers ``num_workers × scaling.cpus_per_worker``, and ``data_cpus`` stay free for
  the Ray Data tasks feeding them. ``max_concurrent_trials`` is what fits in the cluster.
* Resume (:func:`resume_search`) is ``Tuner.restore`` on the folder: finished trials are kept,
  unfinished ones rerun their trial function, whose Ray Train runs pick up from their latest
  checkpoint (same ``RunConfig(name, storage_path)``) and whose finished phases are skipped.
* Reports reach Tune through a relay: the Ray Train callback (on the Train controller) puts each
  report on a queue, and the trial function, which fits the trainer on a helper thread, calls
  ``ray.tune.report`` for it. With PBT each report carries a Tune checkpoint: a folder holding only
  ``pointer.json`` (trial, run folder, phase, the Ray Train checkpoint URI, step, ``tune_step``).
* PBT exploit: Tune restarts the weak trial with the donor's pointer and a perturbed config. The
  trial function sees a pointer of another trial, opens a new generation ``exploit-<k>/`` in its own
  run folder (recorded in ``lineage.json``), copies the donor's finished phases' results, and fits
  the pointed phase with ``continue_from=<donor checkpoint>``: the worker loop loads the donor's
  full state and applies the new config's hyperparameters (:mod:`somnray.train.loop`). A pointer of
  its own (PBT pausing the trial, or ``Tuner.restore``) reruns its current generation, whose Ray
  Train runs resume by themselves. PBT trials keep every Ray Train checkpoint (a donor's pointer may
  name any of them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.train.config import MONITOR_METRICS, ExperimentConfig, experiment_to_dict, validate_experiment

from .layout import (
    EXPLOIT_PREFIX,
    GENERATION,
    LINEAGE_FILE,
    PHASE_RESULT_FILE,
    POINTER_FILE,
    REPORTS_FILE,
    SEARCH_FILE,
    TIME_ATTR,
    ReportLog,
    active_folder,
    read_lineage,
    read_reports,
    total_steps,
    trial_dirname,
)
from .report import collect_records, export_best, write_report
from .space import (
    SearchSpace,
    apply_sample,
    clip_to_bounds,
    pbt_bounds,
    pbt_fixed_reason,
    pbt_mutations,
    space_from_mapping,
)

log = logging.getLogger(__name__)

METRICS = tuple(f"val_{m}" for m in MONITOR_METRICS)



# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (the CLI's options).

    Parameters
    ----------
    metric : str
        Validation metric to optimise (``val_macro_f1``, ``val_kappa``, ``val_accuracy``, ``val_loss``).
    mode : {"max", "min"}, optional
        Default: ``min`` for ``val_loss``, else ``max``.
    scheduler : {"asha", "fifo", "pbt"}
        ASHA early stopping (default), every trial to its end, or population-based training.
    num_samples : int
        Trials drawn from the space (with grid entries: repetitions of the grid).
    search_alg : {"random", "optuna"}
        Random / grid variants (``BasicVariantGenerator``) or Optuna's TPE (needs ``optuna``).
    max_concurrent : int, optional
        Trials at a time; default what the cluster's CPUs fit (see :func:`plan_concurrency`).
    trial_cpus : float
        CPUs the trial function holds (it only waits on its Ray Train run; 0 is rejected by Tune).
    data_cpus : float
        CPUs left free for the Ray Data tasks reading windows.
    grace_steps : int, optional
        ASHA grace period in ``tune_step``; default the first phase's ``validate_every``.
    reduction_factor : float
        ASHA's halving rate.
    perturbation_steps : int, optional
        PBT perturbation interval in ``tune_step``; default 2 × the first ``validate_every``.
        Every phase must validate (report) at least once per interval.
    quantile_fraction : float
        PBT: the bottom fraction of trials that clone one of the top fraction (0 < q ≤ 0.5).
    resample_probability : float
        PBT: probability that a perturbed entry is drawn anew from its distribution instead of
        scaled by 0.8/1.2 (numbers) or moved to a neighbouring value (choices).
    seed : int
        Seed of the random search.
    """

    metric: str = "val_macro_f1"
    mode: Literal["max", "min"] | None = None
    scheduler: Literal["asha", "fifo", "pbt"] = "asha"
    num_samples: int = 8
    search_alg: Literal["random", "optuna"] = "random"
    max_concurrent: int | None = None
    trial_cpus: float = 0.01
    data_cpus: float = 1.0
    grace_steps: int | None = None
    reduction_factor: float = 2.0
    perturbation_steps: int | None = None
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    seed: int = 0

    @property
    def resolved_mode(self) -> str:
        """``mode`` or the metric's own direction."""
        return self.mode or ("min" if self.metric == "val_loss" else "max")

    def perturbation_interval(self, cfg: ExperimentConfig) -> int:
        """PBT's interval in ``tune_step``: ``perturbation_steps`` or 2 × the first ``validate_every``."""
        return self.perturbation_steps or 2 * cfg.phases[0].optim.validate_every

    def problems(self, space: SearchSpace | None = None, cfg: ExperimentConfig | None = None) -> list[str]:
        """Every problem with these settings (empty if none); ``space`` and ``cfg`` enable more checks."""
        out = []
        if self.metric not in METRICS:
            out.append(f"metric: {self.metric!r} is not a validation metric the training loop reports; "
                       f"use one of {list(METRICS)}")
        if self.mode not in (None, "max", "min"):
            out.append(f"mode: expected 'max' or 'min', got {self.mode!r}")
        if self.scheduler not in ("asha", "fifo", "pbt"):
            out.append(f"scheduler: expected asha, fifo or pbt, got {self.scheduler!r}")
        if self.search_alg not in ("random", "optuna"):
            out.append(f"search_alg: expected random or optuna, got {self.search_alg!r}")
        if self.num_samples < 1:
            out.append(f"samples: must be >= 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            out.append(f"max_concurrent: must be >= 1, got {self.max_concurrent}")
        if not self.trial_cpus > 0:
            out.append(f"trial_cpus: must be > 0 (Tune rejects 0), got {self.trial_cpus}")
        if self.data_cpus < 0:
            out.append(f"data_cpus: must be >= 0, got {self.data_cpus}")
        if self.reduction_factor <= 1:
            out.append(f"reduction_factor: must be > 1, got {self.reduction_factor}")
        if self.scheduler == "pbt":
            out += self._pbt_problems(space, cfg)
        if space is not None and self.search_alg == "optuna" and space.has_grid:
            out.append("search_alg 'optuna' cannot run 'grid' entries; use choice, or the random search")
        return out

    def _pbt_problems(self, space: SearchSpace | None, cfg: ExperimentConfig | None) -> list[str]:
        out = []
        if self.num_samples < 2:
            out.append(f"scheduler 'pbt' needs a population: samples must be >= 2, got {self.num_samples}")
        if self.search_alg != "random":
            out.append(f"scheduler 'pbt' cannot run with search_alg {self.search_alg!r}: PBT rewrites a trial's "
                       "config when it exploits another, which the searcher's model would never see; "
                       "use the random search")
        if not 0 < self.quantile_fraction <= 0.5:
            out.append(f"quantile_fraction: must lie in (0, 0.5], got {self.quantile_fraction}")
        if not 0 <= self.resample_probability <= 1:
            out.append(f"resample_probability: must lie in [0, 1], got {self.resample_probability}")
        if self.perturbation_steps is not None and self.perturbation_steps < 1:
            out.append(f"perturbation_steps: must be >= 1, got {self.perturbation_steps}")
        if space is not None:
            grid = [p.path for p in space.params if p.distribution == "grid"]
            if grid:
                out.append(f"scheduler 'pbt' cannot run 'grid' entries ({', '.join(grid)}): an exploited trial "
                           "takes the donor's config, so a grid value would not stay in its trial; use choice")
            if not pbt_mutations(space):
                why = "; ".join(f"{p.path}: {pbt_fixed_reason(p)}" for p in space.params)
                out.append(f"scheduler 'pbt' has nothing to perturb in this space ({why})")
        if cfg is not None and (self.perturbation_steps is None or self.perturbation_steps >= 1):
            interval = self.perturbation_interval(cfg)
            slow = [f"{p.name} validates every {p.optim.validate_every}" for p in cfg.phases
                    if p.optim.validate_every > interval]
            if slow:
                out.append(f"perturbation_steps: PBT needs the metric at least once per interval ({interval} "
                           f"steps), but phase {', phase '.join(slow)}; lower optim.validate_every or raise "
                           f"--perturbation-steps")
            if interval >= total_steps(cfg):
                out.append(f"perturbation_steps: the interval ({interval}) must be below the recipe's "
                           f"{total_steps(cfg)} steps, or PBT never perturbs")
        return out


def plan_concurrency(cluster_cpus: float, cfg: ExperimentConfig, settings: SearchSettings) -> int:
    """Trials that fit at once: ``(cluster CPUs − data_cpus) / (trial_cpus + workers × cpus_per_worker)``.

    Capped by ``settings.max_concurrent`` when given; at least 1 (a trial that does not fit
    waits, and Ray reports the infeasible request).
    """
    per_trial = settings.trial_cpus + max(p.scaling.num_workers * p.scaling.cpus_per_worker for p in cfg.phases)
    fits = max(1, int(math.floor((cluster_cpus - settings.data_cpus) / per_trial + 1e-9)))
    return min(fits, settings.max_concurrent) if settings.max_concurrent else fits


def monitored(cfg: ExperimentConfig, settings: SearchSettings) -> ExperimentConfig:
    """``cfg`` with every phase's ``optim.monitor`` / ``optim.mode`` set to the search metric."""
    raw = experiment_to_dict(cfg)
    for phase in raw["phases"]:
        phase["optim"]["monitor"] = settings.metric.removeprefix("val_")
        phase["optim"]["mode"] = settings.resolved_mode
    return validate_experiment(raw, "<search>")


# ------------------------------------------------------------------------------------------------
# the trial
# ------------------------------------------------------------------------------------------------
def _report_callback(queue: Any, phase: str, offset: int):
    """A Ray Train callback putting rank 0's validation reports on ``queue`` (it runs on the Train controller)."""
    from ray.train.v2.api.callback import UserCallback
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    class TrialReportCallback(UserCallback):
        """Forward rank 0's validation report to the trial function, with the phase and ``tune_step``."""

        def __init__(self, queue: Any, phase: str, offset: int):
            self.queue, self.phase, self.offset = queue, phase, offset

        def after_report(self, run_context, metrics, checkpoint):  # noqa: D102 - Ray's hook
            out = dict(metrics[0])
            out["phase"] = self.phase
            out[TIME_ATTR] = self.offset + int(out.get("step", 0))
            if checkpoint:
                out[CHECKPOINT_PATH_KEY] = checkpoint.path
            # A queue of one: training waits while the trial function has not taken the previous
            # report, as with Ray's own TuneReportCallback.
            self.queue.put(out)

    return TrialReportCallback(queue, phase, offset)


def _fit_relaying(trainer: Any, queue: Any, relay: Callable[[dict[str, Any]], None]) -> Any:
    """``trainer.fit()`` on a helper thread while this thread hands each queued report to ``relay``.

    The Train controller can pass Tune plain metrics only; a report with a Tune checkpoint has to
    be made by the trial function itself, which ``fit`` would otherwise block.
    """
    from ray.util.queue import Empty

    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the trial function's thread
            box["error"] = exc

    thread = threading.Thread(target=fit, name="somnray-trial-fit", daemon=True)
    thread.start()
    while True:
        try:
            item = queue.get(timeout=1.0)
        except Empty:
            # The controller's last put returns before fit() does: once it is over, drain and stop.
            if thread.is_alive() or not queue.empty():
                continue
            break
        relay(item)
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _location_uri(anchor: StorageLocation, path: str) -> str:
    """URI of a filesystem ``path`` (as Ray Train returns it) on ``anchor``'s store."""
    return anchor.with_path(path).uri if anchor.is_local else f"{anchor.protocol}://{path}"


def _phase_outcome(run: StorageLocation, phase: Any, result: Any) -> dict[str, Any]:
    """``phase_result.json`` of a fitted phase (the driver's format), written and returned."""
    metric, mode = f"val_{phase.optim.monitor}", phase.optim.monitor_mode
    best = result.get_best_checkpoint(metric=metric, mode=mode) if result.best_checkpoints else None
    doc: dict[str, Any] = {"name": phase.name, "checkpoint_uri": None, "metrics": {}}
    if best is not None:
        metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), {})
        doc["metrics"] = _scalars(metrics)
        doc["checkpoint_uri"] = _location_uri(run, best.path)
    run.join(phase.name, PHASE_RESULT_FILE).write_text(json.dumps(doc, indent=2, default=float))
    return doc


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


# -- population-based training: pointers and generations ------------------------------------------
@dataclass(frozen=True)
class Generation:
    """Where a trial trains now.

    Attributes
    ----------
    number : int
        0 for the trial's own start, k after its k-th exploit.
    folder : StorageLocation
        The run folder of the generation: the trial's own, or ``<trial>/exploit-<k>``.
    continue_phase : int or None
        Index of the phase continued from the donor's checkpoint (exploits only).
    continue_from : str or None
        URI of that Ray Train checkpoint.
    """

    number: int
    folder: StorageLocation
    continue_phase: int | None = None
    continue_from: str | None = None


def read_pointer(checkpoint: Any) -> dict[str, Any] | None:
    """The ``pointer.json`` of a Tune checkpoint (None without a checkpoint or pointer)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / POINTER_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def _generation(run: StorageLocation, trial_id: str, pointer: Mapping[str, Any] | None,
                config: Mapping[str, Any], cfg: ExperimentConfig) -> Generation:
    """The generation a (re)started trial trains in, opening a new one when PBT exploited it."""
    if pointer is None:
        return Generation(0, run)
    lineage = read_lineage(run)
    if pointer["trial_id"] == trial_id:
        # Its own report: PBT paused the trial, or the search is resumed; its Ray Train runs resume.
        number = int(pointer["generation"])
        entry = next((e for e in lineage if e["generation"] == number), None)
        folder = resolve(pointer["folder"], run.storage_options)
        if entry is None:
            return Generation(number, folder)
        return Generation(number, folder, int(entry["phase_index"]), entry["checkpoint_uri"])
    # Another trial's report: PBT exploited this trial. A new folder each time, so no Ray Train run
    # of an earlier generation (which would auto-resume) is in the way.
    number = (int(lineage[-1]["generation"]) if lineage else 0) + 1
    folder = run.join(f"{EXPLOIT_PREFIX}{number}")
    donor = resolve(pointer["folder"], run.storage_options)
    index = int(pointer["phase_index"])
    for phase in cfg.phases[:index]:  # the donor's finished phases are this lineage's too
        src = donor.join(phase.name, PHASE_RESULT_FILE)
        if not src.exists():
            raise RuntimeError(f"trial {trial_id}: exploiting trial {pointer['trial_id']}, whose finished phase "
                               f"{phase.name!r} has no {src.uri}")
        folder.join(phase.name, PHASE_RESULT_FILE).write_text(src.read_text())
    entry = {"generation": number, "folder": folder.uri, "donor_trial": pointer["trial_id"],
             "donor_folder": pointer["folder"], "phase": pointer["phase"], "phase_index": index,
             "checkpoint_uri": pointer["checkpoint_uri"], "step": int(pointer["step"]),
             TIME_ATTR: int(pointer[TIME_ATTR]), "config": dict(config), "donor_config": pointer.get("config"),
             "time": time.time()}
    run.join(LINEAGE_FILE).write_text(json.dumps({"exploits": lineage + [entry]}, indent=2, default=str))
    log.info("trial %s: exploit %d continues trial %s at %s %s (step %d) with %s", trial_id, number,
             pointer["trial_id"], pointer["phase"], pointer["checkpoint_uri"], entry["step"], dict(config))
    return Generation(number, folder, index, pointer["checkpoint_uri"])


def _donor_state(uri: str, phase: Any, storage_options: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """The donor's checkpoint, and its phase result if the phase already ended there (else None)."""
    from ray.train import Checkpoint

    from somnray.train.loop import TRAINER_STATE_FILE

    loc = resolve(uri, storage_options)
    state = json.loads(loc.join(TRAINER_STATE_FILE).read_text())
    loop = state.get("loop", {})
    checkpoint = Checkpoint(loc.path, filesystem=loc.pyarrow_filesystem())
    if loop.get("stopped_early") or int(loop.get("step", 0)) >= phase.optim.max_steps:
        return checkpoint, {"name": phase.name, "checkpoint_uri": uri, "metrics": _scalars(state.get("metrics", {}))}
    return checkpoint, None


def _relay(item: dict[str, Any], *, pbt: bool, trial_id: str, gen: Generation, phase_index: int,
           config: Mapping[str, Any], reports: ReportLog) -> None:
    """Report one Ray Train report to Tune; with PBT, with a pointer checkpoint to its Ray Train checkpoint."""
    import ray.tune
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    metrics = {**item, GENERATION: gen.number}
    reports.append({**metrics, "config": dict(config)})
    path = item.get(CHECKPOINT_PATH_KEY)
    if not (pbt and path):
        ray.tune.report(metrics)
        return
    pointer = {"trial_id": trial_id, "generation": gen.number, "folder": gen.folder.uri, "phase": item["phase"],
               "phase_index": phase_index, "checkpoint_uri": _location_uri(gen.folder, path),
               "step": int(item.get("step", 0)), TIME_ATTR: int(item[TIME_ATTR]), "config": dict(config)}
    with tempfile.TemporaryDirectory(prefix="somnray-pointer-") as tmp:
        Path(tmp, POINTER_FILE).write_text(json.dumps(pointer, indent=2, default=str))
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))  # Tune copies it


def run_trial(config: dict[str, Any], search: Mapping[str, Any]) -> None:
    """Tune's trial function: one experiment with the sampled values, every phase in order.

    Parameters
    ----------
    config : dict
        Field path → sampled value (Tune's trial config; PBT's perturbed one after an exploit).
    search : mapping
        ``experiment`` (resolved experiment mapping, monitor set), ``search_uri``, ``pbt`` (report
        pointer checkpoints, keep every Ray Train checkpoint).
    """
    import ray.tune
    from ray.util.queue import Queue

    from somnray.train.config import dump_experiment
    from somnray.train.driver import PhaseResult, build_trainer, init_sources
    from somnray.train.export import write_run_metrics

    trial_id = ray.tune.get_context().get_trial_id()
    name = trial_dirname(trial_id)
    cfg = apply_sample(search["experiment"], config, storage={"uri": search["search_uri"], "name": name},
                       source=f"trial {name}")
    run = resolve(cfg.run_uri)
    if run.is_local:
        run.makedirs()
    dump_experiment(cfg, run.join("config.yaml").uri)  # the trial's current config (PBT rewrites it)
    pbt = bool(search.get("pbt"))
    gen = _generation(run, trial_id, read_pointer(ray.tune.get_checkpoint()), config, cfg)
    if gen.number:
        # The exploit's Ray Train runs are stored in its own folder: the same experiment, stored there.
        cfg = apply_sample(search["experiment"], config, storage={"uri": run.uri, "name": gen.folder.name},
                           source=f"trial {name}")
        dump_experiment(cfg, gen.folder.join("config.yaml").uri)
    queue = Queue(1, actor_options={"num_cpus": 0})
    reports = ReportLog(run.join(REPORTS_FILE))
    results: list[PhaseResult] = []
    offset = 0
    sources = init_sources(cfg)
    for index, phase in enumerate(cfg.phases):
        done = gen.folder.join(phase.name, PHASE_RESULT_FILE)
        continue_from, ended = None, None
        if not done.exists() and index == gen.continue_phase:
            continue_from, ended = _donor_state(gen.continue_from, phase, run.storage_options)
            if ended is not None:  # the donor's checkpoint is the end of this phase
                done.write_text(json.dumps(ended, indent=2, default=float))
        if done.exists():  # finished before an interruption, or by the donor
            results.append(PhaseResult(**json.loads(done.read_text())))
        else:
            init = (sources[phase.name].init_weights(gen.folder.join(phase.name))
                    if phase.name in sources and continue_from is None else None)
            if phase.init_from == "previous" and continue_from is None:
                init = results[-1].checkpoint(run.storage_options)
                if init is None:
                    raise RuntimeError(f"trial {name}: phase {phase.name!r} starts from phase "
                                       f"{results[-1].name!r}, which produced no checkpoint")
            trainer = build_trainer(cfg, phase, init_checkpoint=init, continue_from=continue_from,
                                    callbacks=[_report_callback(queue, phase.name, offset)],
                                    checkpoints_to_keep=None if pbt else 2)
            relay = partial(_relay, pbt=pbt, trial_id=trial_id, gen=gen, phase_index=index, config=config,
                            reports=reports)
            results.append(PhaseResult(**_phase_outcome(gen.folder, phase, _fit_relaying(trainer, queue, relay))))
        offset += phase.optim.max_steps
    write_run_metrics(run.uri, results)


# ------------------------------------------------------------------------------------------------
# the Tuner
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchOutcome:
    """What a finished search produced.

    Attributes
    ----------
    search_uri : str
        The search folder.
    leaderboard : list of TrialRecord
        Every trial, best first.
    best_uri : str or None
        ``<search>/best``: a run folder with the winning config and model bundle (None if no
        trial produced a checkpoint).
    report_files : dict
        ``markdown``, ``csv`` and ``plot`` URIs.
    """

    search_uri: str
    leaderboard: list
    best_uri: str | None
    report_files: dict[str, str]


def _scheduler(cfg: ExperimentConfig, settings: SearchSettings, space: SearchSpace):
    if settings.scheduler == "fifo":
        return None
    if settings.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        # Tune scales a number by 0.8 / 1.2 without looking at its bounds: clip to the space's.
        return PopulationBasedTraining(
            time_attr=TIME_ATTR, perturbation_interval=settings.perturbation_interval(cfg),
            hyperparam_mutations=pbt_mutations(space), quantile_fraction=settings.quantile_fraction,
            resample_probability=settings.resample_probability,
            custom_explore_fn=partial(clip_to_bounds, bounds=pbt_bounds(space)), log_config=True)
    from ray.tune.schedulers import ASHAScheduler

    first = cfg.phases[0].optim.validate_every
    max_t = total_steps(cfg)
    grace = min(settings.grace_steps or first, max_t)
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=max_t, grace_period=grace,
                         reduction_factor=settings.reduction_factor)


def _search_alg(settings: SearchSettings, concurrency: int):
    if settings.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:  # ray's module imports optuna lazily or eagerly depending on version
            raise ConfigError("--search optuna", [f"Optuna is not installed ({exc}); pip install optuna, "
                                                  f"or use the random search"]) from None
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("--search optuna", ["Optuna is not installed; pip install optuna, "
                                                  "or use the random search"]) from None
        return OptunaSearch(seed=settings.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune applies max_concurrent_trials to Searchers only; the variant generator takes its own limit.
    # It counts unfinished trials (paused ones too), so under PBT the population is the trials
    # running at once; further samples start as trials finish.
    return BasicVariantGenerator(max_concurrent=concurrency, random_state=settings.seed)


def _trainable(search_doc: Mapping[str, Any], settings: SearchSettings):
    from ray import tune

    payload = {"experiment": search_doc["experiment"], "search_uri": search_doc["search_uri"],
               "pbt": settings.scheduler == "pbt"}
    return tune.with_resources(tune.with_parameters(run_trial, search=payload), {"cpu": settings.trial_cpus})


def _tune_storage(search: StorageLocation) -> dict[str, Any]:
    parent = search.parent
    if search.is_local:
        parent.makedirs()
        return {"storage_path": parent.path, "name": search.name}
    return {"storage_path": parent.path, "storage_filesystem": search.pyarrow_filesystem(), "name": search.name}


def search_uri_of(cfg: ExperimentConfig, storage: str | None, name: str | None) -> str:
    """``<storage>/<name>``; defaults: the experiment's ``storage.uri`` and ``<storage.name>-tune``."""
    from somnray.core.storage import join

    return join(storage or cfg.storage.uri, name or f"{cfg.storage.name}-tune")


def run_search(cfg: ExperimentConfig, space: SearchSpace, settings: SearchSettings, *,
               storage: str | None = None, name: str | None = None) -> SearchOutcome:
    """Run a new search (``ray.init`` first); writes the leaderboard and ``<search>/best``.

    Raises
    ------
    ConfigError
        Bad settings, or the search folder already holds a search (resume it instead).
    """
    import ray
    from ray import tune

    problems = settings.problems(space, cfg)
    if problems:
        raise ConfigError("somnray tune", problems)
    search = resolve(search_uri_of(cfg, storage, name))
    if search.join(SEARCH_FILE).exists():
        raise ConfigError(search.uri, ["a search already exists here: resume it with "
                                       f"`somnray tune --resume {search.uri}`, or choose another --name"])
    cfg = monitored(cfg, settings)
    doc = {"experiment": experiment_to_dict(cfg), "space": space.to_dict(),
           "settings": dataclasses.asdict(settings), "search_uri": search.uri, "created": time.time()}
    if search.is_local:
        search.makedirs()
    search.join(SEARCH_FILE).write_text(json.dumps(doc, indent=2, default=str))

    concurrency = plan_concurrency(ray.cluster_resources().get("CPU", 1.0), cfg, settings)
    log.info("search %s: %d samples, %s, %d trial(s) at a time", search.uri, settings.num_samples,
             settings.scheduler, concurrency)
    tuner = tune.Tuner(
        _trainable(doc, settings),
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=settings.metric, mode=settings.resolved_mode, num_samples=settings.num_samples,
            scheduler=_scheduler(cfg, settings, space), search_alg=_search_alg(settings, concurrency),
            max_concurrent_trials=concurrency, trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(failure_config=tune.FailureConfig(max_failures=0), verbose=1,
                                  **_tune_storage(search)),
    )
    grid = tuner.fit()
    return finish_search(search.uri, grid)


def read_search(search_uri: str) -> tuple[StorageLocation, dict[str, Any], ExperimentConfig, SearchSpace, SearchSettings]:
    """The search folder's ``search.json``: location, raw document, experiment, space, settings."""
    search = resolve(search_uri)
    file = search.join(SEARCH_FILE)
    if not file.exists():
        raise ConfigError(search.uri, [f"no {SEARCH_FILE}: not a somnray search folder "
                                       f"(give the <storage>/<name> that `somnray tune` printed)"])
    doc = json.loads(file.read_text())
    cfg = validate_experiment(doc["experiment"], file.uri)
    space = space_from_mapping(doc["space"], cfg, file.uri)
    fields = {f.name for f in dataclasses.fields(SearchSettings)}
    settings = SearchSettings(**{k: v for k, v in doc["settings"].items() if k in fields})
    return search, doc, cfg, space, settings


def resume_search(search_uri: str) -> SearchOutcome:
    """Complete an interrupted search with ``Tuner.restore`` (``ray.init`` first).

    Finished trials are kept; unfinished and errored ones run again and their Ray Train runs
    resume from their latest checkpoints.
    """
    from ray import tune

    search, doc, _, _, settings = read_search(search_uri)
    storage = _tune_storage(search)
    path = search.path if search.is_local else f"{search.protocol}://{search.path}"
    if not tune.Tuner.can_restore(path, storage_filesystem=storage.get("storage_filesystem")):
        raise ConfigError(search.uri, ["Tune saved no experiment state here yet (the search was interrupted "
                                       "before its first checkpoint); start it again"])
    tuner = tune.Tuner.restore(path, trainable=_trainable(doc, settings), resume_unfinished=True,
                               resume_errored=True, storage_filesystem=storage.get("storage_filesystem"))
    grid = tuner.fit()
    return finish_search(search.uri, grid)


def finish_search(search_uri: str, grid: Any) -> SearchOutcome:
    """Leaderboard, plot and ``<search>/best`` from a ``ResultGrid``."""

    search, doc, cfg, space, settings = read_search(search_uri)
    records = collect_records(search, grid, cfg, settings)
    files = write_report(search, records, settings.metric, settings.resolved_mode, space.paths,
                         [p.path for p in space.params if p.distribution == "loguniform"])
    best = export_best(search, records, doc)
    return SearchOutcome(search.uri, records, best, files)


__all__ = ["GENERATION", "LINEAGE_FILE", "POINTER_FILE", "REPORTS_FILE", "SEARCH_FILE", "Generation", "ReportLog",
           "SearchOutcome", "SearchSettings", "active_folder", "finish_search", "plan_concurrency", "read_lineage",
           "read_pointer", "read_reports", "read_search",
           "resume_search", "run_search", "run_trial", "search_uri_of", "total_steps", "trial_dirname"]
