"""A finished run as a model bundle: ``<run>/model/`` (``model.pt`` + ``model.json``) and ``<run>/metrics.json``.

A run folder (``<storage.uri>/<storage.name>``) holds, after :func:`somnray.train.driver.run_experiment`::

    config.yaml                  the resolved experiment config (every phase complete)
    metrics.json                 {phase: best validation metrics, ...} in phase order
    <phase>/phase_result.json    best checkpoint URI and its metrics
    <phase>/checkpoint_*/        Ray Train checkpoints (state/, model.pt, trainer_state.json)
    model/model.pt, model.json   the bundle: the LAST phase's best weights and their provenance

The bundle is what scoring and evaluation load (:meth:`somnray.scoring.scorer.Scorer.load`, from
the run URI or the bundle folder, local or remote): plain PyTorch files readable with
:func:`somnray.models.bundle.load_bundle` and no platform. Its ``model.json`` ``extra`` records
where the weights came from (run, phase, checkpoint, validation metrics, dataset and its cohort
profile, the split, the somnray version).

:func:`export_bundle` (re-)exports from an existing run, e.g. from an earlier phase, and works on
any storage URI: remote runs are assembled in a temporary folder and uploaded file by file with
atomic writes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from somnray.core.config import parse_yaml
from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.core.version import somnray_version
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE, save_bundle
from somnray.scoring.bundles import BUNDLE_DIR

from .config import ExperimentConfig, PhaseConfig, validate_experiment

log = logging.getLogger(__name__)

#: Per-phase best metrics of a run.
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
PHASE_RESULT_FILE = "phase_result.json"


def read_run_config(run_uri: str, storage_options: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The resolved :class:`ExperimentConfig` a run wrote to ``<run>/config.yaml``.

    Raises
    ------
    ConfigError
        The run has no ``config.yaml`` (not a run folder) or it no longer validates.
    """
    loc = resolve(run_uri, storage_options).join(CONFIG_FILE)
    if not loc.exists():
        raise ConfigError(loc.uri, ["no config.yaml: not a somnray run folder (give <storage.uri>/<storage.name>)"])
    return validate_experiment(parse_yaml(loc.read_text(), loc.uri), loc.uri)


