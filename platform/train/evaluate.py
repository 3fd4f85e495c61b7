"""Evaluate trained runs on a prepared dataset under missing-modality scenarios.

:func:`evaluate_run` scores every test recording of a run's split with
:func:`somnray.models.inference.predict_night` once per scenario (:mod:`somnray.train.scenarios`:
all modalities, each modality alone, random partial missing at fixed per-recording masks, noisy
and detached modalities), and reports accuracy, macro-F1, Cohen's κ, per-class F1 and the
confusion matrix per scenario, in the layout of CoRe-Sleep Table I / MC²SleepNet Table 5. With
several runs (the folds of a cross-validation, or repeated splits) each run is scored on its own
split's test part and the report gives both conventions of the literature (docs/models.md §4.7): the
metrics of the **pooled** predictions and the per-fold **mean ± std**.

Which recordings are scored (said in the report):

1. ``split=`` when given: ``all``, ``manifest`` (the manifest's split column), the name of a split
   file stored with the dataset (``<dataset>/splits/<name>.json``) or the path/URI of one; run
   ``i`` of several uses fold ``fold + i`` of a multi-fold file;
2. otherwise the split recorded in the run's bundle (``model.json`` ``extra.split``), when the
   bundle was trained on this dataset (same URI or same versioned folder name);
3. otherwise the manifest's split column, when it names a test part;
4. otherwise every prepared recording.

Each recording is predicted by a :class:`somnray.scoring.scorer.Scorer` (the one scorer of
evaluation, ``somnray score`` and the Serve app) under each scenario's signals and masks
(:func:`score_scenarios`), in fp32 on CPU so that a report is reproducible on any machine.
Recordings are independent, so the work is distributed per recording: with Ray initialised (or
``workers > 1``) scoring's actor pool (:func:`somnray.scoring.actors.map_with_scorer`, the model
built once per actor); otherwise a plain loop in this process. Both run
:class:`EvaluateRecording`.

What is evaluated and how are explicit: :func:`evaluate_run` takes :class:`EvaluationRun` s (one
per fold) and an :class:`EvaluationOptions`.

Calibration is reported per scenario too: the expected calibration error of the calibrated
probabilities (each run's bundle temperature, :meth:`Scorer.calibrate
<somnray.scoring.scorer.Scorer.calibrate>`) beside that of the model's raw softmax, and a
reliability diagram (:mod:`somnray.scoring.calibration`).

Outputs, through :mod:`somnray.core.storage` (local or ``s3://``), in
``<run>/evaluation/<dataset>/``: ``report.md``, ``report.json``, ``confusion_<scenario>.png``,
``missing_rate.png`` (Acc / MF1 / κ against the missing rate, CIMSleepNet Fig. 4) and
``reliability.png`` (one reliability diagram per scenario).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from somnray.core.constants import EPOCH_SAMPLES, STAGES
from somnray.core.errors import ConfigError
from somnray.core.storage import resolve
from somnray.data import schema
from somnray.data.dataset import PreparedDataset
from somnray.models.bundle import BundleInfo
from somnray.scoring.bundles import bundle_location
from somnray.scoring.calibration import DEFAULT_BINS, confidence_bins, ece_of_bins
from somnray.scoring.registry import is_registry_uri
from somnray.scoring.scorer import Scorer

from .inputs import recording_present
from .metrics import FoldSummary, StagingMetrics, aggregate_folds, compute_metrics, plot_confusion_matrix
from .missing import DEFAULT_BASE_SEED
from .scenarios import DEFAULT_CHUNK_EPOCHS, Scenario, apply_scenario, resolve_scenarios

log = logging.getLogger(__name__)

#: Folder of the evaluations inside a run.
EVALUATION_DIR = "evaluation"
REPORT_FORMAT = "somnray-evaluation/1"
#: Where and how evaluation runs a model: exact fp32 on CPU, so that a report (and the fixed
#: per-recording masks it is about) reads the same on any machine.
EVALUATION_DEVICE = "cpu"
EVALUATION_PRECISION = "fp32"
#: The report's name of a run given as a model in memory.
IN_MEMORY_RUN = "<in-memory bundle>"


# ------------------------------------------------------------------------------------------------
# scoring one recording under every scenario (the same code in-process and in the Ray actors)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSpec:
    """How recordings are read and scored; plain data, shipped to the Ray actors.

    Parameters
    ----------
    dataset_uri : str
        The prepared dataset.
    modalities : tuple of str
        The model's modalities (``present`` column order).
    stride : int, optional
        Window stride (default L).
    scenarios : tuple of Scenario
        Scenarios to score.
    columns : tuple of str
        Dataset columns to read (those of ``modalities`` that exist, with labels and masks).
    base_seed : int
        Base seed of the fixed per-recording masks and noise.
    chunk_epochs : int
        Chunk length of the partial-missing protocol.
    storage_options : dict
        Filesystem options resolved on the driver.
    keep_probabilities : bool
        Keep each scenario's uncalibrated ``(n, 5)`` probabilities in the result (what fitting a
        calibration needs; reports only keep the top probabilities).
    """

    dataset_uri: str
    modalities: tuple[str, ...]
    stride: int | None
    scenarios: tuple[Scenario, ...]
    columns: tuple[str, ...]
    base_seed: int = DEFAULT_BASE_SEED
    chunk_epochs: int = DEFAULT_CHUNK_EPOCHS
    storage_options: dict[str, Any] = field(default_factory=dict)
    keep_probabilities: bool = False


@dataclass(frozen=True)
class RecordingScores:
    """Predictions of one recording under every scenario.

    Attributes
    ----------
    recording_id : str
        Manifest id.
    recording_index : int
        Index in the dataset's sorted recording ids (its number in the reports).
    labels : ndarray
        ``(n,)`` int8 stages, -1 ignored.
    predictions : dict of str to ndarray
        Scenario name → ``(n,)`` int8 predicted stages. A scenario that left the recording with
        no input at all (e.g. ``eog_only`` on a night without EOG) has no entry.
    confidence : dict of str to ndarray
        Scenario name → ``(n,)`` float32 top probability after the bundle's temperature.
    raw_confidence : dict of str to ndarray
        Scenario name → ``(n,)`` float32 top probability of the model's own softmax.
    probabilities : dict of str to ndarray
        Scenario name → ``(n, 5)`` float32 uncalibrated probabilities (only with
        ``EvalSpec.keep_probabilities``).
    """

    recording_id: str
    recording_index: int
    labels: np.ndarray
    predictions: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray] = field(default_factory=dict)
    raw_confidence: dict[str, np.ndarray] = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)


def recording_inputs(arrays: Mapping[str, Any], modalities: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Signals (modalities the recording has) and the ``(n, M)`` mask of a prepared recording."""
    n = int(arrays["n_epochs"])
    signals = {m: np.asarray(arrays[m]).reshape(n, EPOCH_SAMPLES) for m in modalities if arrays.get(m) is not None}
    return signals, recording_present(arrays, modalities)


