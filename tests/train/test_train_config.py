"""Tests of the typed experiment config (somnray.train.config)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from somnray.core.errors import ConfigError
from somnray.train.config import (
    ExperimentConfig,
    apply_overrides,
    dump_experiment,
    load_experiment,
    model_facts,
    validate_experiment,
)


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def minimal(tmp_path: Path, tiny_model_name: str) -> Path:
    return _write(tmp_path, f"""
        seed: 7
        data: {{dataset: {tmp_path}/ds, split: {{kind: kfold, n_folds: 20, fold: 3}}, sequence_length: 25}}
        model: {{name: {tiny_model_name}}}
        optim: {{optimizer: adam, lr: 1.0e-3, batch_size: 8, max_steps: 50, validate_every: 10}}
        storage: {{uri: {tmp_path}/runs, name: demo}}
        """)


def test_minimal_config_loads_one_frozen_phase(minimal: Path) -> None:
    """A file without phases is one phase 'train' with defaults filled in and frozen fields."""
    cfg = load_experiment(minimal)
    assert isinstance(cfg, ExperimentConfig)
    (phase,) = cfg.phases
    assert phase.name == "train" and phase.seed == 7
    assert phase.data.split.fold == 3 and phase.data.stride == 25
    assert phase.missing.kind == "none" and phase.deepspeed.zero_stage == 0
    assert phase.optim.monitor_mode == "max"
    with pytest.raises(Exception):
        phase.optim.lr = 1.0  # type: ignore[misc]
    assert cfg.run_uri.endswith("runs/demo")


def test_every_problem_is_reported_at_once(tmp_path: Path, tiny_model_name: str) -> None:
    """One ConfigError names the file and lists each bad field as a 'field.path: problem' line."""
    path = _write(tmp_path, f"""
        data: {{dataset: ds, split: {{kind: kfold, fold: 2}}, sequence_length: 0, bogus: 1}}
        model: {{name: {tiny_model_name}}}
        loss_weights: {{not_a_weight: 0.5}}
        optim: {{lr: -1, optimizer: adamx}}
        missing: {{kind: partial_chunks, rate: 1.5}}
        deepspeed: {{zero_stage: 4}}
        scaling: {{use_gpu: maybe}}
        storage: {{uri: "s3:/bucket", name: "a b"}}
        """)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    err = info.value
    assert err.source == str(path) and str(path) in str(err)
    fields = [line.split(":")[0] for line in err.errors]
    for expected in ("data.split", "data.sequence_length", "data.bogus", "loss_weights", "optim.lr",
                     "optim.optimizer", "missing.rate", "deepspeed.zero_stage", "scaling.use_gpu",
                     "storage.uri", "storage.name"):
        assert expected in fields, (expected, err.errors)
    assert any("not_a_weight" in line for line in err.errors)


def test_unknown_model_suggests_close_names(tmp_path: Path, tiny_model_name: str) -> None:
    """A misspelt model name is refused with the closest registered names."""
    typo = tiny_model_name.replace("_tiny", "_tiyn")
    path = _write(tmp_path, f"""
        data: {{dataset: ds, split: fixed}}
        model: {{name: {typo}}}
        storage: {{uri: runs, name: demo}}
        """)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    (line,) = info.value.errors
    assert line.startswith("model.name:") and repr(tiny_model_name) in line


def test_bad_model_overrides_are_caught_before_running(tmp_path: Path, tiny_model_name: str) -> None:
    """Constructor overrides the model does not accept are reported under model.overrides."""
    path = _write(tmp_path, f"""
        data: {{dataset: ds, split: fixed}}
        model: {{name: {tiny_model_name}, overrides: {{no_such_argument: 3}}}}
        storage: {{uri: runs, name: demo}}
        """)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.errors[0].startswith("model.overrides:")
    assert "no_such_argument" in info.value.errors[0]


def test_loss_weights_are_checked_against_the_model(tmp_path: Path, tiny_model_name: str) -> None:
    """Known loss-weight names load; their values reach the phase."""
    name = model_facts(tiny_model_name, {}).loss_weight_names[0]
    path = _write(tmp_path, f"""
        data: {{dataset: ds, split: fixed}}
        model: {{name: {tiny_model_name}}}
        loss_weights: {{{name}: 0.25}}
        storage: {{uri: runs, name: demo}}
        """)
    assert load_experiment(path).phases[0].loss_weights == {name: 0.25}


def test_phases_deep_merge_and_report_their_own_errors(tmp_path: Path, tiny_model_name: str) -> None:
    """Phase overrides merge into the top level; a bad value a phase sets is reported under phases[i]."""
    body = f"""
        data: {{dataset: ds, split: {{kind: holdout, test_fraction: 0.3, n_val_subjects: 2}}}}
        model: {{name: {tiny_model_name}, overrides: {{}}}}
        optim: {{lr: 5.0e-4, batch_size: 4}}
        storage: {{uri: runs, name: demo}}
        phases:
          - {{name: pretrain}}
          - name: finetune
            init_from: previous
            freeze: [maim]
            optim: {{lr: LR}}
        """
    good = load_experiment(_write(tmp_path, body.replace("LR", "1.0e-4")))
    pre, fine = good.phases
    assert (pre.optim.lr, fine.optim.lr) == (5e-4, 1e-4)
    assert fine.optim.batch_size == 4 and fine.init_from == "previous" and fine.freeze == ("maim",)
    assert good.phase("finetune") is fine
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, body.replace("LR", "0"), "bad.yaml"))
    assert [e.split(":")[0] for e in info.value.errors] == ["phases[1].optim.lr"]


def test_model_phase_is_checked_against_the_phases_the_model_declares(tmp_path: Path) -> None:
    """model.overrides.phase must be one of the model's declared phases (a close name is suggested);
    a model without phases refuses the key; a declared phase loads and reaches ModelFacts."""
    def config(model: str, phase: str) -> str:
        return f"""
            data: {{dataset: ds, split: fixed}}
            model: {{name: {model}, overrides: {{phase: {phase}}}}}
            storage: {{uri: runs, name: demo}}
            """
    cfg = load_experiment(_write(tmp_path, config("mc2sleepnet_tiny", "finetune")))
    assert cfg.phases[0].model.overrides == {"phase": "finetune"}
    assert model_facts("mc2sleepnet_tiny", {}).phases == ("backbone", "pretrain", "finetune")
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, config("mc2sleepnet_tiny", "fine_tune"), "typo.yaml"))
    (line,) = info.value.errors
    assert line.startswith("model.overrides.phase: unknown phase 'fine_tune' for mc2sleepnet_tiny")
    assert "did you mean 'finetune'" in line and "pretrain, finetune" in line
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, config("coresleep_tiny", "pretrain"), "none.yaml"))
    assert info.value.errors == ["model.overrides.phase: coresleep_tiny has no training phases; "
                                 "remove model.overrides.phase"]


def test_freeze_names_the_model_parameter_groups(tmp_path: Path) -> None:
    """freeze is checked against model.parameter_groups() when the config loads, per phase."""
    body = """
        data: {dataset: ds, split: fixed}
        model: {name: mc2sleepnet_tiny}
        storage: {uri: runs, name: demo}
        phases:
          - {name: pretrain, model: {overrides: {phase: pretrain}}}
          - {name: finetune, init_from: previous, freeze: [GROUP], model: {overrides: {phase: finetune}}}
        """
    assert load_experiment(_write(tmp_path, body.replace("GROUP", "epoch_level"))).phases[1].freeze == ("epoch_level",)
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, body.replace("GROUP", "epoch_levels"), "bad.yaml"))
    (line,) = info.value.errors
    assert line.startswith("phases[1].freeze: unknown parameter groups 'epoch_levels'; did you mean 'epoch_level'?")


def test_first_phase_cannot_init_from_previous(tmp_path: Path, tiny_model_name: str) -> None:
    """init_from: previous on the first phase and duplicate phase names are errors."""
    path = _write(tmp_path, f"""
        data: {{dataset: ds, split: fixed}}
        model: {{name: {tiny_model_name}}}
        storage: {{uri: runs, name: demo}}
        phases: [{{name: a, init_from: previous}}, {{name: a}}]
        """)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    text = "\n".join(info.value.errors)
    assert "phases[0].init_from" in text and "duplicates ['a']" in text


def test_set_overrides_parse_yaml_values(minimal: Path) -> None:
    """--set values are YAML-parsed and applied before validation, including into lists."""
    cfg = load_experiment(minimal, ["optim.lr=3e-4", "data.modalities=[eeg]", "missing.kind=partial_iid",
                                    "missing.rate=0.25", "scaling.use_gpu=false"])
    phase = cfg.phases[0]
    assert phase.optim.lr == pytest.approx(3e-4)
    assert phase.data.modalities == ("eeg",)
    assert (phase.missing.kind, phase.missing.rate, phase.scaling.use_gpu) == ("partial_iid", 0.25, False)
    raw, errors = apply_overrides({"phases": [{"name": "a"}]}, ["phases.0.optim.lr=1", "nonsense", "phases.5.x=1"])
    assert raw["phases"][0]["optim"]["lr"] == 1
    assert len(errors) == 2 and "nonsense" in errors[0] and "phases.5.x" in errors[1]


def test_bad_set_override_is_reported_with_other_errors(minimal: Path) -> None:
    """A malformed --set and a bad value it introduces are listed together."""
    with pytest.raises(ConfigError) as info:
        load_experiment(minimal, ["optim.lr", "optim.batch_size=0"])
    text = "\n".join(info.value.errors)
    assert "--set 'optim.lr'" in text and "optim.batch_size" in text


def test_batch_size_must_split_over_workers_and_accumulation(minimal: Path) -> None:
    """A global batch not divisible by workers × accumulation steps is refused."""
    with pytest.raises(ConfigError) as info:
        load_experiment(minimal, ["scaling.num_workers=3"])
    assert "optim.batch_size (8)" in "\n".join(info.value.errors)


def test_modalities_must_be_consumed_by_the_model(minimal: Path) -> None:
    """data.modalities naming a modality the model does not use is an error."""
    with pytest.raises(ConfigError) as info:
        load_experiment(minimal, ["data.modalities=[eeg, ecg]"])
    assert info.value.errors[0].startswith("data.modalities:")


def test_dump_round_trips(minimal: Path, tmp_path: Path) -> None:
    """dump_experiment writes YAML that loads back to an equal config."""
    cfg = load_experiment(minimal, ["missing.kind=noisy", "missing.noise_snr_db=5",
                                    "missing.curriculum={kind: step, start_rate: 0, end_rate: 0.5, milestones: [10, 20]}"])
    out = tmp_path / "run" / "config.yaml"
    text = dump_experiment(cfg, str(out))
    assert out.read_text() == text
    assert load_experiment(out) == cfg
    assert yaml.safe_load(text)["phases"][0]["missing"]["curriculum"]["milestones"] == [10, 20]


def test_masked_validation_needs_a_missing_kind(minimal: Path) -> None:
    """missing.validation: masked with kind none is refused with the reason."""
    with pytest.raises(ConfigError, match="validation 'masked' needs a kind: kind 'none' draws no mask"):
        load_experiment(minimal, ["missing.validation=masked"])
    assert load_experiment(minimal, ["missing.kind=partial_chunks", "missing.rate=0.5",
                                     "missing.validation=masked"]).phases[0].missing.validation == "masked"


def test_incomplete_training_section_loads(minimal: Path) -> None:
    """missing.incomplete takes the multimodal count, an optional unimodal count and the modalities kept."""
    phase = load_experiment(minimal, ["missing.incomplete={multimodal: 100, unimodal: 200, keep: [eeg]}"]).phases[0]
    assert (phase.missing.incomplete.multimodal, phase.missing.incomplete.unimodal) == (100, 200)
    assert phase.missing.incomplete.keep == ("eeg",)
    with pytest.raises(ConfigError, match="missing.incomplete.multimodal"):
        load_experiment(minimal, ["missing.incomplete={multimodal: -1}"])


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    """A file that is absent, empty or not a mapping raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="no such config file"):
        load_experiment(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="required key is missing"):
        validate_experiment({"storage": {"uri": "runs", "name": "x"}})
