"""What SleepStagingModel declares for the platform: defaults, checks, and the same answers from every
registered model (missing policy, phases, statistics hook, parameter groups)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from somnray.models import MISSING_POLICIES, ModelOutput, SleepStagingModel, create_model, list_models


class _Plain(SleepStagingModel):
    """The least a subclass writes: a forward pass and one buffer."""

    def __init__(self, modalities=("eeg", "eog")):
        super().__init__(modalities)
        self.head = nn.Linear(1, 5)
        self.register_buffer("scale", torch.ones(3))

    def forward_checked(self, signals, present):
        return ModelOutput(self.head(present[..., :1].float()))


def test_defaults_fit_nothing_have_no_phases_and_require_every_modality():
    """A subclass that declares nothing: 'require', no phases, no epoch sample, fits nothing, one group."""
    model = _Plain()
    assert model.missing_policy == "require" and model.phases == () and not model.needs_epoch_sample
    assert model.fit_training_statistics(torch.tensor([1, 2, 3, 4, 5]), {}) == {}
    assert model.parameter_groups() == {"all": ["head.weight", "head.bias"]}


def test_one_modality_requires_it_whatever_the_class_declares():
    """missing_policy is the class declaration with several modalities, 'require' with one."""

    class Dropper(_Plain):
        multimodal_missing_policy = "drop"

    assert Dropper().missing_policy == "drop"
    assert Dropper(("eeg",)).missing_policy == "require"


def test_a_misspelt_policy_fails_when_the_class_is_defined():
    """multimodal_missing_policy outside drop/impute/require raises TypeError at class creation."""
    assert MISSING_POLICIES == ("drop", "impute", "require")
    with pytest.raises(TypeError, match="multimodal_missing_policy must be one of"):
        type("Typo", (_Plain,), {"multimodal_missing_policy": "dropped"})


def test_load_training_statistics_sets_buffers_and_refuses_anything_else():
    """Known buffers are copied (dtype of the buffer kept); a parameter, an unknown name or a wrong
    shape is a ValueError, and nothing is broadcast."""
    model = _Plain()
    assert model.load_training_statistics({"scale": [1.0, 2.0, 4.0]}) == ["scale"]
    assert model.scale.tolist() == [1.0, 2.0, 4.0] and model.scale.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\['head.weight'\] are not buffers"):
        model.load_training_statistics({"head.weight": torch.zeros(5, 1)})
    with pytest.raises(ValueError, match="shape"):
        model.load_training_statistics({"scale": torch.tensor(2.0)})
    assert model.scale.tolist() == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_declares_a_valid_interface(name):
    """Every registered model: a known policy, phases its constructor accepts, groups over its parameters."""
    with torch.device("meta"):
        model = create_model(name)
        assert model.missing_policy in MISSING_POLICIES
        for phase in model.phases:
            create_model(name, phase=phase)
    names = {n for n, _ in model.named_parameters()}
    groups = model.parameter_groups()
    assert groups and all(set(members) <= names for members in groups.values())
    assert set().union(*groups.values()) == names