def score_scenarios(scorer: Scorer, arrays: Mapping[str, Any], spec: EvalSpec,
                    recording_index: int) -> RecordingScores:
    """Score one recording (a :func:`somnray.data.schema.row_to_arrays` dict) under every scenario."""
    signals, present = recording_inputs(arrays, spec.modalities)
    labels = np.asarray(arrays["labels"], dtype=np.int8)
    predictions: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    raw_confidence: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for scenario in spec.scenarios:
        sig, mask = apply_scenario(scenario, signals, present, spec.modalities, str(arrays["recording_id"]),
                                   base_seed=spec.base_seed, chunk_epochs=spec.chunk_epochs)
        # Only modalities with at least one usable epoch are passed: the others are absent.
        sig = {m: x for m, x in sig.items() if mask[:, spec.modalities.index(m)].any()}
        if not sig or len(labels) == 0:
            continue
        # Scaled and unscaled probabilities have the same argmax, so the stages are the same.
        raw = scorer.predict(sig, mask, stride=spec.stride, calibrated=False)
        predictions[scenario.name] = raw.argmax(axis=1).astype(np.int8)
        raw_confidence[scenario.name] = raw.max(axis=1).astype(np.float32)
        confidence[scenario.name] = scorer.calibrate(raw).max(axis=1).astype(np.float32)
        if spec.keep_probabilities:
            kept[scenario.name] = raw.astype(np.float32)
    return RecordingScores(str(arrays["recording_id"]), int(recording_index), labels, predictions,
                           confidence, raw_confidence, kept)


def _read(spec: EvalSpec, recording_id: str) -> dict[str, Any]:
    # The driver opened (checked) the dataset; an actor only reads its recording.
    return PreparedDataset.at(spec.dataset_uri, spec.storage_options).read(recording_id, spec.columns)


@dataclass(frozen=True)
class EvaluateRecording:
    """Evaluation's scoring task: read one prepared recording, score it under every scenario.

    Run in-process (:meth:`score`) or by scoring's Ray actors (called as ``task(scorer, row)``
    with a ``recording_id`` / ``recording_index`` row: see :mod:`somnray.scoring.actors`).
    """

    spec: EvalSpec

    def score(self, scorer: Scorer, recording_id: str, recording_index: int) -> RecordingScores:
        """The recording's :class:`RecordingScores`."""
        return score_scenarios(scorer, _read(self.spec, recording_id), self.spec, recording_index)

    def __call__(self, scorer: Scorer, row: Mapping[str, Any]) -> dict[str, Any]:
        """An actor's output row: the recording id and its pickled :class:`RecordingScores`."""
        scores = self.score(scorer, str(row["recording_id"]), int(row["recording_index"]))
        return {"recording_id": scores.recording_id,
                "scores": pickle.dumps(scores, protocol=pickle.HIGHEST_PROTOCOL)}


def _score_recordings(scorer: Scorer, spec: EvalSpec, items: Sequence[tuple[str, int]],
                      workers: int | None) -> list[RecordingScores]:
    """Every ``(recording_id, recording_index)`` of ``items`` scored, in-process or on Ray."""
    task = EvaluateRecording(spec)
    if not _use_ray(workers):
        return [task.score(scorer, rid, index) for rid, index in items]
    import ray

    from somnray.core.session import ensure_ray
    from somnray.scoring.actors import map_with_scorer

    ensure_ray()
    size = max(1, min(workers or _default_workers(), len(items)))
    ds = ray.data.from_items([{"recording_id": rid, "recording_index": int(i)} for rid, i in items],
                             override_num_blocks=len(items))
    # One actor per CPU, one torch thread each: more intra-op threads would only fight the others.
    ds = map_with_scorer(ds, scorer, task, actors=size, device=EVALUATION_DEVICE,
                         precision=EVALUATION_PRECISION, threads=1, num_cpus=1)
    return [pickle.loads(row["scores"]) for row in ds.iter_rows()]