def read_phase_result(run_uri: str, phase: str, storage_options: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """``<run>/<phase>/phase_result.json`` as a mapping (``name``, ``checkpoint_uri``, ``metrics``).

    Raises
    ------
    ConfigError
        The phase has not finished (no result file).
    """
    loc = resolve(run_uri, storage_options).join(phase, PHASE_RESULT_FILE)
    if not loc.exists():
        raise ConfigError(loc.uri, [f"phase {phase!r} has no {PHASE_RESULT_FILE}: it has not finished; "
                                    f"rerun the experiment to complete it"])
    return json.loads(loc.read_text())


def write_run_metrics(run_uri: str, results: Sequence[Any],
                      storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``<run>/metrics.json``: ``{"phases": {name: metrics}, "final_phase": name}``.

    ``results`` are :class:`~somnray.train.driver.PhaseResult` objects (anything with ``name``,
    ``checkpoint_uri`` and ``metrics``). Returns the file's URI.
    """
    doc = {
        "final_phase": results[-1].name if results else None,
        "phases": {r.name: {"checkpoint_uri": r.checkpoint_uri, "metrics": dict(r.metrics)} for r in results},
    }
    loc = resolve(run_uri, storage_options).join(METRICS_FILE)
    loc.write_text(json.dumps(doc, indent=2, sort_keys=False, default=float))
    return loc.uri


def _cohort_profile(dataset_uri: str, storage_options: Mapping[str, Any] | None) -> str | None:
    """The cohort profile name recorded in the dataset's ``manifest.json`` (None if unreadable)."""
    from somnray.data.dataset import PreparedDataset

    try:
        return PreparedDataset.open(dataset_uri, storage_options).profile_name
    except (ConfigError, OSError, ValueError) as exc:
        log.warning("cannot read the manifest of %s to record its cohort profile: %s", dataset_uri, exc)
        return None


def _load_weights(checkpoint_uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    loc = resolve(checkpoint_uri, storage_options).join(WEIGHTS_FILE)
    try:
        with loc.local_copy() as path:
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(loc.uri, [f"the best checkpoint has no {WEIGHTS_FILE}"]) from None


def bundle_extra(cfg: ExperimentConfig, phase: PhaseConfig, run_uri: str, result: Mapping[str, Any],
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Provenance recorded in ``model.json``'s ``extra`` for ``phase`` of a run."""
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if k.startswith("val_") or k == "step"}
    return {
        "run_uri": run_uri,
        "run_name": cfg.storage.name,
        "phase": phase.name,
        "checkpoint_uri": result.get("checkpoint_uri"),
        "metrics": metrics,
        "monitor": f"val_{phase.optim.monitor}",
        "dataset_uri": phase.data.dataset,
        "cohort_profile": _cohort_profile(phase.data.dataset, storage_options),
        "split": phase.data.split.model_dump(mode="json", exclude_none=True),
        "data_modalities": list(phase.data.modalities) if phase.data.modalities else None,
        "seed": phase.seed,
        "somnray_version": somnray_version(),
    }


def _upload(folder: Path, target: StorageLocation) -> None:
    # Weights first, model.json last: a reader that finds model.json finds complete weights.
    for name in (WEIGHTS_FILE, INFO_FILE):
        target.join(name).atomic_write_bytes((folder / name).read_bytes())


def export_bundle(run_uri: str, phase: str | None = None, *, storage_options: Mapping[str, Any] | None = None,
                  cfg: ExperimentConfig | None = None) -> str:
    """Export a phase's best checkpoint of a run as the run's model bundle ``<run>/model/``.

    Parameters
    ----------
    run_uri : str
        The run folder (``<storage.uri>/<storage.name>``), any storage URI.
    phase : str, optional
        Phase to export; default the last phase of the recipe.
    storage_options : mapping, optional
        Filesystem options of remote runs (credentials, endpoint; default from the environment).
    cfg : ExperimentConfig, optional
        The run's config, when the caller has it (default: read ``<run>/config.yaml``).

    Returns
    -------
    str
        URI of the bundle folder.

    Raises
    ------
    ConfigError
        Not a run folder, unknown phase, the phase has not finished or produced no checkpoint.
    """
    from somnray.models import create_model

    run = resolve(run_uri, storage_options)
    cfg = cfg or read_run_config(run.uri, storage_options)
    name = phase or cfg.phases[-1].name
    try:
        phase_cfg = cfg.phase(name)
    except KeyError:
        raise ConfigError(run.uri, [f"no phase {name!r} in this run; its phases are "
                                    f"{[p.name for p in cfg.phases]}"]) from None
    result = read_phase_result(run.uri, name, storage_options)
    checkpoint = result.get("checkpoint_uri")
    if not checkpoint:
        raise ConfigError(run.join(name, PHASE_RESULT_FILE).uri,
                          [f"phase {name!r} recorded no checkpoint (it never validated: "
                           f"max_steps below validate_every?)"])
    model = create_model(phase_cfg.model.name, **phase_cfg.model.overrides)
    try:
        model.load_state_dict(_load_weights(checkpoint, storage_options))
    except RuntimeError as exc:
        raise ConfigError(checkpoint, [f"{WEIGHTS_FILE} does not fit model {phase_cfg.model.name!r}: {exc}"]) from None
    extra = bundle_extra(cfg, phase_cfg, run.uri, result, storage_options)
    target = run.join(BUNDLE_DIR)
    kwargs = dict(name=phase_cfg.model.name, overrides=phase_cfg.model.overrides,
                  sequence_length=phase_cfg.data.sequence_length, extra=extra)
    if target.is_local:
        save_bundle(model, target.path, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="somnray-bundle-") as tmp:
            save_bundle(model, tmp, **kwargs)
            _upload(Path(tmp), target)
    log.info("exported phase %s of %s to %s", name, run.uri, target.uri)
    return target.uri


__all__ = ["METRICS_FILE", "bundle_extra", "export_bundle", "read_phase_result", "read_run_config",
           "write_run_metrics"]
