"""A finished run as a model bundle: ``<run>/model/`` (``model.pt`` + ``model.json``) and ``<run>/metrics.json``.

A run folder (``<storage.uri>/<storage.name>``) holds, after :func:`somnray.train.driver.run_experiment`::

    config.yaml                  the resolved experiment config (every phase complete)
    metrics.json                 {phase: best validation metrics, ...} in phase order
    <phase>/phase_result.json    best checkpoint URI and its metrics
    <phase>/init_source.json     a phase that started from another model: which weights exactly
    <phase>/checkpoint_*/        Ray Train checkpoints (state/, model.pt, trainer_state.json)
    model/model.pt, model.json   the bundle: the LAST phase's best weights and their provenance
    model/MODEL_CARD.md          its model card, and the card as data (model_card.json)

The bundle is what scoring and evaluation load (:meth:`somnray.scoring.scorer.Scorer.load`, from
the run URI or the bundle folder, local or remote): plain PyTorch files readable with
:func:`somnray.models.bundle.load_bundle` and no platform. Its ``model.json`` ``extra`` records
where the weights came from (run, phase, checkpoint, validation metrics, dataset and its cohort
profile, the split, the somnray version); ``model.json`` also embeds the full cohort profile of
the training data and summary statistics of the training signals (:func:`training_data`), so
the bundle scores new recordings without naming a profile, and the bundle carries its model
card (:mod:`somnray.train.card`).  Before the bundle is written, the exported model scores the
phase's validation split and a temperature is fitted on it (:func:`validation_calibration`,
:mod:`somnray.scoring.calibration`): ``model.json``'s ``calibration``.

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

import numpy as np
import torch

from somnray.core.config import parse_yaml
from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.core.constants import STAGE_NAMES
from somnray.core.version import somnray_version
from somnray.models.base import SleepStagingModel
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE, BundleInfo, save_bundle
from somnray.scoring.bundles import BUNDLE_DIR
from somnray.scoring.calibration import Calibration, calibrate, not_fitted

from .card import CARD_FILE, CARD_JSON_FILE, TrainingData, card_files, model_card
from .config import ExperimentConfig, PhaseConfig, model_facts, validate_experiment

log = logging.getLogger(__name__)

#: Per-phase best metrics of a run.
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
PHASE_RESULT_FILE = "phase_result.json"
#: The source model a phase started from (``init_from: <URI>``, :mod:`somnray.train.finetune`).
SOURCE_FILE = "init_source.json"
#: Training epochs per modality sampled for the bundle's signal summary.
SUMMARY_EPOCHS = 2048
#: Training recordings whose footers give the bundle's reading facts and amplitude range (all of
#: them up to this many, else a seeded sample: one small metadata read each).
SUMMARY_RECORDINGS = 512


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


def read_init_sources(run_uri: str, cfg: ExperimentConfig,
                      storage_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Phase name → the recorded source (``<run>/<phase>/init_source.json``) of each phase that has one.

    Phases that started from scratch or from the previous phase have none; so have runs trained
    before sources were recorded (their config still names ``init_from``).
    """
    run = resolve(run_uri, storage_options)
    out = {}
    for phase in cfg.phases:
        loc = run.join(phase.name, SOURCE_FILE)
        if loc.exists():
            out[phase.name] = json.loads(loc.read_text())
    return out


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


def _valid_profile(doc: Any, dataset_uri: str) -> dict[str, Any] | None:
    """The manifest's profile document if it is a complete cohort profile, else None (logged)."""
    from pydantic import ValidationError

    from somnray.data.profiles import CohortProfile

    try:
        return CohortProfile.model_validate(doc).model_dump(mode="json")
    except ValidationError:
        log.warning("the manifest of %s records no complete cohort profile; the bundle names it only",
                    dataset_uri)
        return None


