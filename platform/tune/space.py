"""Typed search spaces: which experiment-config fields a search varies, and how they are drawn.

A space file maps experiment-config field paths to distributions::

    # What it searches, and the exact command.
    description: "missing-rate curriculum and alignment weight of CoRe-Sleep"
    params:
      missing.curriculum.end_rate: {distribution: uniform, low: 0.1, high: 0.6}
      missing.curriculum.ramp_steps: {distribution: randint, low: 100, high: 2000}
      missing.curriculum.kind: {distribution: choice, values: [constant, linear, cosine]}
      loss_weights.align: {distribution: loguniform, low: 0.01, high: 1.0}
      optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}

A path names a field of a phase (``missing.curriculum.end_rate``, ``loss_weights.align``,
``model.overrides.mask_ratio``...) and applies to **every** phase of the recipe; prefix it with
``phases.<i>.`` to vary one phase only (MC²SleepNet's finetune learning rate:
``phases.1.optim.lr``). Distributions: ``uniform`` and ``loguniform`` (``low``, ``high``; floats),
``randint`` (``low``, ``high``; integers, both **inclusive**), ``choice`` (``values``: sampled) and
``grid`` (``values``: every value is run, times ``--samples``).

:func:`load_space` validates the file against the experiment it will search, before any Ray work,
and raises one :class:`~somnray.core.errors.ConfigError` listing every problem: malformed
entries, unknown field paths (with the closest valid ones), and values the experiment config
rejects. The last check applies representative samples (each bound, each listed value) to the
experiment and runs :func:`somnray.train.config.validate_experiment` on the result, so a space
can never produce a trial config that fails validation at its bounds.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from somnray.core.config import did_you_mean, location_text, read_yaml_file, validation_errors
from somnray.core.errors import ConfigError
from somnray.train.config import ExperimentConfig, apply_overrides, experiment_to_dict, model_facts, validate_experiment

Distribution = Literal["uniform", "loguniform", "choice", "randint", "grid"]
#: Phase keys a search may not vary: they name the run, not a hyperparameter.
FROZEN_KEYS = ("name", "init_from", "storage", "description")
#: Sections a path may start with (after an optional ``phases.<i>.``).
SEARCHABLE_SECTIONS = ("data", "model", "loss_weights", "missing", "optim", "deepspeed", "scaling", "seed",
                       "freeze")


class ParamSpec(BaseModel):
    """One searched field: its path in the experiment config and its distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    distribution: Distribution
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _shape(self) -> "ParamSpec":
        if self.distribution in ("choice", "grid"):
            if self.low is not None or self.high is not None:
                raise ValueError(f"{self.distribution!r} takes 'values', not low/high")
            if not self.values:
                raise ValueError(f"{self.distribution!r} needs a non-empty list 'values'")
            return self
        if self.values is not None:
            raise ValueError(f"{self.distribution!r} takes low/high, not 'values'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.distribution!r} needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, got {self.low}, {self.high}")
        if self.distribution == "randint":
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError(f"randint bounds must be integers, got {self.low}, {self.high}")
            if self.high < self.low:
                raise ValueError(f"randint needs low <= high (both inclusive), got {int(self.low)} > {int(self.high)}")
        elif self.high <= self.low:
            raise ValueError(f"{self.distribution!r} needs low < high, got low={self.low}, high={self.high}")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ValueError(f"'loguniform' needs low > 0, got {self.low}")
        return self

    def corners(self) -> list[Any]:
        """Representative values checked against the experiment: each bound or each listed value."""
        if self.distribution in ("choice", "grid"):
            return list(self.values or ())
        if self.distribution == "randint":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def to_tune(self):
        """The ``ray.tune`` search-space object of this entry."""
        from ray import tune

        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "randint":
            return tune.randint(int(self.low), int(self.high) + 1)  # Tune's upper bound is exclusive
        if self.distribution == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))

    @property
    def continuous(self) -> bool:
        """Whether the value is a number PBT can perturb by a factor (uniform / loguniform)."""
        return self.distribution in ("uniform", "loguniform")


