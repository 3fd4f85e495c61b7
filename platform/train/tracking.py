"""Metric sinks of the worker loop: progress lines, TensorBoard event files and MLflow.

Only rank 0 writes. Ray Train's own reports (with the checkpoints) stay the source of truth; these
sinks are for people watching a run:

* a progress line per validation on stdout (Ray forwards worker output to the driver console);
* TensorBoard event files under ``<run>/<phase>/tensorboard/`` (``logging.tensorboard``): training
  losses by term every step, lr, missing rate and every scalar validation metric. Event files are
  append-only local files, so for a remote run they are written to a local folder and uploaded at
  each validation (and at the end);
* MLflow (``logging.mlflow``, or ``MLFLOW_TRACKING_URI`` in the driver's environment): the same
  scalars and the phase's config as parameters, one MLflow run per phase. MLflow is an optional
  dependency (``somnray[mlflow]``); :func:`check_sinks_available` fails before launch when it is
  configured but not installed, rather than silently logging nothing.

``somnray train`` also keeps one MLflow run for the whole experiment (:class:`ExperimentTracking`,
on the driver): the phases' runs are its children, and the exported bundle (every file of
``<run>/model/``) and ``metrics.json`` are its artifacts, so ``runs:/<run id>/model`` can be
registered (``somnray models register``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping

from somnray.core.errors import ConfigError

from .config import ExperimentConfig, LoggingConfig, MlflowConfig, PhaseConfig

log = logging.getLogger(__name__)

#: Folder of the TensorBoard event files inside ``<run>/<phase>/``.
TENSORBOARD_DIR = "tensorboard"


def check_sinks_available(logging_cfg: LoggingConfig, source: str) -> None:
    """Raise a :class:`ConfigError` when a configured sink's package is not installed."""
    problems = []
    if logging_cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        problems.append("logging.tensorboard: the 'tensorboard' package is not installed "
                        "(pip install tensorboard), or set logging.tensorboard: false")
    if logging_cfg.mlflow is not None and importlib.util.find_spec("mlflow") is None:
        problems.append("logging.mlflow: the 'mlflow' package is not installed (pip install mlflow), "
                        "or remove the logging.mlflow section")
    if problems:
        raise ConfigError(source, problems)


def mlflow_target(logging_cfg: LoggingConfig) -> MlflowConfig | None:
    """Where a phase logs to MLflow: its ``logging.mlflow``, else ``MLFLOW_TRACKING_URI`` (None: nowhere).

    The environment variable alone turns MLflow logging on when MLflow is installed (and is
    ignored, with a warning, when it is not: nothing in the config asked for it).
    """
    if logging_cfg.mlflow is not None:
        return logging_cfg.mlflow
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    if importlib.util.find_spec("mlflow") is None:
        log.warning("MLFLOW_TRACKING_URI is set but MLflow is not installed (pip install 'somnray[mlflow]'): "
                    "the run is not logged to MLflow")
        return None
    return MlflowConfig(tracking_uri=uri)


def mlflow_loop_config(phase: PhaseConfig, parent_run_id: str | None = None) -> dict[str, Any] | None:
    """The ``mlflow`` entry of a phase's loop config: target and parent run, plain data (None: off)."""
    target = mlflow_target(phase.logging)
    if target is None:
        return None
    return {"tracking_uri": target.tracking_uri, "experiment": target.experiment, "parent_run_id": parent_run_id}


