"""Search-space files: validation against the experiment they search, and sampling (somnray.tune.space)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from somnray.core.errors import ConfigError
from somnray.train.config import ExperimentConfig, validate_experiment
from somnray.tune.space import apply_sample, load_space, sample_space, space_from_mapping

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def experiment(model: str = "coresleep_tiny", *, missing: dict | None = None, phases: list | None = None,
               tmp: str = "/tmp/somnray-space-test") -> ExperimentConfig:
    """A valid experiment config for ``model`` (the dataset is never opened by validation)."""
    raw = {
        "data": {"dataset": f"{tmp}/prepared", "split": "manifest", "sequence_length": 5},
        "model": {"name": model},
        "missing": missing or {"kind": "partial_chunks", "rate": 0.3, "chunk_epochs": 5,
                               "curriculum": {"kind": "linear", "start_rate": 0.0, "end_rate": 0.3,
                                              "ramp_steps": 10}},
        "optim": {"batch_size": 4, "max_steps": 4, "validate_every": 2},
        "storage": {"uri": f"{tmp}/runs", "name": "exp"},
    }
    if phases:
        raw["phases"] = phases
    return validate_experiment(raw)


def test_several_errors_are_reported_at_once() -> None:
    """Malformed entries, bad bounds, frozen and unknown paths all appear in one ConfigError."""
    raw = {"params": {
        "optim.lr": {"distribution": "loguniform", "low": 0.0, "high": 1.0},
        "missing.curriculum.ramp_steps": {"distribution": "randint", "low": 5, "high": 2},
        "storage.name": {"distribution": "choice", "values": ["a"]},
        "loss_weights.align": {"distribution": "gaussian", "low": 0.1, "high": 1.0},
        "optim.weight_decay": {"distribution": "choice"},
    }, "extra": 1}
    with pytest.raises(ConfigError) as err:
        space_from_mapping(raw, experiment(), "space.yaml")
    text = "\n".join(err.value.errors)
    assert err.value.source == "space.yaml" and len(err.value.errors) >= 6
    assert "params.optim.lr: 'loguniform' needs low > 0" in text
    assert "randint needs low <= high" in text
    assert "params.storage.name: 'storage' names the run" in text
    assert "params.loss_weights.align.distribution" in text
    assert "needs a non-empty list 'values'" in text
    assert "extra: unknown key" in text


def test_bad_path_names_the_close_valid_paths() -> None:
    """A misspelt or partial field path is reported with the closest valid paths."""
    raw = {"params": {"missing.curiculum.end_rate": {"distribution": "uniform", "low": 0.1, "high": 0.5},
                      "end_rate": {"distribution": "uniform", "low": 0.1, "high": 0.5},
                      "loss_weights.algn": {"distribution": "uniform", "low": 0.1, "high": 0.5}}}
    with pytest.raises(ConfigError) as err:
        space_from_mapping(raw, experiment())
    lines = err.value.errors
    assert len(lines) == 3
    assert "did you mean 'missing.curriculum.end_rate'" in lines[0]
    assert "did you mean 'missing.curriculum.end_rate'" in lines[1]
    assert "'loss_weights.align'" in lines[2]


def test_values_the_experiment_rejects_are_found_before_any_trial() -> None:
    """A choice the experiment config rejects (a step curriculum without milestones) is reported."""
    raw = {"params": {"missing.curriculum.kind": {"distribution": "choice", "values": ["linear", "step"]},
                      "missing.curriculum.end_rate": {"distribution": "uniform", "low": 0.1, "high": 1.5}}}
    with pytest.raises(ConfigError) as err:
        space_from_mapping(raw, experiment())
    text = "\n".join(err.value.errors)
    assert "value 'step' makes the experiment invalid" in text and "milestones" in text
    assert "value 1.5 makes the experiment invalid" in text


def test_phase_index_out_of_range_and_model_override_checked() -> None:
    """phases.<i> must exist; model.overrides values are checked by building the model."""
    cfg = experiment(phases=[{"name": "a"}, {"name": "b", "optim": {"max_steps": 2}}])
    raw = {"params": {"phases.2.optim.lr": {"distribution": "uniform", "low": 0.1, "high": 0.5}}}
    with pytest.raises(ConfigError, match="phase index 2 is out of range: the recipe has 2 phase"):
        space_from_mapping(raw, cfg)
    # Sample checks run once the entries themselves are sound: the model builder rejects the keyword.
    raw = {"params": {"model.overrides.no_such_arg": {"distribution": "choice", "values": [1]}}}
    with pytest.raises(ConfigError) as err:
        space_from_mapping(raw, cfg)
    text = "\n".join(err.value.errors)
    assert "create_model('coresleep_tiny') rejected them" in text and "no_such_arg" in text


def test_samples_produce_valid_configs_in_every_phase() -> None:
    """Random samples apply to every phase (or one, with phases.<i>.) and validate."""
    cfg = experiment(phases=[{"name": "pre"}, {"name": "fine", "optim": {"max_steps": 2}}])
    raw = {"params": {
        "missing.curriculum.end_rate": {"distribution": "uniform", "low": 0.1, "high": 0.5},
        "missing.curriculum.ramp_steps": {"distribution": "randint", "low": 1, "high": 3},
        "missing.curriculum.kind": {"distribution": "choice", "values": ["linear", "cosine"]},
        "loss_weights.align": {"distribution": "loguniform", "low": 0.01, "high": 1.0},
        "phases.1.optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
    }}
    space = space_from_mapping(raw, cfg)
    rng = np.random.default_rng(0)
    for _ in range(10):
        sample = sample_space(space, rng)
        trial = apply_sample(cfg, sample, storage={"uri": "/tmp/x", "name": "trial_1"})
        for phase in trial.phases:
            assert phase.missing.curriculum.end_rate == pytest.approx(sample["missing.curriculum.end_rate"])
            assert 1 <= phase.missing.curriculum.ramp_steps <= 3
            assert phase.loss_weights["align"] == pytest.approx(sample["loss_weights.align"])
        assert trial.phases[1].optim.lr == pytest.approx(sample["phases.1.optim.lr"])
        assert trial.phases[0].optim.lr == cfg.phases[0].optim.lr
        assert trial.storage.name == "trial_1"


def test_to_dict_round_trips_and_tune_space_builds() -> None:
    """A space written to search.json reads back equal; its Tune objects build (randint inclusive)."""
    raw = {"params": {"missing.curriculum.ramp_steps": {"distribution": "randint", "low": 1, "high": 3},
                      "missing.curriculum.kind": {"distribution": "grid", "values": ["linear", "cosine"]}}}
    cfg = experiment()
    space = space_from_mapping(raw, cfg)
    assert space_from_mapping(space.to_dict(), cfg) == space
    tune_space = space.param_space()
    assert tune_space["missing.curriculum.ramp_steps"].upper == 4 and space.has_grid


@pytest.mark.parametrize("model, file, missing, phases", [
    ("coresleep", "space_coresleep.yaml", None, None),
    ("cimsleepnet", "space_cimsleepnet.yaml", None, None),
    ("mc2sleepnet", "space_mc2sleepnet.yaml", None,
     [{"name": "pretrain", "model": {"overrides": {"phase": "pretrain"}}},
      {"name": "finetune", "init_from": "previous", "model": {"overrides": {"phase": "finetune"}}}]),
])
def test_shipped_spaces_validate_and_open_with_their_command(model, file, missing, phases) -> None:
    """Every shipped space validates against its architecture and opens with a comment giving the command."""
    path = CONFIGS / file
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "somnray tune" in path.read_text().split("description")[0]
    space = load_space(path, experiment(model, missing=missing, phases=phases))
    assert space.params and yaml.safe_load(path.read_text())["params"]


def test_missing_file_is_a_config_error(tmp_path) -> None:
    """A space path that does not exist names the file."""
    with pytest.raises(ConfigError, match="no such search-space file"):
        load_space(tmp_path / "nope.yaml", experiment())


@pytest.mark.parametrize("file", sorted(p.name for p in CONFIGS.glob("space_*.yaml")))
def test_shipped_space_command_names_a_shipped_recipe_it_validates_against(file) -> None:
    """The command in a space's header names a recipe that exists, and the space fits that recipe."""
    from somnray.train.config import load_experiment

    header = (CONFIGS / file).read_text().split("description")[0]
    words = header.split("somnray tune", 1)[1].replace("#", " ").replace("\\", " ").split("(")[0].split()
    recipe = CONFIGS.parent.parent / words[0]
    assert recipe.is_file(), f"{file}: its command names {words[0]}, which does not exist"
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    load_space(CONFIGS / file, load_experiment(recipe, overrides))
