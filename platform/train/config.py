"""The typed experiment config: YAML in, a frozen, validated :class:`ExperimentConfig` out.

A config file has these top-level keys (every section but ``data``, ``model`` and ``storage`` has
defaults)::

    description: "what this recipe is for"
    seed: 28
    data:        {dataset: s3://bucket/prepared/shhs-<hash>, split: {...}, sequence_length: 21, ...}
    model:       {name: coresleep, overrides: {...}}
    loss_weights: {align: 0.1}
    missing:     {kind: partial_chunks, rate: 0.5, curriculum: {kind: linear, ...}}
    optim:       {optimizer: adam, lr: 1.0e-4, batch_size: 16, max_steps: 100000, ...}
    deepspeed:   {zero_stage: 0, precision: auto}
    scaling:     {num_workers: 1, use_gpu: auto}
    storage:     {uri: s3://bucket/runs, name: coresleep-shhs}
    logging:     {tensorboard: true, mlflow: {tracking_uri: ..., experiment: ...}}
    calibration: {flag_error_rate: 0.5, min_epochs: 100, bins: 15}
    phases:      # optional: a recipe, run in order
      - {name: pretrain, model: {overrides: {phase: pretrain}}}
      - {name: finetune, init_from: previous, freeze: [backbones], model: {overrides: {phase: finetune}}}

A **recipe** is the ordered list of ``phases``. Each phase may override any section except
``storage`` (one run folder holds every phase); its overrides are deep-merged into the top-level
sections, and every phase is then validated as a complete :class:`PhaseConfig`. Without
``phases`` the file is one phase named ``train``.

:func:`load_experiment` applies ``--set key.sub=value`` overrides to the raw YAML, validates
everything and raises one :class:`~somnray.core.errors.ConfigError` listing every problem as a
``field.path: problem`` line, before any Ray or cluster work. The model section is checked
against the model registry (name, constructor overrides and phase, loss-weight names, frozen
parameter groups) on the driver, from what the model declares about itself.
:func:`dump_experiment` writes the resolved config back to YAML (every phase complete), which
:func:`load_experiment` reads back to an equal object.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from somnray.core.config import did_you_mean, location_text, read_yaml_file, validation_errors
from somnray.core.errors import ConfigError
from somnray.scoring.calibration import DEFAULT_BINS, DEFAULT_FLAG_ERROR_RATE, DEFAULT_MIN_EPOCHS

#: Validation metrics early stopping and model selection can monitor.
MONITOR_METRICS = ("loss", "accuracy", "macro_f1", "kappa")

Modality = Literal["eeg", "eog", "emg", "eeg2", "ecg"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt option silently ignored is a wrong experiment later.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _distinct(values: Sequence[Any], what: str) -> None:
    dupes = sorted({v for v in values if list(values).count(v) > 1})
    if dupes:
        raise ValueError(f"{what} must be distinct, got duplicates {dupes}")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
class SplitConfig(_Strict):
    """Which subjects train, validate and test (subject-wise; see ``somnray.data.splits``).

    Either ``name``: ``manifest`` (the manifest's fixed ``split`` column) or the name of a split
    file stored with the dataset (``<dataset>/splits/<name>.json``, fold ``fold`` of it); or a
    split generated from the prepared recordings: ``kind: kfold`` with ``n_folds`` and ``fold``,
    or ``kind: holdout`` with ``test_fraction`` (the SHHS 70:30 protocol). ``n_val_subjects``
    subjects of the training side become the validation set (default: the data package's, 2 for
    k-fold and 100 for holdout); ``seed`` fixes the subject permutation.
    """

    name: str | None = None
    kind: Literal["kfold", "holdout"] | None = None
    fold: int = Field(0, ge=0)
    n_folds: int | None = Field(None, ge=2)
    test_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    n_val_subjects: int | None = Field(None, ge=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_way(self) -> "SplitConfig":
        if (self.name is None) == (self.kind is None):
            raise ValueError("give exactly one of 'name' (a named split) or 'kind' (kfold | holdout)")
        if self.kind == "kfold":
            if self.n_folds is None:
                raise ValueError("kind 'kfold' needs n_folds (e.g. 20 for Sleep-EDF-20)")
            if self.fold >= self.n_folds:
                raise ValueError(f"fold must be below n_folds={self.n_folds}, got {self.fold}")
        if self.kind == "holdout":
            if self.test_fraction is None:
                raise ValueError("kind 'holdout' needs test_fraction (e.g. 0.3)")
            if self.fold != 0:
                raise ValueError(f"kind 'holdout' has a single fold 0, got fold {self.fold}")
        return self


class DataConfig(_Strict):
    """Which prepared dataset, which split, and how windows are cut from it.

    Parameters
    ----------
    dataset : str
        URI of a prepared dataset (local path, ``file://``, ``s3://``...).
    split : SplitConfig
        Subject-wise split; a plain string is shorthand for ``{name: <string>}``.
    modalities : tuple of str, optional
        Modalities to read; default: every modality the model consumes. Naming fewer trains with
        the others absent everywhere; naming one the model does not consume is an error.
    sequence_length : int
        Epochs per window (L): 21 for CoRe-Sleep and MC²SleepNet, 25 for CIMSleepNet.
    eval_stride : int, optional
        Step between evaluation windows in epochs; default L (non-overlapping). With a stride
        below L every epoch is scored several times and the probabilities are averaged.
    shuffle_buffer : int
        Windows held in the local shuffle buffer while training (0: no shuffling beyond the
        per-epoch random window offsets).
    prefetch_batches : int
        Batches each worker prefetches from Ray Data.
    """

    dataset: str = Field(min_length=1)
    split: SplitConfig
    modalities: tuple[Modality, ...] | None = None
    sequence_length: int = Field(21, ge=1)
    eval_stride: int | None = Field(None, ge=1)
    shuffle_buffer: int = Field(1024, ge=0)
    prefetch_batches: int = Field(2, ge=0)

    @field_validator("split", mode="before")
    @classmethod
    def _split_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("modalities")
    @classmethod
    def _modalities_ok(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("name at least one modality, or leave the key out to use the model's")
            _distinct(value, "modalities")
        return value

    @model_validator(mode="after")
    def _stride_fits(self) -> "DataConfig":
        if self.eval_stride is not None and self.eval_stride > self.sequence_length:
            raise ValueError(f"eval_stride ({self.eval_stride}) must not exceed sequence_length "
                             f"({self.sequence_length}), or epochs would be skipped")
        return self

    @property
    def stride(self) -> int:
        """The evaluation window stride in epochs (``eval_stride`` or ``sequence_length``)."""
        return self.eval_stride or self.sequence_length


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
class ModelConfig(_Strict):
    """A registered model and keyword overrides of its defaults (``create_model(name, **overrides)``)."""

    name: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        from somnray.models import is_model, list_models

        if not is_model(value):
            known = list_models()
            hint = did_you_mean(value, known)
            raise ValueError(f"unknown model {value!r}{hint} (registered: {', '.join(known) or 'none'})")
        return value


# ------------------------------------------------------------------------------------------------
# missing-modality simulation
# ------------------------------------------------------------------------------------------------
class CurriculumConfig(_Strict):
    """How the simulated missing rate changes with the optimizer step.

    ``constant``: ``end_rate`` throughout. ``linear`` / ``cosine``: from ``start_rate`` to
    ``end_rate`` over ``ramp_steps`` steps, then ``end_rate``. ``step``: ``start_rate`` until the
    first of ``milestones``, then equal increments reaching ``end_rate`` at the last milestone.
    A rate left out is the section's ``rate``.
    """

    kind: Literal["constant", "linear", "step", "cosine"] = "constant"
    start_rate: float | None = Field(None, ge=0.0, le=1.0)
    end_rate: float | None = Field(None, ge=0.0, le=1.0)
    ramp_steps: int = Field(0, ge=0)
    milestones: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> "CurriculumConfig":
        if self.kind in ("linear", "cosine") and self.ramp_steps < 1:
            raise ValueError(f"a {self.kind} curriculum needs ramp_steps >= 1, got {self.ramp_steps}")
        if self.kind == "step":
            if not self.milestones:
                raise ValueError("a step curriculum needs milestones (optimizer steps), e.g. [1000, 2000]")
            if any(m < 0 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
                raise ValueError(f"milestones must be distinct non-negative steps in increasing order, "
                                 f"got {list(self.milestones)}")
        elif self.milestones:
            raise ValueError(f"milestones only apply to kind 'step', not {self.kind!r}")
        return self


class IncompleteTrainingConfig(_Strict):
    """Training on modality-incomplete recordings (CoRe-Sleep Fig. 4's incomplete-training experiment).

    Parameters
    ----------
    multimodal : int
        Training recordings that keep every modality (the paper: 100).
    unimodal : int, optional
        Training recordings that keep one modality only; default all the others. Recordings
        beyond ``multimodal + unimodal`` are left out of training.
    keep : tuple of str, optional
        Modalities a unimodal recording may keep (one drawn per recording); default the model's.
    """

    multimodal: int = Field(ge=0)
    unimodal: int | None = Field(None, ge=0)
    keep: tuple[Modality, ...] | None = None


class MissingConfig(_Strict):
    """Missing-modality simulation applied to training batches (see :mod:`somnray.train.missing`).

    Parameters
    ----------
    kind : str
        ``none``; ``partial_chunks`` (CIMSleepNet protocol: the rate over modality slots, removed
        in chunks of ``chunk_epochs`` epochs); ``partial_iid`` (each slot independently);
        ``complete`` (with probability ``rate`` a recording loses one whole modality);
        ``noisy`` (slots corrupted by noise or a flat line while the mask stays on).
    rate : float
        Target rate (the curriculum's default end point).
    chunk_epochs : int
        Chunk length of ``partial_chunks`` and ``noisy``.
    modalities : tuple of str, optional
        Modalities the simulation may touch; default all of the batch's.
    noise_sigma : float, optional
        Standard deviation of additive Gaussian noise (signals are z-scored per recording, so
        this is relative to the recording's own scale).
    noise_snr_db : float, optional
        Alternatively, noise at this signal-to-noise ratio per epoch, in dB.
    flatline_prob : float
        Probability that a corrupted slot becomes a flat line (detachment) instead of noise.
    seed : int
        Seed of the masks, drawn once per recording from this seed and the recording id before
        windows are cut (:func:`somnray.train.missing.recording_drop_keys`, the draw evaluation's
        scenarios make with the same default seed 2024), so every window of a recording, in every
        pass, sees the same mask at a given rate.
    curriculum : CurriculumConfig
        How the rate changes with the step (the masks stay nested: a higher rate adds slots).
    validation : {"complete", "masked"}
        What validation (model selection, early stopping) sees: the recordings as they are, or
        their masks at the curriculum's end rate (CIMSleepNet selects on masked validation data).
    incomplete : IncompleteTrainingConfig, optional
        Which training recordings keep every modality and which keep one (drawn from ``seed``);
        applies whatever ``kind`` is.
    """

    kind: Literal["none", "partial_chunks", "partial_iid", "complete", "noisy"] = "none"
    rate: float = Field(0.0, ge=0.0, le=1.0)
    chunk_epochs: int = Field(25, ge=1)
    modalities: tuple[Modality, ...] | None = None
    noise_sigma: float | None = Field(None, gt=0.0)
    noise_snr_db: float | None = None
    flatline_prob: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = Field(2024, ge=0)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    validation: Literal["complete", "masked"] = "complete"
    incomplete: IncompleteTrainingConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "MissingConfig":
        if self.modalities is not None:
            if not self.modalities:
                raise ValueError("modalities must name at least one modality, or be left out (all)")
            _distinct(self.modalities, "modalities")
        if self.noise_sigma is not None and self.noise_snr_db is not None:
            raise ValueError("give noise_sigma or noise_snr_db, not both")
        if self.kind != "noisy" and (self.noise_sigma is not None or self.noise_snr_db is not None
                                     or self.flatline_prob > 0):
            raise ValueError(f"noise_sigma, noise_snr_db and flatline_prob only apply to kind 'noisy', "
                             f"not {self.kind!r}")
        if self.kind == "none" and (self.rate > 0 or self.curriculum.kind != "constant"):
            raise ValueError("kind 'none' simulates nothing: set a kind, or drop rate and curriculum")
        if self.kind == "none" and self.validation == "masked":
            raise ValueError("validation 'masked' needs a kind: kind 'none' draws no mask")
        return self


# ------------------------------------------------------------------------------------------------
# optimisation, DeepSpeed, scaling, storage, logging
# ------------------------------------------------------------------------------------------------
class OptimConfig(_Strict):
    """Optimizer, learning-rate schedule, batch sizes, step budget, validation and early stopping.

    ``batch_size`` is the global number of sequences per optimizer step (over all workers and
    accumulation micro-steps). ``patience`` counts validation checks without improvement of
    ``monitor`` (None: no early stopping). ``step_milestones`` / ``step_gamma`` drive the ``step``
    schedule (CIMSleepNet's lr drop after epoch 10 is one milestone with gamma 0.1).
    ``group_lr`` gives named parameter groups of the model (``model.parameter_groups()``) their own
    learning rate (the schedule scales every group alike); a parameter in several named groups
    takes the smallest group's rate, and every other trainable parameter takes ``lr``.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    amsgrad: bool = False
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    schedule: Literal["constant", "warmup_cosine", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)
    step_milestones: tuple[int, ...] = ()
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    group_lr: dict[str, float] = Field(default_factory=dict)
    batch_size: int = Field(16, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    clip_norm: float | None = Field(None, gt=0.0)
    max_steps: int = Field(1000, ge=1)
    validate_every: int = Field(100, ge=1)
    patience: int | None = Field(None, ge=1)
    monitor: Literal["loss", "accuracy", "macro_f1", "kappa"] = "macro_f1"
    mode: Literal["min", "max"] | None = None

    @field_validator("betas")
    @classmethod
    def _betas_ok(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"betas must lie in [0, 1), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "OptimConfig":
        problems = []
        if self.optimizer != "sgd" and self.momentum:
            problems.append(f"momentum only applies to optimizer 'sgd', not {self.optimizer!r}")
        if self.optimizer == "sgd" and self.amsgrad:
            problems.append("amsgrad only applies to adam / adamw")
        if self.schedule == "warmup_cosine":
            if self.warmup_steps >= self.max_steps:
                problems.append(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
            if self.min_lr > self.lr:
                problems.append(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.schedule == "step":
            ms = list(self.step_milestones)
            if not ms or ms != sorted(set(ms)) or ms[0] < 1:
                problems.append(f"schedule 'step' needs step_milestones: distinct increasing steps >= 1, got {ms}")
        elif self.step_milestones:
            problems.append(f"step_milestones only apply to schedule 'step', not {self.schedule!r}")
        if self.schedule == "warmup_cosine":
            low = [g for g, lr in self.group_lr.items() if self.min_lr > lr]
            if low:
                problems.append(f"min_lr ({self.min_lr}) must not exceed the group_lr of {low}")
        if any(lr <= 0 for lr in self.group_lr.values()):
            problems.append(f"group_lr values must be > 0, got {self.group_lr}")
        if self.batch_size % self.grad_accum_steps:
            problems.append(f"batch_size ({self.batch_size}) must be a multiple of grad_accum_steps "
                            f"({self.grad_accum_steps})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def monitor_mode(self) -> Literal["min", "max"]:
        """Whether a lower or a higher ``monitor`` value is better (``mode`` or the metric's own)."""
        return self.mode or ("min" if self.monitor == "loss" else "max")


class DeepSpeedConfig(_Strict):
    """ZeRO stage and numeric precision (``auto``: bf16 on GPUs that support it, else fp16; fp32 on CPU)."""

    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class ScalingConfig(_Strict):
    """How many Ray Train workers, on which devices, and how often a failed run restarts."""

    num_workers: int = Field(1, ge=1)
    use_gpu: Literal["auto"] | bool = "auto"
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)
    #: Worker-group restarts from the latest checkpoint after a failure (-1: unlimited).
    max_failures: int = Field(2, ge=-1)
    #: Ray placement-group strategy of the worker group: ``PACK`` fills a node first (fast
    #: intra-node collectives), ``STRICT_SPREAD`` puts one worker on each node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _gpu_words(cls, value: Any) -> Any:
        # YAML gives booleans; the CLI's --set may give the words.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value


class StorageConfig(_Strict):
    """Where the run's checkpoints, metrics and config copy go: ``<uri>/<name>``."""

    uri: str = Field(min_length=1)
    name: str

    @field_validator("uri")
    @classmethod
    def _uri_ok(cls, value: str) -> str:
        from somnray.core.storage import resolve

        try:
            resolve(value)
        except ConfigError as exc:
            raise ValueError("; ".join(exc.errors) or str(exc)) from None
        return value

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("run name must be letters, digits, '_', '-' or '.', starting with a letter "
                             "or digit (it becomes a folder name)")
        return value


class MlflowConfig(_Strict):
    """MLflow tracking target (``tracking_uri`` None: MLflow's own default / environment)."""

    tracking_uri: str | None = None
    experiment: str = "somnray"


class LoggingConfig(_Strict):
    """Optional metric sinks besides the Ray Train reports."""

    tensorboard: bool = False
    mlflow: MlflowConfig | None = None


class CalibrationConfig(_Strict):
    """How the exported bundle is calibrated on the phase's validation split.

    At export a temperature is fitted on the validation epochs (:mod:`somnray.scoring.calibration`):
    ``flag_error_rate`` is the target of the ``low_confidence`` rule (flagged validation epochs
    are wrong at least this often), ``min_epochs`` the labelled validation epochs below which no
    temperature is fitted, ``bins`` the ECE's and reliability diagram's bins; ``enabled: false``
    exports without calibration.
    """

    enabled: bool = True
    flag_error_rate: float = Field(DEFAULT_FLAG_ERROR_RATE, gt=0.0, lt=1.0)
    min_epochs: int = Field(DEFAULT_MIN_EPOCHS, ge=1)
    bins: int = Field(DEFAULT_BINS, ge=2)


# ------------------------------------------------------------------------------------------------
# phases and the experiment
# ------------------------------------------------------------------------------------------------
#: Sections a phase may override (``storage`` is one per run).
PHASE_SECTIONS = ("data", "model", "loss_weights", "missing", "optim", "deepspeed", "scaling",
                  "seed", "logging", "calibration")


class PhaseConfig(_Strict):
    """One complete training phase: every section resolved.

    ``init_from: previous`` initialises the model from the previous phase's best checkpoint;
    ``init_from: <URI>`` from another trained model: a training run (its ``model/`` bundle), a
    bundle folder, local or remote, or a registered model version, ``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS`` (:mod:`somnray.train.finetune`). ``init_statistics`` says what
    happens to what the model fits on the training split (spectrogram normalisation, class
    weights) when it starts from other weights: ``keep`` the source's, or ``refit`` them on this
    phase's training split. ``freeze`` names parameter groups (``model.parameter_groups()``)
    kept fixed, checked against the model when the phase starts.
    """

    name: str
    init_from: str | None = Field(None, min_length=1)
    init_statistics: Literal["keep", "refit"] = "keep"
    freeze: tuple[str, ...] = ()
    data: DataConfig
    model: ModelConfig
    loss_weights: dict[str, float] = Field(default_factory=dict)
    missing: MissingConfig = Field(default_factory=MissingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    seed: int = Field(0, ge=0)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("phase name must be letters, digits, '_', '-' or '.' (it becomes a folder name)")
        return value

    @model_validator(mode="after")
    def _batch_divides(self) -> "PhaseConfig":
        per_step = self.scaling.num_workers * self.optim.grad_accum_steps
        if self.optim.batch_size % per_step:
            raise ValueError(f"optim.batch_size ({self.optim.batch_size}) must be a multiple of "
                             f"scaling.num_workers × optim.grad_accum_steps ({per_step}) so every "
                             f"worker gets the same micro-batch")
        return self

    @model_validator(mode="after")
    def _zero3_single_worker(self) -> "PhaseConfig":
        # ZeRO-3 gathers each layer's parameters by collectives issued as modules run; a batch
        # missing a modality skips that modality's modules, so ranks would issue different
        # collectives (measured: a gloo size mismatch that aborts the workers). Stages 1-2 are
        # made safe by the training loop; these models are small enough not to need stage 3.
        if self.deepspeed.zero_stage == 3 and self.scaling.num_workers > 1:
            raise ValueError("deepspeed.zero_stage 3 cannot train the missing-modality models on several "
                             "workers: a batch without a modality skips modules, so the workers' parameter "
                             "gathers diverge; use zero_stage 0, 1 or 2 (2 also partitions gradients)")
        return self

    def modalities(self, model_modalities: Sequence[str]) -> tuple[str, ...]:
        """The modalities read from the dataset (``data.modalities`` or the model's)."""
        return tuple(self.data.modalities or model_modalities)


class ExperimentConfig(_Strict):
    """A validated experiment: where it is stored and its ordered, complete phases."""

    description: str = ""
    storage: StorageConfig
    phases: tuple[PhaseConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _phase_order(self) -> "ExperimentConfig":
        names = [p.name for p in self.phases]
        _distinct(names, "phase names")
        if self.phases[0].init_from == "previous":
            raise ValueError(f"the first phase ({names[0]!r}) cannot use init_from: previous")
        return self

    def phase(self, name: str) -> PhaseConfig:
        """The phase called ``name``."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(f"no phase {name!r}; phases are {[p.name for p in self.phases]}")

    @property
    def run_uri(self) -> str:
        """URI of the run folder, ``<storage.uri>/<storage.name>``."""
        from somnray.core.storage import join

        return join(self.storage.uri, self.storage.name)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _errors(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    return validation_errors(exc, prefix=prefix, unknown_key="unknown key (check the spelling; the keys "
                                                               "are documented in somnray.train.config)")


def _deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings recursively, anything else replaced."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _has_path(tree: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(tree, Mapping) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and isinstance(part, int) and 0 <= part < len(tree):
            tree = tree[part]
        else:
            return False
    return True


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Apply ``key.sub=value`` assignments to a raw config mapping.

    Values are parsed as YAML (``optim.lr=3e-4`` gives a float, ``data.modalities=[eeg]`` a list,
    ``phases.1.optim.lr=1e-5`` indexes into the phase list). Missing intermediate mappings are
    created.

    Returns
    -------
    tuple
        The new mapping (``raw`` is not modified) and one error line per malformed assignment.
    """
    out = copy.deepcopy(raw)
    errors = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            errors.append(f"--set {item!r}: expected key.sub=value")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            errors.append(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})")
            continue
        node: Any = out
        parts = key.split(".")
        try:
            for part in parts[:-1]:
                if isinstance(node, list):
                    node = node[int(part)]
                else:
                    node = node.setdefault(part, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            elif isinstance(node, dict):
                node[parts[-1]] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError, AttributeError):
            errors.append(f"--set {item!r}: {key} does not lead to a mapping or list entry in the config")
    return out, errors


@dataclass(frozen=True)
class ModelFacts:
    """What the config validation needs to know about a model (built once on the driver).

    Everything comes from the model's own declarations (``somnray.models.SleepStagingModel``), so
    a recipe for any registered architecture is checked the same way.
    """

    modalities: tuple[str, ...]
    loss_weight_names: tuple[str, ...]
    parameter_groups: tuple[str, ...]
    #: Values of the model's ``phase=`` keyword (``model.overrides.phase``); empty: no phases.
    phases: tuple[str, ...] = ()


def _freeze_value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


@functools.lru_cache(maxsize=32)
def _model_facts_cached(name: str, overrides_json: str) -> ModelFacts:
    import torch

    from somnray.models import create_model

    overrides = json.loads(overrides_json)
    # The meta device builds the module structure without allocating or initialising weights,
    # so checking a full-size model costs milliseconds.
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return ModelFacts(tuple(model.modalities), tuple(model.default_loss_weights),
                      tuple(model.parameter_groups()), tuple(model.phases))


def model_facts(name: str, overrides: Mapping[str, Any]) -> ModelFacts:
    """Build ``create_model(name, **overrides)`` without weights and report its interface.

    Raises
    ------
    TypeError, ValueError
        Whatever the model builder raises for bad overrides.
    """
    return _model_facts_cached(name, _freeze_value(dict(overrides)))


def _check_phase_override(name: str, overrides: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """``model.overrides.phase`` against the phases the model declares (built without it)."""
    others = {k: v for k, v in overrides.items() if k != "phase"}
    try:
        phases = model_facts(name, others).phases
    except (TypeError, ValueError):
        return []  # the full overrides are rejected too, and reported with the builder's message
    phase = overrides["phase"]
    where = ("model", "overrides", "phase")
    if not phases:
        return [(where, f"{name} has no training phases; remove model.overrides.phase")]
    if phase not in phases:
        hint = did_you_mean(str(phase), phases, n=1)
        return [(where, f"unknown phase {phase!r} for {name}{hint} (its phases: {', '.join(phases)})")]
    return []


def _check_against_model(phase_raw: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """Registry checks on a raw phase: constructor overrides and the model's phase, loss-weight
    names, modalities, frozen parameter groups.

    They run on the raw mapping, whatever else is wrong with the phase, so one load reports
    them together with every structural problem.
    """
    try:
        model = ModelConfig.model_validate(phase_raw.get("model"))
    except ValidationError:
        return []  # reported by the phase validation itself
    if "phase" in model.overrides:
        problems = _check_phase_override(model.name, model.overrides)
        if problems:
            return problems
    try:
        facts = model_facts(model.name, model.overrides)
    except (TypeError, ValueError) as exc:
        return [(("model", "overrides"), f"create_model({model.name!r}) rejected them: {exc}")]
    problems = []
    freeze = phase_raw.get("freeze")
    if isinstance(freeze, list):
        unknown = [str(g) for g in freeze if g not in facts.parameter_groups]
        if unknown:
            hints = [repr(g) + did_you_mean(g, facts.parameter_groups, n=1) for g in unknown]
            problems.append((("freeze",), f"unknown parameter groups {', '.join(hints)}; "
                                          f"{model.name} has {sorted(facts.parameter_groups)}"))
    optim = phase_raw.get("optim")
    group_lr = optim.get("group_lr") if isinstance(optim, Mapping) else None
    if isinstance(group_lr, Mapping):
        unknown = [str(g) for g in group_lr if g not in facts.parameter_groups]
        if unknown:
            hints = [repr(g) + did_you_mean(g, facts.parameter_groups, n=1) for g in unknown]
            problems.append((("optim", "group_lr"), f"unknown parameter groups {', '.join(hints)}; "
                                                    f"{model.name} has {sorted(facts.parameter_groups)}"))
        frozen = [str(g) for g in group_lr if isinstance(freeze, list) and g in freeze]
        if frozen:
            problems.append((("optim", "group_lr"), f"{frozen} are frozen in this phase: a learning rate "
                                                    f"for them would have no effect"))
    weights = phase_raw.get("loss_weights")
    if isinstance(weights, Mapping):
        unknown = sorted(str(k) for k in set(weights) - set(facts.loss_weight_names))
        if unknown:
            hints = []
            for name in unknown:
                hints.append(repr(name) + did_you_mean(name, facts.loss_weight_names, n=1))
            problems.append((("loss_weights",), f"unknown loss weights {', '.join(hints)}; "
                                                f"{model.name} has {sorted(facts.loss_weight_names)}"))
    data = phase_raw.get("data")
    read = list(facts.modalities)
    if isinstance(data, Mapping) and isinstance(data.get("modalities"), list):
        extra = [m for m in data["modalities"] if m not in facts.modalities]
        if extra:
            problems.append((("data", "modalities"), f"{extra} not consumed by {model.name}, "
                                                     f"which uses {list(facts.modalities)}"))
        read = [m for m in data["modalities"] if m in facts.modalities]
    missing = phase_raw.get("missing")
    if isinstance(missing, Mapping) and isinstance(missing.get("modalities"), list):
        extra = [m for m in missing["modalities"] if m not in read]
        if extra:
            problems.append((("missing", "modalities"), f"{extra} are not among the modalities read ({read})"))
    return problems


def _resolve_phases(raw: Mapping[str, Any]) -> tuple[list[tuple[dict, dict]], list[str]]:
    """[(resolved phase mapping, the phase's own overrides)], plus structural errors."""
    base = {k: raw[k] for k in PHASE_SECTIONS if k in raw}
    phases = raw.get("phases")
    if phases is None:
        return [({"name": "train", **copy.deepcopy(base)}, {})], []
    if not isinstance(phases, list) or not phases:
        return [], [f"phases: expected a non-empty list of phase mappings, got {phases!r}"]
    out, errors = [], []
    for i, own in enumerate(phases):
        if not isinstance(own, Mapping):
            errors.append(f"phases[{i}]: expected a mapping, got {type(own).__name__}")
            continue
        resolved = _deep_merge(base, {k: v for k, v in own.items() if k in PHASE_SECTIONS})
        resolved.update({k: copy.deepcopy(v) for k, v in own.items() if k not in PHASE_SECTIONS})
        resolved.setdefault("name", f"phase{i}")
        out.append((resolved, dict(own)))
    return out, errors


def validate_experiment(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a raw config mapping (after overrides); see :func:`load_experiment`.

    Raises
    ------
    ConfigError
        Listing every problem found, each as ``field.path: problem``.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(source, [f"expected a mapping of config sections, got {type(raw).__name__}"])
    allowed = set(PHASE_SECTIONS) | {"description", "storage", "phases"}
    errors: list[str] = [f"{k}: unknown key (sections are {sorted(allowed)})"
                         for k in raw if k not in allowed]
    resolved, structural = _resolve_phases(raw)
    errors += structural
    single = raw.get("phases") is None

    phases: list[PhaseConfig] = []
    located: list[tuple[tuple, str]] = []
    for i, (phase_raw, own) in enumerate(resolved):
        # A problem in a value the phase inherited from the top level is reported once, at its
        # top-level path; one the phase set itself is reported under phases[i].
        def place(loc: tuple, i: int = i, own: Mapping = own) -> tuple:
            if single or not (_has_path(own, loc) or (loc and loc[0] not in PHASE_SECTIONS)):
                return loc
            return ("phases", i) + loc

        try:
            phases.append(PhaseConfig.model_validate(phase_raw))
        except ValidationError as exc:
            located += [(place(loc), msg) for loc, msg in _errors(exc)]
        located += [(place(loc), msg) for loc, msg in _check_against_model(phase_raw)]
        if i == 0 and phase_raw.get("init_from") == "previous" and not single:
            located.append((("phases", 0, "init_from"), "the first phase has no previous phase to start from"))
    names = [p.get("name") for p, _ in resolved]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        located.append((("phases",), f"phase names must be distinct, got duplicates {dupes}"))

    storage = None
    try:
        storage = StorageConfig.model_validate(raw.get("storage", {}))
    except ValidationError as exc:
        located += _errors(exc, prefix=("storage",))

    by_loc: dict[str, list[str]] = {}
    for loc, msg in located:
        messages = by_loc.setdefault(location_text(loc), [])
        if msg not in messages:
            messages.append(msg)
    # A union field (use_gpu: 'auto' or a boolean) fails once per branch: one line says it all.
    errors += [f"{where}: {' or '.join(msgs) if len(msgs) > 1 and all(m.startswith('Input should') for m in msgs) else '; '.join(msgs)}"
               for where, msgs in by_loc.items()]
    if not errors:
        try:
            return ExperimentConfig(description=str(raw.get("description", "")), storage=storage,
                                    phases=tuple(phases))
        except ValidationError as exc:
            errors = [f"{location_text(loc)}: {msg}" for loc, msg in _errors(exc)]
    raise ConfigError(source, errors)


def load_experiment(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load, override and validate an experiment config file.

    Parameters
    ----------
    path : str or path-like
        Local YAML file.
    overrides : sequence of str
        ``key.sub=value`` assignments (the CLI's ``--set``), applied before validation.

    Returns
    -------
    ExperimentConfig
        Frozen and fully validated, including the model registry checks.

    Raises
    ------
    ConfigError
        Naming ``path`` and listing every problem at once.
    """
    source, raw = read_yaml_file(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping of config sections, got {type(raw).__name__}"])
    raw, set_errors = apply_overrides(raw, overrides)
    try:
        cfg = validate_experiment(raw, source)
    except ConfigError as exc:
        raise ConfigError(source, set_errors + exc.errors) from None
    if set_errors:
        raise ConfigError(source, set_errors)
    return cfg


def experiment_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain data (every phase complete), as :func:`dump_experiment` writes it."""
    data = cfg.model_dump(mode="json")
    return {"description": data["description"], "storage": data["storage"], "phases": data["phases"]}


def dump_experiment(cfg: ExperimentConfig, uri: str | None = None) -> str:
    """YAML text of the resolved config; written to ``uri`` (local path or any storage URI) if given.

    The text loads back with :func:`load_experiment` to an equal :class:`ExperimentConfig`.
    """
    text = "# Resolved somnray experiment config (every phase complete); written by the run.\n"
    text += yaml.safe_dump(experiment_to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)
    if uri is not None:
        from somnray.core.storage import write_text

        write_text(uri, text)
    return text