class SearchSpace(BaseModel):
    """A validated search space (see the module docstring for the file format)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    params: tuple[ParamSpec, ...] = Field(min_length=1)

    def param_space(self) -> dict[str, Any]:
        """The ``Tuner(param_space=...)`` mapping: flat, keyed by field path."""
        return {p.path: p.to_tune() for p in self.params}

    @property
    def paths(self) -> tuple[str, ...]:
        """The searched field paths, in file order."""
        return tuple(p.path for p in self.params)

    @property
    def has_grid(self) -> bool:
        """Whether any entry is a grid (every value run)."""
        return any(p.distribution == "grid" for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`space_from_mapping` reads back to an equal space."""
        params = {}
        for p in self.params:
            entry: dict[str, Any] = {"distribution": p.distribution}
            if p.values is not None:
                entry["values"] = list(p.values)
            else:
                entry.update(low=p.low, high=p.high)
            params[p.path] = entry
        return {"description": self.description, "params": params}


# ------------------------------------------------------------------------------------------------
# field paths
# ------------------------------------------------------------------------------------------------
def _leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, Mapping):
        out = []  # an empty mapping (no loss weights set) is not a field of its own
        for key, value in tree.items():
            out += _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [prefix] if prefix else []


def valid_paths(cfg: ExperimentConfig) -> list[str]:
    """Every field path a space may name for ``cfg`` (without the ``phases.<i>.`` form).

    The leaves of the resolved phases, each loss weight the model has, and the model
    constructor overrides already set (others are accepted and checked by building the model).
    """
    paths: set[str] = set()
    for phase in cfg.phases:
        doc = phase.model_dump(mode="json")
        for key in FROZEN_KEYS:
            doc.pop(key, None)
        paths.update(_leaf_paths(doc))
        facts = model_facts(phase.model.name, phase.model.overrides)
        paths.update(f"loss_weights.{w}" for w in facts.loss_weight_names)
        # An optional section left out (curriculum rates default to None) is still a valid target.
        paths.update({"missing.curriculum.start_rate", "missing.curriculum.end_rate", "optim.mode",
                      "optim.clip_norm", "optim.patience", "missing.noise_sigma", "missing.noise_snr_db",
                      "data.eval_stride", "data.modalities", "missing.modalities"})
    return sorted(paths)


def _split_phase(path: str) -> tuple[int | None, str]:
    parts = path.split(".")
    if len(parts) > 2 and parts[0] == "phases" and parts[1].isdigit():
        return int(parts[1]), ".".join(parts[2:])
    return None, path


def _check_path(path: str, cfg: ExperimentConfig, known: Sequence[str]) -> str | None:
    """Why ``path`` cannot be searched, or None."""
    index, rest = _split_phase(path)
    if index is not None and index >= len(cfg.phases):
        return (f"phase index {index} is out of range: the recipe has {len(cfg.phases)} phase(s) "
                f"({', '.join(p.name for p in cfg.phases)})")
    head = rest.split(".")[0]
    if head in FROZEN_KEYS or path.split(".")[0] in FROZEN_KEYS:
        return f"{head!r} names the run, not a hyperparameter, and cannot be searched"
    if rest in known or rest.startswith("model.overrides.") and rest.count(".") == 2:
        return None
    if rest in ("model.name",):
        return None
    # Match the last component first: 'end_rate' → 'missing.curriculum.end_rate'.
    leaf = rest.split(".")[-1]
    hint = (did_you_mean(rest, known, cutoff=0.6)
            or did_you_mean(leaf, [k for k in known if k.split(".")[-1] == leaf], cutoff=0.0)
            or did_you_mean(rest, known))
    return f"unknown field path{hint} (paths are experiment-config fields, e.g. 'missing.curriculum.end_rate')"