class ExperimentTracking:
    """The driver's MLflow run of a whole experiment (a no-op object when no phase logs to MLflow).

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment; the first phase with an MLflow target names the server and experiment.
    run_name : str, optional
        The MLflow run's name (default ``storage.name``).
    """

    def __init__(self, cfg: ExperimentConfig, run_name: str | None = None) -> None:
        self.run_id: str | None = None
        target = next((t for t in (mlflow_target(p.logging) for p in cfg.phases) if t is not None), None)
        if target is None:
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=target.tracking_uri)
        exp = self.client.get_experiment_by_name(target.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(target.experiment)
        run = self.client.create_run(exp_id, run_name=run_name or cfg.storage.name,
                                     tags={"somnray.run_name": cfg.storage.name})
        self.run_id = run.info.run_id
        params = {"model": cfg.phases[-1].model.name, "phases": ",".join(p.name for p in cfg.phases),
                  "dataset": cfg.phases[-1].data.dataset.rstrip("/").rsplit("/", 1)[-1]}
        self.client.log_batch(self.run_id, params=[_param(k, v) for k, v in params.items()])

    def finish(self, results: Any, bundle_uri: str | None,
               storage_options: Mapping[str, Any] | None = None) -> None:
        """Log every phase's best metrics and the bundle (all its files, under ``model/``); end the run.

        ``results`` are :class:`~somnray.train.driver.PhaseResult` objects.
        """
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        from somnray.scoring.bundles import copy_bundle_folder

        stamp = int(time.time() * 1000)
        metrics = [Metric(f"{r.name}.{k}", s, stamp, 0) for r in results
                   for k, v in (r.metrics or {}).items() if (s := _scalar(v)) is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        if bundle_uri is not None:
            with tempfile.TemporaryDirectory(prefix="somnray-mlflow-") as tmp:
                self.client.log_artifacts(self.run_id, copy_bundle_folder(bundle_uri, tmp, storage_options), "model")
            log.info("MLflow run %s holds the bundle: register it with "
                        "`somnray models register runs:/%s/model --name NAME`", self.run_id, self.run_id)
        self.client.set_terminated(self.run_id, "FINISHED" if bundle_uri is not None else "FAILED")

    def fail(self) -> None:
        """End the run as failed (a phase raised)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED")


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, str(value)[:500])


def format_progress(phase: str, max_steps: int, metrics: Mapping[str, Any]) -> str:
    """One human-readable line per validation: step, losses by term, val accuracy / macro-F1 / κ."""
    terms = {k[len("train_loss_"):]: v for k, v in metrics.items() if k.startswith("train_loss_")}
    loss_text = f"loss {metrics.get('train_loss', float('nan')):.4f}"
    if terms:
        loss_text += " (" + ", ".join(f"{k} {v:.4f}" for k, v in sorted(terms.items())) + ")"
    return (f"[{phase}] step {int(metrics['step'])}/{max_steps}  {loss_text}  "
            f"val loss {metrics.get('val_loss', float('nan')):.4f}  acc {metrics.get('val_accuracy', float('nan')):.3f}  "
            f"macro-F1 {metrics.get('val_macro_f1', float('nan')):.3f}  κ {metrics.get('val_kappa', float('nan')):.3f}  "
            f"lr {metrics.get('lr', float('nan')):.3g}")


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


class MetricSinks:
    """The rank-0 sinks of one phase (a no-op object on other ranks).

    Parameters
    ----------
    phase : PhaseConfig
        The phase (its ``logging`` section).
    phase_uri : str or None
        ``<run>/<phase>``; TensorBoard files go below it.
    storage_options : mapping, optional
        Filesystem options of ``phase_uri`` (remote runs).
    active : bool
        False on ranks other than 0.
    run_name : str
        The run's name (MLflow run name prefix).
    tracking : mapping, optional
        :func:`mlflow_loop_config`: MLflow tracking URI, experiment and parent run (None: no MLflow).
    """

    def __init__(self, phase: PhaseConfig, phase_uri: str | None, storage_options: Mapping[str, Any] | None = None,
                 *, active: bool, run_name: str = "", tracking: Mapping[str, Any] | None = None) -> None:
        self.phase = phase
        self.active = active
        self._writer = None
        self._local_dir: str | None = None
        self._remote = None
        self._mlflow = None
        if not active:
            return
        if phase.logging.tensorboard and phase_uri is not None:
            from torch.utils.tensorboard import SummaryWriter

            from somnray.core.storage import resolve

            target = resolve(phase_uri, storage_options).join(TENSORBOARD_DIR)
            if target.is_local:
                os.makedirs(target.path, exist_ok=True)
                self._local_dir = target.path
            else:
                # Event files are appended to in place, which object stores cannot do: write
                # locally, upload whole files at each flush.
                self._local_dir = tempfile.mkdtemp(prefix="somnray-tb-")
                self._remote = target
            self._writer = SummaryWriter(log_dir=self._local_dir)
        if tracking is not None:
            import mlflow

            if tracking["tracking_uri"]:
                mlflow.set_tracking_uri(tracking["tracking_uri"])
            mlflow.set_experiment(tracking["experiment"])
            mlflow.start_run(run_name=f"{run_name}/{phase.name}" if run_name else phase.name,
                             parent_run_id=tracking.get("parent_run_id"))
            flat = _flatten(phase.model_dump(mode="json"))
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
            self._mlflow = mlflow

    def log_step(self, step: int, losses: Mapping[str, float], lr: float) -> None:
        """Training losses by term and the lr after optimizer ``step``."""
        if self._writer is not None:
            for name, value in losses.items():
                self._writer.add_scalar(f"train/loss_{name}", value, step)
            self._writer.add_scalar("train/lr", lr, step)

    def log_validation(self, metrics: Mapping[str, Any]) -> None:
        """Every scalar of a validation report; prints the progress line and flushes the files."""
        if not self.active:
            return
        step = int(metrics["step"])
        print(format_progress(self.phase.name, self.phase.optim.max_steps, metrics), flush=True)
        scalars = {k: s for k, v in metrics.items() if k != "step" and (s := _scalar(v)) is not None}
        if self._writer is not None:
            for name, value in scalars.items():
                if name.startswith("val_"):
                    self._writer.add_scalar(f"val/{name[4:]}", value, step)
                elif name in ("missing_rate", "best"):
                    self._writer.add_scalar(f"train/{name}", value, step)
            self.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=step)

    def flush(self) -> None:
        """Write buffered events (and upload them for a remote run)."""
        if self._writer is None:
            return
        self._writer.flush()
        if self._remote is not None:
            for name in sorted(os.listdir(self._local_dir)):
                path = os.path.join(self._local_dir, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        self._remote.join(name).atomic_write_bytes(f.read())

    def close(self) -> None:
        """Flush and release every sink."""
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None
            if self._remote is not None and self._local_dir:
                shutil.rmtree(self._local_dir, ignore_errors=True)
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}