def _reading_infos(ds: Any, train_ids: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """The ``info`` of up to :data:`SUMMARY_RECORDINGS` training recordings, from their footers."""
    ids = sorted(train_ids)
    if len(ids) > SUMMARY_RECORDINGS:
        ids = sorted(np.random.default_rng(seed).choice(ids, SUMMARY_RECORDINGS, replace=False).tolist())
    infos = []
    for rid in ids:
        try:
            infos.append(ds.summary(rid).get("info") or {})
        except (OSError, ValueError) as exc:  # a footer-less file: the others still describe the data
            log.warning("training recording %s: no summary to describe how it was read (%s)", rid, exc)
    return infos


def training_data(phase: PhaseConfig, storage_options: Mapping[str, Any] | None = None) -> TrainingData:
    """What the bundle and its card record about ``phase``'s training data.

    The dataset's version, manifest hash and full cohort profile; nights and subjects of the
    training and validation parts; the class histogram of the training part; and, per modality
    read, summary statistics of up to :data:`SUMMARY_EPOCHS` training epochs
    (:func:`somnray.data.signal_summary.summarize_modalities`) with how up to
    :data:`SUMMARY_RECORDINGS` training recordings were read: native rates, signals, band-pass and
    the range of their physical amplitude (:func:`somnray.data.signal_summary.summarize_reading`),
    which the domain-shift check of scoring compares new nights with. A dataset that can no longer
    be read (moved, deleted) gives only its URI, with a warning.
    """
    from somnray.data.dataset import PreparedDataset
    from somnray.data.signal_summary import summarize_modalities, summarize_reading

    from .inputs import resolve_split, sample_training_epochs

    uri = phase.data.dataset
    try:
        ds = PreparedDataset.open(uri, storage_options)
        split = resolve_split(phase.data, storage_options)
        manifest_sha = ds.manifest_sha256()
    except (ConfigError, OSError, ValueError) as exc:
        log.warning("cannot read the training data %s to describe it in the bundle: %s", uri, exc)
        return TrainingData(dataset_uri=uri)
    modalities = phase.modalities(model_facts(phase.model.name, phase.model.overrides).modalities)
    counts, epochs = sample_training_epochs(ds.uri, split.train, modalities, max_epochs=SUMMARY_EPOCHS,
                                            seed=phase.seed, storage_options=storage_options)
    summary = summarize_modalities(epochs)
    reading = summarize_reading(_reading_infos(ds, split.train, phase.seed))
    for m, facts in summary.items():
        facts.update(reading.get(m, {}))
    return TrainingData(
        dataset_uri=uri, dataset=ds.name, version=ds.version, manifest_sha256=manifest_sha,
        profile_name=ds.profile_name, profile=_valid_profile(ds.manifest.get("profile"), uri),
        nights={"train": len(split.train), "validation": len(split.val)},
        subjects={"train": len(split.train_subjects), "validation": len(split.val_subjects)},
        class_histogram={STAGE_NAMES[k]: int(v) for k, v in enumerate(counts)},
        modalities=list(modalities), summary=summary)


def validation_calibration(model: SleepStagingModel, phase: PhaseConfig, *,
                           storage_options: Mapping[str, Any] | None = None,
                           workers: int | None = None) -> Calibration:
    """Fit the bundle's temperature on ``phase``'s validation split with the exported model.

    The validation recordings are scored the way ``somnray evaluate`` scores (scenario ``all``,
    the default stride, fp32 on CPU: :func:`somnray.train.evaluate.scenario_probabilities`), and
    :func:`somnray.scoring.calibration.calibrate` fits the temperature and the ``low_confidence``
    threshold on the labelled epochs, with the phase's ``calibration`` settings.  No validation
    split, too few labelled epochs, an unreadable dataset or ``calibration.enabled: false`` give
    a calibration without a temperature whose ``reason`` says why (logged as a warning).

    Parameters
    ----------
    model : SleepStagingModel
        The exported weights.
    phase : PhaseConfig
        The exported phase (its data section names the split).
    storage_options : mapping, optional
        Filesystem options of the dataset.
    workers : int, optional
        Scoring actors (default: Ray's when it is initialised, else in-process).
    """
    from somnray.scoring.scorer import Scorer

    from .evaluate import EVALUATION_DEVICE, EVALUATION_PRECISION, scenario_probabilities
    from .inputs import resolve_split

    settings = phase.calibration

    def unfitted(reason: str, n: int = 0) -> Calibration:
        log.warning("model bundle of phase %s not calibrated: %s; scoring will use T = 1 and the "
                    "default low-confidence threshold", phase.name, reason)
        return not_fitted(reason, n)

    if not settings.enabled:
        return unfitted("calibration is disabled (calibration.enabled: false)")
    try:
        val = resolve_split(phase.data, storage_options).val
    except (ConfigError, OSError, ValueError) as exc:
        return unfitted(f"the validation split of {phase.data.dataset} cannot be read ({exc})")
    if not val:
        return unfitted("the run has no validation split")
    info = BundleInfo(model=phase.model.name, overrides=dict(phase.model.overrides),
                      modalities=tuple(model.modalities), sequence_length=phase.data.sequence_length)
    scorer = Scorer.from_model(model, info, device=EVALUATION_DEVICE, precision=EVALUATION_PRECISION)
    probs, labels = scenario_probabilities(scorer, phase.data.dataset, val,
                                           modalities=phase.modalities(model.modalities), workers=workers,
                                           storage_options=storage_options)
    result = calibrate(probs, labels, n_bins=settings.bins, flag_error_rate=settings.flag_error_rate,
                       min_epochs=settings.min_epochs)
    if not result.fitted:
        return unfitted(result.reason or "not fitted", result.n_epochs)
    log.info("calibrated on %d validation epochs: T = %.3f, ECE %.4f -> %.4f, low-confidence threshold %.3f",
             result.n_epochs, result.temperature, result.ece_before, result.ece_after,
             result.low_confidence_threshold)
    return result


def _load_weights(checkpoint_uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    loc = resolve(checkpoint_uri, storage_options).join(WEIGHTS_FILE)
    try:
        with loc.local_copy() as path:
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(loc.uri, [f"the best checkpoint has no {WEIGHTS_FILE}"]) from None


def bundle_extra(cfg: ExperimentConfig, phase: PhaseConfig, run_uri: str, result: Mapping[str, Any],
                 data: TrainingData, init_sources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Provenance recorded in ``model.json``'s ``extra`` for ``phase`` of a run.

    ``init_sources`` (:func:`read_init_sources`) is recorded as ``init_sources``: the other models
    the run's phases started from.
    """
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if k.startswith("val_") or k == "step"}
    return {
        "run_uri": run_uri,
        "run_name": cfg.storage.name,
        "phase": phase.name,
        "checkpoint_uri": result.get("checkpoint_uri"),
        "metrics": metrics,
        "monitor": f"val_{phase.optim.monitor}",
        "dataset_uri": phase.data.dataset,
        "cohort_profile": data.profile_name,
        "split": phase.data.split.model_dump(mode="json", exclude_none=True),
        "data_modalities": list(phase.data.modalities) if phase.data.modalities else None,
        "seed": phase.seed,
        "init_sources": dict(init_sources or {}),
        "somnray_version": somnray_version(),
    }


def _upload(folder: Path, target: StorageLocation) -> None:
    # Weights first, model.json last: a reader that finds model.json finds complete weights.
    for name in (WEIGHTS_FILE, CARD_JSON_FILE, CARD_FILE, INFO_FILE):
        target.join(name).atomic_write_bytes((folder / name).read_bytes())


def _write_card(folder: Path, cfg: ExperimentConfig, phase: PhaseConfig, data: TrainingData) -> None:
    from somnray.models import create_model

    info = BundleInfo.from_json((folder / INFO_FILE).read_text(), str(folder / INFO_FILE))
    with torch.device("meta"):
        paper = type(create_model(info.model, **info.overrides)).paper
    for name, blob in card_files(model_card(info, cfg, phase, data, paper)).items():
        (folder / name).write_bytes(blob)


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
    data = training_data(phase_cfg, storage_options)
    extra = bundle_extra(cfg, phase_cfg, run.uri, result, data, read_init_sources(run.uri, cfg, storage_options))
    calibration = validation_calibration(model, phase_cfg, storage_options=storage_options)
    target = run.join(BUNDLE_DIR)
    kwargs = dict(name=phase_cfg.model.name, overrides=phase_cfg.model.overrides,
                  sequence_length=phase_cfg.data.sequence_length, extra=extra, profile=data.profile,
                  eval_stride=phase_cfg.data.stride, data_summary=data.summary,
                  calibration=calibration.to_dict())
    if target.is_local:
        _write_card(save_bundle(model, target.path, **kwargs), cfg, phase_cfg, data)
    else:
        with tempfile.TemporaryDirectory(prefix="somnray-bundle-") as tmp:
            _write_card(save_bundle(model, tmp, **kwargs), cfg, phase_cfg, data)
            _upload(Path(tmp), target)
    log.info("exported phase %s of %s to %s", name, run.uri, target.uri)
    return target.uri


__all__ = ["METRICS_FILE", "SOURCE_FILE", "bundle_extra", "export_bundle", "read_init_sources", "read_phase_result",
           "read_run_config", "validation_calibration", "write_run_metrics"]
