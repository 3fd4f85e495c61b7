"""The device and precision policy of scoring (somnray.scoring.device)."""

from __future__ import annotations

import pytest
import torch

from somnray.core.errors import ConfigError
from somnray.scoring.device import cpu_has_amx, precision_name, scoring_autocast, scoring_device


def test_precision_auto_follows_the_hardware():
    """'auto' picks bf16 on CPU exactly when AMX is there; fp16 on CPU is refused."""
    expected = torch.bfloat16 if cpu_has_amx() else None
    assert scoring_autocast(torch.device("cpu"), "auto") is expected
    assert scoring_autocast(torch.device("cpu"), "fp32") is None
    with pytest.raises(ConfigError, match="fp16"):
        scoring_autocast(torch.device("cpu"), "fp16")


def test_named_precisions_and_their_names():
    """bf16 is honoured on CPU, an unknown name is refused, and every dtype has its name back."""
    assert scoring_autocast(torch.device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of"):
        scoring_autocast(torch.device("cpu"), "fp64")
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_device_auto_takes_a_gpu_only_when_one_is_visible():
    """'auto' is CUDA exactly when torch sees a GPU; 'cpu' is CPU; a bad name is a ConfigError."""
    assert scoring_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert scoring_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be"):
        scoring_device("abacus")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    """Asking for CUDA where none is visible fails at once instead of scoring on the CPU."""
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        scoring_device("cuda")
