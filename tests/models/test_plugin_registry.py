"""The registry finds architectures outside somnray.models: SOMNRAY_MODEL_MODULES and the
``somnray.models`` entry-point group; the Ray session passes the variable on to its workers."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import somnray.models.registry as registry
from somnray.core.constants import MODEL_MODULES_ENV
from somnray.core.session import FORWARDED_ENV, session_runtime_env
from somnray.models import SleepBatch, create_model, is_model, list_models

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture
def plugin_path(monkeypatch):
    """tests/plugins importable, no plugin variable, and the registry restored afterwards."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.delenv(MODEL_MODULES_ENV, raising=False)
    list_models()  # the built-ins are registered before the snapshot
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_entry_points_loaded", registry._entry_points_loaded)
    yield monkeypatch
    sys.modules.pop("toy_arch", None)  # so the next test's import registers it again


def test_environment_variable_registers_the_toy_architecture(plugin_path):
    """SOMNRAY_MODEL_MODULES=toy_arch adds toy_gru to the registry; it builds, trains a step and
    declares its own policy, phases and statistics, read through the base interface."""
    assert not is_model("toy_gru")
    plugin_path.setenv(MODEL_MODULES_ENV, " toy_arch , ")
    assert "toy_gru" in list_models() and is_model("toy_gru")
    torch.manual_seed(0)
    model = create_model("toy_gru")
    assert (model.missing_policy, model.phases, model.needs_epoch_sample) == ("drop", (), True)
    signals = {"eeg": torch.randn(2, 4, 3000) * 5}  # EOG missing from the batch: dropped
    present = torch.ones(2, 4, 2, dtype=torch.bool)
    out = model(signals, present)
    assert out.logits.shape == (2, 4, 5)
    terms = model.loss(out, SleepBatch(signals, present, torch.randint(0, 5, (2, 4)), model.modalities))
    terms["total"].backward()
    assert model.encoders["eeg"][0].weight.grad is not None and model.encoders["eog"][0].weight.grad is None
    fitted = model.fit_training_statistics(torch.tensor([10, 0, 20, 5, 5]), {"eeg": signals["eeg"][0]})
    assert sorted(fitted) == ["class_weights", "signal_scale"]
    assert model.signal_scale[0] == pytest.approx(float(signals["eeg"][0].std()), rel=1e-5)
    assert model.signal_scale[1] == 1.0 and model.class_weights[1] == 1.0


def test_scoring_reads_the_policy_the_plugin_declares(plugin_path):
    """The scorer's policy of a plugin model is what the model declares, with no platform change."""
    from somnray.serve.inference import missing_modality_policy

    plugin_path.setenv(MODEL_MODULES_ENV, "toy_arch")
    assert missing_modality_policy(create_model("toy_gru")) == "drop"
    assert missing_modality_policy(create_model("toy_gru", modalities=("eeg",))) == "require"


def test_an_unimportable_module_is_named_with_the_variable(plugin_path):
    """A module the variable names but Python cannot import raises ImportError saying where it came from."""
    plugin_path.setenv(MODEL_MODULES_ENV, "toy_arch,no_such_plugin_module")
    with pytest.raises(ImportError, match=rf"{MODEL_MODULES_ENV}=.*'no_such_plugin_module'"):
        list_models()


def test_entry_point_group_registers_the_toy_architecture(plugin_path):
    """An installed distribution's somnray.models entry point is imported once, without the variable."""
    calls = []

    def entry_points(group):
        calls.append(group)
        return [metadata.EntryPoint(name="toy", value="toy_arch", group=group)]

    plugin_path.setattr(registry.metadata, "entry_points", entry_points)
    plugin_path.setattr(registry, "_entry_points_loaded", False)
    assert is_model("toy_gru") and create_model("toy_gru").missing_policy == "drop"
    list_models()
    assert calls == [registry.ENTRY_POINT_GROUP] == ["somnray.models"]


def test_session_runtime_env_forwards_the_plugin_variable(monkeypatch):
    """The Ray session's runtime env carries SOMNRAY_MODEL_MODULES to every worker, keeps the
    caller's settings, and adds nothing inside a submitted job (whose runtime env already has it)."""
    assert MODEL_MODULES_ENV in FORWARDED_ENV
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv(MODEL_MODULES_ENV, raising=False)
    assert session_runtime_env(None) is None
    monkeypatch.setenv(MODEL_MODULES_ENV, "toy_arch")
    assert session_runtime_env(None) == {"env_vars": {MODEL_MODULES_ENV: "toy_arch"}}
    given = {"working_dir": ".", "env_vars": {"A": "1"}}
    assert session_runtime_env(given) == {"working_dir": ".", "env_vars": {MODEL_MODULES_ENV: "toy_arch", "A": "1"}}
    assert given == {"working_dir": ".", "env_vars": {"A": "1"}}
    assert session_runtime_env({"env_vars": {MODEL_MODULES_ENV: "x"}}) == {"env_vars": {MODEL_MODULES_ENV: "x"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert session_runtime_env(given) is given