def scenario_probabilities(scorer: Scorer, dataset_uri: str, recording_ids: Sequence[str], *,
                           scenario: str = "all", modalities: Sequence[str] | None = None,
                           stride: int | None = None, workers: int | None = None,
                           storage_options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated probabilities and labels of recordings under one scenario, concatenated.

    Scores exactly as :func:`evaluate_run` does (:class:`EvaluateRecording`, in-process or on
    scoring's actor pool, fp32 on CPU when the scorer was built so); export fits the bundle's
    calibration on them.

    Parameters
    ----------
    scorer : Scorer
    dataset_uri : str
        The prepared dataset.
    recording_ids : sequence of str
        The recordings to score (e.g. a split's validation part).
    scenario : str
        Scenario name (default ``all``: every modality as recorded).
    modalities : sequence of str, optional
        The dataset columns read (default: the model's); a modality left out is absent.
    stride : int, optional
        Window stride (default: the window length, as scoring).
    workers : int, optional
        As :attr:`EvaluationOptions.workers`.
    storage_options : mapping, optional
        Filesystem options of the dataset.

    Returns
    -------
    tuple of ndarray
        ``(n, 5)`` float32 probabilities (the model's softmax averaged over windows, no
        temperature) and ``(n,)`` int8 labels (-1 unlabelled), over every recording scored.
    """
    data = resolve(dataset_uri, storage_options)
    storage = dict(data.storage_options)
    spec = EvalSpec(dataset_uri=data.uri, modalities=scorer.modalities, stride=stride,
                    scenarios=resolve_scenarios([scenario], scorer.modalities),
                    columns=_existing_columns(data.uri, modalities or scorer.modalities, storage),
                    storage_options=storage, keep_probabilities=True)
    items = [(rid, i) for i, rid in enumerate(sorted(recording_ids))]
    scores = [r for r in _score_recordings(scorer, spec, items, workers) if scenario in r.probabilities]
    if not scores:
        return np.zeros((0, len(STAGES)), np.float32), np.zeros(0, np.int8)
    scores.sort(key=lambda r: r.recording_id)
    return (np.concatenate([r.probabilities[scenario] for r in scores]),
            np.concatenate([r.labels for r in scores]))


# ------------------------------------------------------------------------------------------------
# runs, splits, the dataset
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationRun:
    """One run (a fold) to evaluate: a run or bundle folder URI, or a model already in memory.

    Give exactly one of the two.

    Attributes
    ----------
    uri : str, optional
        A training run (its ``model/`` bundle is loaded) or a bundle folder, local or remote; the
        report goes to ``<uri>/evaluation/<dataset>/`` by default.  A registered model
        (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``) has no folder: its report is written
        only to an explicit ``EvaluationOptions.out_uri``.
    scorer : Scorer, optional
        A model in memory (:meth:`Scorer.from_model <somnray.scoring.scorer.Scorer.from_model>`);
        its report is written only to an explicit ``EvaluationOptions.out_uri``.
    """

    uri: str | None = None
    scorer: Scorer | None = None

    def __post_init__(self) -> None:
        if (self.uri is None) == (self.scorer is None):
            raise ValueError("EvaluationRun takes exactly one of uri= and scorer=")


@dataclass(frozen=True)
class _LoadedRun:
    """A run ready to score: its URI (None in memory) and its scorer."""

    uri: str | None
    scorer: Scorer

    @property
    def label(self) -> str:
        """How the report names the run."""
        return self.uri or IN_MEMORY_RUN


def _load_run(run: EvaluationRun, batch_size: int, storage_options: Mapping[str, Any] | None) -> _LoadedRun:
    if run.scorer is not None:
        return _LoadedRun(None, replace(run.scorer, batch_size=batch_size))
    try:
        location = bundle_location(run.uri, storage_options)
    except ConfigError as exc:
        raise ConfigError(run.uri, [f"no trained model to evaluate: {'; '.join(exc.errors)}"]) from None
    try:
        scorer = Scorer.load(run.uri if is_registry_uri(run.uri) else location, device=EVALUATION_DEVICE,
                             precision=EVALUATION_PRECISION, batch_size=batch_size)
    except ConfigError as exc:
        raise ConfigError(run.uri, [f"the run's model bundle cannot be loaded: {'; '.join(exc.errors)}"]) from None
    # A registered version is named by its models:/NAME/VERSION URI (it has no run folder).
    return _LoadedRun(scorer.uri if scorer.registered else resolve(run.uri, storage_options).uri, scorer)


def dataset_name(dataset_uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``<profile>-<version>`` of a prepared dataset (its folder name if the manifest lacks it)."""
    return PreparedDataset.open(dataset_uri, storage_options).name


def _same_dataset(a: str | None, b: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Whether two URIs name the same prepared dataset (same place or same versioned folder)."""
    if not a:
        return False
    try:
        return PreparedDataset.at(a, storage_options).same_as(PreparedDataset.at(b, storage_options))
    except ConfigError:
        return False


@dataclass(frozen=True)
class EvalSelection:
    """The recordings a run is scored on, and where that choice came from (for the report)."""

    recording_ids: tuple[str, ...]
    source: str
    split_name: str | None = None
    fold: int | None = None


def select_test_recordings(dataset_uri: str, info: BundleInfo, split: str | None = None, fold: int = 0,
                           storage_options: Mapping[str, Any] | None = None) -> EvalSelection:
    """The recordings to score (see the module docstring for the order of precedence).

    Raises
    ------
    ConfigError
        Unknown split file, fold out of range, or a split whose test part is empty.
    """
    from somnray.data import splits as sp

    from .config import DataConfig, SplitConfig
    from .inputs import resolve_split

    dataset = PreparedDataset.at(dataset_uri, storage_options)
    entries = dataset.entries(required=True)
    every = tuple(sorted(e.recording_id for e in entries))

    def from_split(chosen: sp.Split, source: str) -> EvalSelection:
        test = tuple(sorted(set(chosen.test) & set(every)))
        if not test:
            raise ConfigError(dataset_uri, [f"{source}: the test part selects no prepared recording of "
                                            f"this dataset"])
        return EvalSelection(test, source, chosen.name, chosen.fold)

    if split is not None:
        if split == "all":
            return EvalSelection(every, "every prepared recording (--split all)")
        if split == "manifest":
            try:
                return from_split(sp.manifest_split(entries), "the manifest's split column")
            except sp.SplitError as exc:
                raise ConfigError(dataset_uri, [f"split 'manifest': {exc}"]) from None
        looks_like_file = split.endswith(".json") or "/" in split or "://" in split
        uri = split if looks_like_file else dataset.split_uri(split)
        try:
            folds = sp.load_splits(uri, storage_options)
        except FileNotFoundError:
            raise ConfigError(uri, [f"no split file {split!r} (give 'all', 'manifest', a split name "
                                    f"stored with the dataset, or the path of a split JSON file)"]) from None
        except sp.SplitError as exc:
            raise ConfigError(uri, [str(exc)]) from None
        if not 0 <= fold < len(folds):
            raise ConfigError(uri, [f"fold {fold} out of range; the file has {len(folds)} fold(s)"])
        return from_split(folds[fold], f"split file {uri}, fold {fold}")

    recorded = info.extra.get("split")
    if isinstance(recorded, Mapping) and _same_dataset(info.extra.get("dataset_uri"), dataset_uri, storage_options):
        try:
            data = DataConfig(dataset=dataset_uri, split=SplitConfig.model_validate(dict(recorded)),
                              sequence_length=max(int(info.sequence_length), 1))
            chosen = resolve_split(data, storage_options)
            desc = ", ".join(f"{k}={v}" for k, v in sorted(recorded.items()))
            return from_split(chosen, f"the run's training split ({desc})")
        except Exception as exc:  # noqa: BLE001 - fall back, and say why in the log
            log.warning("cannot resolve the run's recorded split %s on %s (%s); falling back to the "
                        "manifest split", recorded, dataset_uri, exc)
    try:
        manifest = sp.manifest_split(entries)
        if manifest.test:
            return from_split(manifest, "the manifest's split column (the run records no split for this dataset)")
    except sp.SplitError:
        pass
    return EvalSelection(every, "every prepared recording (no split recorded with the run, none in the manifest)")


def _existing_columns(dataset_uri: str, modalities: Sequence[str],
                      storage_options: Mapping[str, Any] | None) -> tuple[str, ...]:
    names = set(PreparedDataset.at(dataset_uri, storage_options).columns())
    wanted = ["labels", *(c for m in modalities for c in (m, schema.available_column(m)))]
    # A modality the dataset lacks entirely has no column: it is absent, not an error.
    return tuple(c for c in wanted if c in names)


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldResult:
    """One run scored on its test recordings.

    Attributes
    ----------
    run : str
        Run URI (``<in-memory bundle>`` for a bundle passed as objects).
    selection : EvalSelection
        Which recordings, and why.
    recordings : tuple of RecordingScores
        Per-recording predictions, in recording order.
    metrics : dict of str to StagingMetrics
        Scenario → metrics of this fold's pooled epochs.
    temperature : float or None
        The run's bundle temperature (None: not calibrated; its probabilities are the raw ones).
    """

    run: str
    selection: EvalSelection
    recordings: tuple[RecordingScores, ...]
    metrics: dict[str, StagingMetrics]
    temperature: float | None = None

    def skipped(self, scenario: str) -> list[str]:
        """Recordings the scenario left without any input (not scored under it)."""
        return [r.recording_id for r in self.recordings if scenario not in r.predictions]


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _kappa(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


@dataclass
class EvaluationReport:
    """Per-scenario metrics of one or more runs (folds) on a dataset; see the module docstring."""

    model: str
    modalities: tuple[str, ...]
    sequence_length: int
    stride: int
    dataset_uri: str
    dataset: str
    scenarios: tuple[Scenario, ...]
    folds: tuple[FoldResult, ...]
    summaries: dict[str, FoldSummary]
    base_seed: int = DEFAULT_BASE_SEED
    chunk_epochs: int = DEFAULT_CHUNK_EPOCHS
    written: dict[str, str] = field(default_factory=dict)

    # -- access ------------------------------------------------------------------------------
    def pooled(self, scenario: str) -> StagingMetrics:
        """Metrics of ``scenario`` on the pooled predictions of every fold."""
        return self.summaries[scenario].pooled

    def predictions(self, scenario: str) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated ``(labels, predictions)`` of ``scenario`` over folds and recordings."""
        labels, preds = [], []
        for fold in self.folds:
            for rec in fold.recordings:
                if scenario in rec.predictions:
                    labels.append(rec.labels)
                    preds.append(rec.predictions[scenario])
        if not labels:
            return np.zeros(0, np.int8), np.zeros(0, np.int8)
        return np.concatenate(labels), np.concatenate(preds)

    def calibration(self, scenario: str, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
        """Calibration of ``scenario`` over every fold's labelled epochs (pooled).

        Returns
        -------
        dict
            ``n_epochs``; ``ece`` and ``bins`` (:func:`~somnray.scoring.calibration.confidence_bins`)
            of the calibrated top probabilities, ``ece_uncalibrated`` and ``bins_uncalibrated`` of
            the model's raw softmax; ``mean_confidence`` (calibrated) and ``accuracy``.
        """
        conf, raw, correct = [], [], []
        for fold in self.folds:
            for rec in fold.recordings:
                if scenario in rec.confidence:
                    labelled = rec.labels >= 0
                    conf.append(rec.confidence[scenario][labelled])
                    raw.append(rec.raw_confidence[scenario][labelled])
                    correct.append(rec.predictions[scenario][labelled] == rec.labels[labelled])
        conf_all = np.concatenate(conf) if conf else np.zeros(0, np.float32)
        raw_all = np.concatenate(raw) if raw else np.zeros(0, np.float32)
        right = np.concatenate(correct) if correct else np.zeros(0, bool)
        bins, raw_bins = confidence_bins(conf_all, right, n_bins), confidence_bins(raw_all, right, n_bins)
        n = int(right.size)
        return {"n_epochs": n, "ece": ece_of_bins(bins), "ece_uncalibrated": ece_of_bins(raw_bins),
                "mean_confidence": float(conf_all.mean()) if n else None,
                "accuracy": float(right.mean()) if n else None,
                "bins": bins, "bins_uncalibrated": raw_bins}

    @property
    def temperatures(self) -> list[float | None]:
        """Each fold's bundle temperature (None: that bundle is not calibrated)."""
        return [f.temperature for f in self.folds]

    @property
    def scenario_names(self) -> list[str]:
        """Scenario names in report order."""
        return [s.name for s in self.scenarios]

    # -- tables ------------------------------------------------------------------------------
    def table(self) -> str:
        """Markdown table of the pooled metrics: rows scenarios; Acc, κ, MF1, per-class F1 (%)."""
        head = "| Scenario | Epochs | Acc | κ | MF1 | " + " | ".join(STAGES) + " |"
        rule = "|---|---:|---:|---:|---:|" + "---:|" * len(STAGES)
        rows = [head, rule]
        for name in self.scenario_names:
            m = self.pooled(name)
            f1 = " | ".join(_pct(v) for v in m.f1)
            rows.append(f"| {name} | {m.n_epochs} | {_pct(m.accuracy)} | {_kappa(m.kappa)} | "
                        f"{_pct(m.macro_f1)} | {f1} |")
        return "\n".join(rows)

    def fold_table(self) -> str:
        """Markdown table of the per-fold mean ± std (population std, as CoRe-Sleep reports)."""
        head = "| Scenario | Acc | κ | MF1 | " + " | ".join(STAGES) + " |"
        rule = "|---|---:|---:|---:|" + "---:|" * len(STAGES)
        rows = [head, rule]
        for name in self.scenario_names:
            s = self.summaries[name]

            def pm(key: str, kappa: bool = False) -> str:
                mean, std = s.mean.get(key, float("nan")), s.std.get(key, float("nan"))
                if kappa:
                    return f"{_kappa(mean)}±{_kappa(std)}"
                return f"{_pct(mean)}±{_pct(std)}"

            f1 = " | ".join(pm(f"f1_{st}") for st in STAGES)
            rows.append(f"| {name} | {pm('accuracy')} | {pm('kappa', True)} | {pm('macro_f1')} | {f1} |")
        return "\n".join(rows)

    def to_markdown(self) -> str:
        """The whole ``report.md``."""
        n_rec = sum(len(f.recordings) for f in self.folds)
        lines = [
            f"# Evaluation: {self.model} on {self.dataset}",
            "",
            f"- model: `{self.model}`, modalities {', '.join(self.modalities)}, windows of "
            f"L = {self.sequence_length} epochs, stride {self.stride} (per-epoch probabilities averaged)",
            f"- dataset: `{self.dataset_uri}`",
            f"- runs (folds): {len(self.folds)}; test recordings: {n_rec}",
        ]
        for i, fold in enumerate(self.folds):
            lines.append(f"  - fold {i}: `{fold.run}` — {len(fold.recordings)} recording(s) from "
                         f"{fold.selection.source}")
        lines += [
            f"- missing-modality masks and noise fixed per recording: drawn from seed {self.base_seed} "
            f"and the recording id (chunks of {self.chunk_epochs} epochs), identical for every model "
            f"and the masks training draws with the same seed",
            "- labels −1 (movement, unscored) are ignored; Acc, MF1 and per-class F1 in %, κ as a fraction",
            "",
            "## Pooled over " + ("folds" if len(self.folds) > 1 else "the test recordings"),
            "",
            self.table(),
            "",
        ]
        if len(self.folds) > 1:
            lines += ["## Per fold, mean ± std", "", self.fold_table(), "",
                      "## Per fold accuracy (%)", "",
                      "| Scenario | " + " | ".join(f"fold {i}" for i in range(len(self.folds))) + " |",
                      "|---|" + "---:|" * len(self.folds)]
            for name in self.scenario_names:
                lines.append(f"| {name} | " + " | ".join(_pct(f.metrics[name].accuracy) if name in f.metrics
                                                        else "–" for f in self.folds) + " |")
            lines.append("")
        skipped = {n: [r for f in self.folds for r in f.skipped(n)] for n in self.scenario_names}
        skipped = {n: r for n, r in skipped.items() if r}
        if skipped:
            lines += ["## Recordings not scored under a scenario (no input left)", ""]
            lines += [f"- {n}: {', '.join(r)}" for n, r in skipped.items()] + [""]
        lines += self._calibration_lines()
        figures = [f"![{n}](confusion_{n}.png)" for n in self.scenario_names]
        if self._curve_scenarios():
            figures.insert(0, "![missing rate](missing_rate.png)")
        figures.append("![reliability](reliability.png)")
        lines += ["## Figures", "", *figures, ""]
        return "\n".join(lines)

    def _calibration_lines(self) -> list[str]:
        """The report's calibration section: ECE per scenario, calibrated and raw."""
        temps = ", ".join("not fitted (T = 1)" if t is None else f"T = {t:.3f}" for t in self.temperatures)
        lines = ["## Calibration", "",
                 f"Expected calibration error (ECE, %; {DEFAULT_BINS} equal-width bins of the top probability; "
                 "0 is perfectly calibrated) of the probabilities scoring outputs, calibrated with each "
                 f"bundle's temperature ({temps}), and of the model's raw softmax; labelled epochs only. "
                 "Reliability diagrams: `reliability.png`.", "",
                 "| Scenario | Epochs | ECE | ECE uncalibrated | Mean confidence | Acc |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name in self.scenario_names:
            c = self.calibration(name)
            lines.append(f"| {name} | {c['n_epochs']} | {_pct(c['ece'])} | {_pct(c['ece_uncalibrated'])} | "
                         f"{_pct(c['mean_confidence'])} | {_pct(c['accuracy'])} |")
        return lines + [""]

    def to_dict(self) -> dict[str, Any]:
        """The whole ``report.json`` (no per-epoch predictions)."""
        return {
            "format": REPORT_FORMAT,
            "model": self.model,
            "modalities": list(self.modalities),
            "sequence_length": self.sequence_length,
            "stride": self.stride,
            "dataset": self.dataset,
            "dataset_uri": self.dataset_uri,
            "base_seed": self.base_seed,
            "chunk_epochs": self.chunk_epochs,
            "scenarios": [s.to_dict() for s in self.scenarios],
            "pooled": {n: self.pooled(n).to_dict() for n in self.scenario_names},
            "fold_mean": {n: self.summaries[n].mean for n in self.scenario_names},
            "fold_std": {n: self.summaries[n].std for n in self.scenario_names},
            "calibration": {n: self.calibration(n) for n in self.scenario_names},
            "folds": [{
                "run": f.run,
                "temperature": f.temperature,
                "split_source": f.selection.source,
                "split_name": f.selection.split_name,
                "split_fold": f.selection.fold,
                "recordings": [{"recording_id": r.recording_id, "n_epochs": int(len(r.labels)),
                                "accuracy": {n: compute_metrics(r.labels, p).accuracy
                                             for n, p in r.predictions.items()}}
                               for r in f.recordings],
                "metrics": {n: m.to_dict() for n, m in f.metrics.items()},
            } for f in self.folds],
        }

    # -- figures and files ----------------------------------------------------------------------
    def _curve_scenarios(self) -> dict[str, list[Scenario]]:
        by_protocol: dict[str, list[Scenario]] = {}
        for s in self.scenarios:
            if s.kind == "missing":
                by_protocol.setdefault(s.protocol, []).append(s)
        return {p: sorted(v, key=lambda s: s.rate) for p, v in by_protocol.items() if len(v) >= 2}

    def plot_missing_rate(self, path: str | os.PathLike) -> Path | None:
        """Acc, MF1 and κ against the missing rate (pooled; mean ± std band with several folds)."""
        curves = self._curve_scenarios()
        if not curves:
            return None
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.4), dpi=120)
        axes = fig.subplots(1, 3)
        for ax, (key, label) in zip(axes, (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("kappa", "Cohen's κ"))):
            for protocol, scenarios in curves.items():
                rates = [s.rate for s in scenarios]
                pooled = [getattr(self.pooled(s.name), key) for s in scenarios]
                ax.plot(rates, pooled, marker="o", label=f"{protocol} (pooled)")
                if len(self.folds) > 1:
                    mean = np.array([self.summaries[s.name].mean[key] for s in scenarios])
                    std = np.array([self.summaries[s.name].std[key] for s in scenarios])
                    ax.fill_between(rates, mean - std, mean + std, alpha=0.2, label=f"{protocol} fold mean ± std")
            ax.set_xlabel("missing rate r")
            ax.set_title(label)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{self.model} on {self.dataset}: random partial missing")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
        return out

    def plot_reliability(self, path: str | os.PathLike) -> Path:
        """Reliability diagrams, one panel per scenario: accuracy against confidence per bin.

        Calibrated (the bundles' temperatures) and uncalibrated (raw softmax) points; the diagonal
        is perfect calibration, points below it are over-confident.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        names = self.scenario_names
        cols = min(4, len(names))
        rows = -(-len(names) // cols)
        fig = Figure(figsize=(3.2 * cols, 3.0 * rows), dpi=110)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, name in zip(axes, names):
            c = self.calibration(name)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            for key, label, style in (("bins_uncalibrated", "uncalibrated", "s:"), ("bins", "calibrated", "o-")):
                used = [b for b in c[key] if b["count"]]
                ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], style, ms=4,
                        label=f"{label} (ECE {_pct(c['ece' if key == 'bins' else 'ece_uncalibrated'])} %)")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{name} ({c['n_epochs']} epochs)", fontsize=9)
            ax.set_xlabel("confidence (top probability)", fontsize=8)
            ax.set_ylabel("accuracy", fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
            ax.grid(alpha=0.3)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        fig.suptitle(f"{self.model} on {self.dataset}: reliability", fontsize=10)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
        return out

    def write(self, out_uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Write ``report.md``, ``report.json`` and the figures under ``out_uri``; returns name → URI."""
        target = resolve(out_uri, storage_options)
        written: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="somnray-eval-") as tmp:
            folder = Path(tmp)
            (folder / "report.md").write_text(self.to_markdown(), encoding="utf-8")
            (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=float),
                                                encoding="utf-8")
            for name in self.scenario_names:
                plot_confusion_matrix(np.asarray(self.pooled(name).confusion), folder / f"confusion_{name}.png",
                                      title=f"{self.model}: {name}")
            self.plot_missing_rate(folder / "missing_rate.png")
            self.plot_reliability(folder / "reliability.png")
            # Figures first, the reports last: a reader who finds report.json finds the figures.
            files = sorted(folder.iterdir(), key=lambda p: (p.suffix != ".png", p.name))
            for path in files:
                loc = target.join(path.name)
                loc.atomic_write_bytes(path.read_bytes())
                written[path.name] = loc.uri
        self.written = written
        return written


# ------------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------------
def _use_ray(workers: int | None) -> bool:
    if workers is not None and workers > 1:
        return True
    if workers == 1:
        return False
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return ray.is_initialized()


def _default_workers() -> int:
    import ray

    return max(1, int(ray.available_resources().get("CPU", 1)))


@dataclass(frozen=True)
class EvaluationOptions:
    """How :func:`evaluate_run` scores and reports (every field has a default).

    Attributes
    ----------
    split : str, optional
        ``all``, ``manifest``, a split name stored with the dataset, or a split file path/URI;
        default: each run's recorded split (see the module docstring).
    fold : int
        Fold of a multi-fold ``split`` file for the first run (run ``i`` takes ``fold + i``).
    scenarios : sequence of str or Scenario, optional
        Scenario names or groups (:mod:`somnray.train.scenarios`); default: every scenario that
        makes sense for the model's modalities.
    stride : int, optional
        Window stride in epochs (default: the window length, non-overlapping).
    workers : int, optional
        Ray actors scoring recordings. Default: Ray when it is initialised (one actor per free
        CPU), else in-process; 1 forces in-process.
    batch_size : int
        Windows per forward pass.
    base_seed : int
        Base seed of the fixed per-recording masks and noise (CIMSleepNet: 2024).
    chunk_epochs : int
        Chunk length of the partial-missing protocol.
    out_uri : str, optional
        Where to write the report; default ``<first run>/evaluation/<dataset>/`` for a run URI
        (nothing is written for a model in memory without ``out_uri``).
    write : bool
        Write the report files.
    storage_options : mapping, optional
        Filesystem options of the runs, the dataset and the report.
    """

    split: str | None = None
    fold: int = 0
    scenarios: Sequence[str | Scenario] | None = None
    stride: int | None = None
    workers: int | None = None
    batch_size: int = 16
    base_seed: int = DEFAULT_BASE_SEED
    chunk_epochs: int = DEFAULT_CHUNK_EPOCHS
    out_uri: str | None = None
    write: bool = True
    storage_options: Mapping[str, Any] | None = None


def _check_options(options: EvaluationOptions) -> None:
    if options.stride is not None and options.stride < 1:
        raise ConfigError("--stride", [f"must be >= 1, got {options.stride}"])
    if options.batch_size < 1:
        raise ConfigError("--batch-size", [f"must be >= 1, got {options.batch_size}"])


def _common_modalities(runs: Sequence[_LoadedRun]) -> tuple[str, ...]:
    """The modalities every fold's model consumes (folds must be the same model)."""
    modalities = tuple(runs[0].scorer.info.modalities)
    for run in runs[1:]:
        if tuple(run.scorer.info.modalities) != modalities:
            raise ConfigError(run.label, [f"this fold's model consumes {list(run.scorer.info.modalities)}, "
                                          f"the first fold's {list(modalities)}; folds must be the same model"])
    return modalities


def _evaluate_fold(run: _LoadedRun, position: int, spec: EvalSpec, index_of: Mapping[str, int],
                   options: EvaluationOptions) -> FoldResult:
    """Score the ``position``-th run on its test recordings; its per-scenario metrics."""
    fold = options.fold + position if options.split else 0
    selection = select_test_recordings(spec.dataset_uri, run.scorer.info, options.split, fold, spec.storage_options)
    items = [(rid, index_of[rid]) for rid in selection.recording_ids]
    log.info("scoring %d recording(s) of %s under %d scenario(s)%s", len(items), run.label,
             len(spec.scenarios), " on Ray" if _use_ray(options.workers) else "")
    scores = sorted(_score_recordings(run.scorer, spec, items, options.workers), key=lambda r: r.recording_id)
    metrics = {}
    for s in spec.scenarios:
        got = [r for r in scores if s.name in r.predictions]
        labels = np.concatenate([r.labels for r in got]) if got else np.zeros(0, np.int8)
        preds = np.concatenate([r.predictions[s.name] for r in got]) if got else np.zeros(0, np.int8)
        metrics[s.name] = compute_metrics(labels, preds)
    return FoldResult(run.label, selection, tuple(scores), metrics, run.scorer.calibration.temperature)


def evaluate_run(runs: Sequence[EvaluationRun], data_uri: str,
                 options: EvaluationOptions | None = None) -> EvaluationReport:
    """Score one or more trained runs on a prepared dataset under missing-modality scenarios.

    Parameters
    ----------
    runs : sequence of EvaluationRun
        The runs to evaluate; several are folds, each scored on its own split's test part and
        pooled.
    data_uri : str
        The prepared dataset (local path or URI).
    options : EvaluationOptions, optional
        Split, scenarios, stride, workers, where to write (defaults: see the class).

    Returns
    -------
    EvaluationReport
        With ``written`` naming the files written.

    Raises
    ------
    ConfigError
        Bad run URI (no bundle), not a prepared dataset, bad split, scenarios or stride, or folds
        whose models consume different modalities.
    """
    options = options or EvaluationOptions()
    runs = list(runs)
    if not runs:
        raise ConfigError("evaluate", ["no run to evaluate"])
    _check_options(options)
    data = resolve(data_uri, options.storage_options)
    storage = dict(data.storage_options)
    name = dataset_name(data.uri, storage)
    # A recording's index among ALL prepared recordings numbers it the same in every fold's report.
    index_of = {rid: i for i, rid in enumerate(sorted(e.recording_id for e in
                                                      PreparedDataset.at(data.uri, storage).entries()))}

    loaded = [_load_run(r, options.batch_size, options.storage_options) for r in runs]
    first = loaded[0]
    modalities = _common_modalities(loaded)
    chosen = resolve_scenarios(options.scenarios, modalities)
    first.scorer.check_stride(options.stride, "--stride")
    spec = EvalSpec(dataset_uri=data.uri, modalities=modalities, stride=options.stride, scenarios=chosen,
                    columns=_existing_columns(data.uri, modalities, storage), base_seed=options.base_seed,
                    chunk_epochs=options.chunk_epochs, storage_options=storage)

    folds = [_evaluate_fold(run, i, spec, index_of, options) for i, run in enumerate(loaded)]
    summaries = {s.name: aggregate_folds([f.metrics[s.name] for f in folds]) for s in chosen}
    report = EvaluationReport(model=first.scorer.info.model, modalities=modalities,
                              sequence_length=first.scorer.length, stride=options.stride or first.scorer.length,
                              dataset_uri=data.uri, dataset=name, scenarios=chosen, folds=tuple(folds),
                              summaries=summaries, base_seed=options.base_seed, chunk_epochs=options.chunk_epochs)
    target = options.out_uri or (resolve(first.uri, options.storage_options).join(EVALUATION_DIR, name).uri
                                 if first.uri and not is_registry_uri(first.uri) else None)
    if options.write and target is not None:
        report.write(target, options.storage_options)
    if options.write:
        _update_cards(loaded, report, options.storage_options)
    return report


def _update_cards(runs: Sequence[_LoadedRun], report: EvaluationReport,
                  storage_options: Mapping[str, Any] | None) -> None:
    """Add the report (pooled and per fold) to the model card of every evaluated bundle."""
    from .card import update_card_evaluation

    doc = report.to_dict()
    for run in runs:
        if run.scorer.uri is None:
            continue
        try:
            update_card_evaluation(resolve(run.scorer.uri, storage_options), doc)
        except OSError as exc:  # a read-only bundle (a shared or registered copy) keeps its card
            log.warning("cannot add the evaluation to the model card of %s: %s", run.scorer.uri, exc)


__all__ = ["EVALUATION_DEVICE", "EVALUATION_DIR", "EVALUATION_PRECISION", "EvalSelection", "EvalSpec",
           "EvaluateRecording", "EvaluationOptions", "EvaluationReport", "EvaluationRun", "FoldResult",
           "RecordingScores", "dataset_name", "evaluate_run", "recording_inputs", "scenario_probabilities",
           "score_scenarios", "select_test_recordings"]