# ------------------------------------------------------------------------------------------------
# applying samples
# ------------------------------------------------------------------------------------------------
def sample_overrides(cfg: ExperimentConfig, sample: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(phases.<i>.path, value)`` assignments of one sample: a plain path goes to every phase."""
    out = []
    for path, value in sample.items():
        index, rest = _split_phase(path)
        targets = [index] if index is not None else range(len(cfg.phases))
        out += [(f"phases.{i}.{rest}", value) for i in targets]
    return out


def apply_sample(base: Mapping[str, Any] | ExperimentConfig, sample: Mapping[str, Any], *,
                 storage: Mapping[str, str] | None = None, source: str = "<trial>") -> ExperimentConfig:
    """The experiment config of one trial: ``base`` with the sampled values, validated.

    Parameters
    ----------
    base : ExperimentConfig or mapping
        The searched experiment (a mapping as written by ``experiment_to_dict``).
    sample : mapping
        Field path → value (the trial's config).
    storage : mapping, optional
        Replacement ``storage`` section (``uri`` and ``name``): where the trial's run goes.

    Raises
    ------
    ConfigError
        If the resulting config is invalid.
    """
    cfg = base if isinstance(base, ExperimentConfig) else validate_experiment(base, source)
    raw = experiment_to_dict(cfg)
    if storage is not None:
        raw["storage"] = dict(storage)
    assignments = sample_overrides(cfg, sample)
    raw = _assign(raw, assignments)
    return validate_experiment(raw, source)


def _assign(raw: dict[str, Any], assignments: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    # apply_overrides parses YAML text; dumping the value keeps lists, floats and strings exact.
    texts = [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
             for path, value in assignments]
    out, errors = apply_overrides(raw, texts)
    if errors:
        raise ConfigError("<search space>", errors)
    return out


# ------------------------------------------------------------------------------------------------
# loading and validation
# ------------------------------------------------------------------------------------------------
def space_from_mapping(raw: Any, cfg: ExperimentConfig, source: str = "<space>") -> SearchSpace:
    """Validate a raw space mapping against the experiment ``cfg`` (every problem at once)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, [f"expected a mapping with 'params', got {type(raw).__name__}"])
    errors = [f"{k}: unknown key (a space file has 'description' and 'params')"
              for k in raw if k not in ("description", "params")]
    params_raw = raw.get("params")
    if not isinstance(params_raw, Mapping) or not params_raw:
        errors.append("params: expected a non-empty mapping of field path → distribution")
        raise ConfigError(source, errors)

    known = valid_paths(cfg)
    params: list[ParamSpec] = []
    for path, entry in params_raw.items():
        path = str(path)
        where = f"params.{path}"
        problem = _check_path(path, cfg, known)
        if problem:
            errors.append(f"{where}: {problem}")
        if not isinstance(entry, Mapping):
            errors.append(f"{where}: expected a mapping with 'distribution', got {entry!r}")
            continue
        try:
            spec = ParamSpec.model_validate({"path": path, **entry})
        except ValidationError as exc:
            errors += [f"{where}{'.' + location_text(loc) if loc else ''}: {msg}" for loc, msg in validation_errors(
                exc, unknown_key="unknown key (entries have distribution, low, high, values)")]
            continue
        if not problem:
            params.append(spec)
    dupes = _duplicate_targets(cfg, [p.path for p in params])
    errors += [f"params: {a!r} and {b!r} set the same field" for a, b in dupes]
    if not errors:
        errors += _check_samples(cfg, params)
    if errors:
        raise ConfigError(source, errors)
    return SearchSpace(description=str(raw.get("description", "")), params=tuple(params))


def _duplicate_targets(cfg: ExperimentConfig, paths: Sequence[str]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    dupes = []
    for path in paths:
        for target, _ in sample_overrides(cfg, {path: None}):
            if target in seen and seen[target] != path:
                dupes.append((seen[target], path))
            seen.setdefault(target, path)
    return sorted(set(dupes))


def _check_samples(cfg: ExperimentConfig, params: Sequence[ParamSpec]) -> list[str]:
    """Apply each bound / listed value (others at their first corner) and validate the result."""
    if not params:
        return []
    base = {p.path: p.corners()[0] for p in params}
    errors: list[str] = []
    for p in params:
        for value in p.corners():
            sample = {**base, p.path: value}
            try:
                apply_sample(cfg, sample)
            except ConfigError as exc:
                for line in exc.errors:
                    text = f"params.{p.path}: value {value!r} makes the experiment invalid: {line}"
                    if text not in errors:
                        errors.append(text)
    return errors


def load_space(path: str | os.PathLike[str], cfg: ExperimentConfig) -> SearchSpace:
    """Load and validate a search-space YAML file against the experiment it searches.

    Raises
    ------
    ConfigError
        Naming ``path`` and listing every problem at once.
    """
    source, raw = read_yaml_file(path, "search-space")
    return space_from_mapping(raw, cfg, source)


def sample_space(space: SearchSpace, rng: Any) -> dict[str, Any]:
    """One random sample (``rng``: a numpy Generator), as a trial would get it; grids pick a value."""
    out: dict[str, Any] = {}
    for p in space.params:
        if p.distribution == "uniform":
            out[p.path] = float(rng.uniform(p.low, p.high))
        elif p.distribution == "loguniform":
            out[p.path] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
        elif p.distribution == "randint":
            out[p.path] = int(rng.integers(int(p.low), int(p.high) + 1))
        else:
            out[p.path] = copy.deepcopy(p.values[int(rng.integers(len(p.values)))])
    return out


# ------------------------------------------------------------------------------------------------
# population-based training
# ------------------------------------------------------------------------------------------------
#: Sections PBT may change while a lineage trains: the worker loop reads loss weights and the
#: missing-modality settings at every step, and re-applies the optimizer's hyperparameters after
#: continuing another trial's state (somnray.train.loop.apply_optim_hyperparameters).
PBT_MUTABLE_SECTIONS = ("loss_weights", "missing", "optim")
#: Fields of those sections that shape the optimizer state, the step budget or the ranking: a
#: checkpoint cannot continue under another value.
PBT_FIXED_FIELDS = ("optim.optimizer", "optim.amsgrad", "optim.batch_size", "optim.grad_accum_steps",
                    "optim.max_steps", "optim.validate_every", "optim.monitor", "optim.mode")


def pbt_fixed_reason(spec: ParamSpec) -> str | None:
    """Why PBT cannot perturb ``spec`` (it is then fixed per lineage), or None if it can.

    Perturbable: ``uniform`` / ``loguniform`` numbers (scaled by 0.8 or 1.2, or resampled) and
    ``choice`` values (moved to a neighbouring value, or resampled), in the sections the loop
    applies on the fly (:data:`PBT_MUTABLE_SECTIONS`) minus :data:`PBT_FIXED_FIELDS`.
    """
    if not (spec.continuous or spec.distribution == "choice"):
        return f"{spec.distribution!r} entries are not perturbed (uniform, loguniform and choice are)"
    _, rest = _split_phase(spec.path)
    if rest.split(".")[0] not in PBT_MUTABLE_SECTIONS or rest in PBT_FIXED_FIELDS:
        return ("it shapes the model, the data, the optimizer state or the run, so a checkpoint cannot "
                "continue under another value (PBT perturbs loss_weights.*, missing.* and optimizer "
                "hyperparameters such as optim.lr)")
    return None


def pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """``PopulationBasedTraining(hyperparam_mutations=...)`` of ``space``.

    A continuous entry maps to its Tune domain (Tune multiplies by a perturbation factor, or
    resamples), a ``choice`` to its list of values (Tune shifts to a neighbour, or resamples). Entries
    left out are not perturbed: an exploited trial takes the donor's value with its checkpoint.
    """
    out: dict[str, Any] = {}
    for p in space.params:
        if pbt_fixed_reason(p) is None:
            out[p.path] = p.to_tune() if p.continuous else list(p.values or ())
    return out


def pbt_bounds(space: SearchSpace) -> dict[str, tuple[float, float]]:
    """``(low, high)`` of every perturbable continuous entry (a perturbed value is clipped to them)."""
    return {p.path: (float(p.low), float(p.high)) for p in space.params
            if p.continuous and pbt_fixed_reason(p) is None}


def clip_to_bounds(config: dict[str, Any], bounds: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """``config`` with each bounded value clipped into its ``(low, high)`` (PBT's ``custom_explore_fn``).

    Tune perturbs a value by a factor without looking at its distribution's bounds; the space
    validated only values within them (an ``end_rate`` of 0.6 × 1.2 may exceed what the
    experiment accepts).
    """
    out = dict(config)
    for path, (low, high) in bounds.items():
        if isinstance(out.get(path), (int, float)) and not isinstance(out[path], bool):
            out[path] = float(min(max(out[path], low), high))
    return out


__all__ = ["Distribution", "PBT_FIXED_FIELDS", "PBT_MUTABLE_SECTIONS", "ParamSpec", "SearchSpace", "apply_sample",
           "clip_to_bounds", "load_space", "pbt_bounds", "pbt_fixed_reason", "pbt_mutations", "sample_overrides",
           "sample_space", "space_from_mapping", "valid_paths"]
