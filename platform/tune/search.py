"""The hyperparameter search: Ray Tune around the same trainer ``somnray train`` uses.

Ray Train V2 cannot hand a Trainer to ``Tuner``; each **trial** is a function that builds the
phase's ``TorchTrainer`` with :func:`somnray.train.driver.build_trainer` (the one training path)
and fits it, with a :class:`TrialReportCallback` forwarding every validation report to Tune.

Layout of a search folder ``<storage>/<name>`` (any storage URI; ``--storage`` and ``--name``)::

    search.json                  the searched experiment, the space and the settings (resume reads it)
    trial_<trial id>/            one somnray run folder per trial, plus Tune's own files:
        config.yaml                the trial's resolved experiment config
        <phase>/checkpoint_*/      Ray Train checkpoints (state/, model.pt, trainer_state.json)
        <phase>/phase_result.json  best checkpoint of a phase that ran to its end
        result.json, params.json   Tune's per-trial reports and sampled values
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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from somnray.data.errors import ConfigError
from somnray.data.storage import StorageLocation, resolve
from somnray.train.config import MONITOR_METRICS, ExperimentConfig, experiment_to_dict, validate_experiment

from .space import SearchSpace, apply_sample, space_from_mapping

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
BEST_DIR = "best"
PHASE_RESULT_FILE = "phase_result.json"
#: Progress attribute of every trial report: optimizer steps summed over the recipe's phases.
TIME_ATTR = "tune_step"
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
    seed: int = 0

    @property
    def resolved_mode(self) -> str:
        """``mode`` or the metric's own direction."""
        return self.mode or ("min" if self.metric == "val_loss" else "max")

    def problems(self, space: SearchSpace | None = None) -> list[str]:
        """Every problem with these settings (empty if none)."""
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
            out.append("scheduler 'pbt' is not available yet: PBT clones a trial from another's Tune "
                       "checkpoint, and trials report Ray Train checkpoints, which Tune does not see "
                       "(see docs/tuning.md); use asha or fifo")
        if space is not None and self.search_alg == "optuna" and space.has_grid:
            out.append("search_alg 'optuna' cannot run 'grid' entries; use choice, or the random search")
        return out


def plan_concurrency(cluster_cpus: float, cfg: ExperimentConfig, settings: SearchSettings) -> int:
    """Trials that fit at once: ``(cluster CPUs − data_cpus) / (trial_cpus + workers × cpus_per_worker)``.

    Capped by ``settings.max_concurrent`` when given; at least 1 (a trial that does not fit
    waits, and Ray reports the infeasible request).
    """
    per_trial = settings.trial_cpus + max(p.scaling.num_workers * p.scaling.cpus_per_worker for p in cfg.phases)
    fits = max(1, int(math.floor((cluster_cpus - settings.data_cpus) / per_trial + 1e-9)))
    return min(fits, settings.max_concurrent) if settings.max_concurrent else fits


def total_steps(cfg: ExperimentConfig) -> int:
    """The ``tune_step`` a trial reaches at its end (every phase's ``max_steps``)."""
    return sum(p.optim.max_steps for p in cfg.phases)


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
def trial_dirname(trial: Any) -> str:
    """Folder (and name) of a trial: ``trial_<trial id>`` (``trial_dirname_creator`` of the Tuner)."""
    return f"trial_{trial if isinstance(trial, str) else trial.trial_id}"


def _report_callback(phase: str, offset: int):
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    class TrialReportCallback(TuneReportCallback):
        """Forward rank 0's validation report to Tune, with the phase and ``tune_step`` added."""

        def __init__(self, phase: str, offset: int):
            super().__init__()
            self.phase, self.offset = phase, offset

        def after_report(self, run_context, metrics, checkpoint):  # noqa: D102 - Ray's hook
            out = dict(metrics[0])
            out["phase"] = self.phase
            out[TIME_ATTR] = self.offset + int(out.get("step", 0))
            if checkpoint:
                out[CHECKPOINT_PATH_KEY] = checkpoint.path
            self._training_actor_item_queue.put(out)

    return TrialReportCallback(phase, offset)


def _phase_outcome(run: StorageLocation, phase: Any, result: Any) -> dict[str, Any]:
    """``phase_result.json`` of a fitted phase (the driver's format), written and returned."""
    metric, mode = f"val_{phase.optim.monitor}", phase.optim.monitor_mode
    best = result.get_best_checkpoint(metric=metric, mode=mode) if result.best_checkpoints else None
    doc: dict[str, Any] = {"name": phase.name, "checkpoint_uri": None, "metrics": {}}
    if best is not None:
        metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), {})
        doc["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
        doc["checkpoint_uri"] = run.with_path(best.path).uri if run.is_local else f"{run.protocol}://{best.path}"
    run.join(phase.name, PHASE_RESULT_FILE).write_text(json.dumps(doc, indent=2, default=float))
    return doc


def run_trial(config: dict[str, Any], search: Mapping[str, Any]) -> None:
    """Tune's trial function: one experiment with the sampled values, every phase in order.

    Parameters
    ----------
    config : dict
        Field path → sampled value (Tune's trial config).
    search : mapping
        ``experiment`` (resolved experiment mapping, monitor set), ``search_uri``.
    """
    import ray.tune

    from somnray.train.config import dump_experiment
    from somnray.train.driver import PhaseResult, build_trainer
    from somnray.train.export import write_run_metrics

    name = trial_dirname(ray.tune.get_context().get_trial_id())
    cfg = apply_sample(search["experiment"], config, storage={"uri": search["search_uri"], "name": name},
                       source=f"trial {name}")
    run = resolve(cfg.run_uri)
    if run.is_local:
        run.makedirs()
    dump_experiment(cfg, run.join("config.yaml").uri)
    results: list[PhaseResult] = []
    offset = 0
    for phase in cfg.phases:
        done = run.join(phase.name, PHASE_RESULT_FILE)
        if done.exists():  # a resumed trial: this phase finished before the interruption
            results.append(PhaseResult(**json.loads(done.read_text())))
        else:
            init = None
            if phase.init_from == "previous":
                init = results[-1].checkpoint(run.storage_options)
                if init is None:
                    raise RuntimeError(f"trial {name}: phase {phase.name!r} starts from phase "
                                       f"{results[-1].name!r}, which produced no checkpoint")
            trainer = build_trainer(cfg, phase, init_checkpoint=init,
                                    callbacks=[_report_callback(phase.name, offset)])
            results.append(PhaseResult(**_phase_outcome(run, phase, trainer.fit())))
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


def _scheduler(cfg: ExperimentConfig, settings: SearchSettings):
    if settings.scheduler == "fifo":
        return None
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
    return BasicVariantGenerator(max_concurrent=concurrency, random_state=settings.seed)


def _trainable(search_doc: Mapping[str, Any], settings: SearchSettings):
    from ray import tune

    payload = {"experiment": search_doc["experiment"], "search_uri": search_doc["search_uri"]}
    return tune.with_resources(tune.with_parameters(run_trial, search=payload), {"cpu": settings.trial_cpus})


def _tune_storage(search: StorageLocation) -> dict[str, Any]:
    parent = search.parent
    if search.is_local:
        parent.makedirs()
        return {"storage_path": parent.path, "name": search.name}
    return {"storage_path": parent.path, "storage_filesystem": search.pyarrow_filesystem(), "name": search.name}


def search_uri_of(cfg: ExperimentConfig, storage: str | None, name: str | None) -> str:
    """``<storage>/<name>``; defaults: the experiment's ``storage.uri`` and ``<storage.name>-tune``."""
    from somnray.data.storage import join

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

    problems = settings.problems(space)
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
            scheduler=_scheduler(cfg, settings), search_alg=_search_alg(settings, concurrency),
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
    from .report import collect_records, export_best, write_report

    search, doc, cfg, space, settings = read_search(search_uri)
    records = collect_records(search, grid, cfg, settings)
    files = write_report(search, records, settings.metric, settings.resolved_mode, space.paths,
                         [p.path for p in space.params if p.distribution == "loguniform"])
    best = export_best(search, records, doc)
    return SearchOutcome(search.uri, records, best, files)


__all__ = ["SEARCH_FILE", "SearchOutcome", "SearchSettings", "finish_search", "plan_concurrency", "read_search",
           "resume_search", "run_search", "run_trial", "search_uri_of", "total_steps", "trial_dirname"]
