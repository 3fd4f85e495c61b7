"""The device and precision policy of scoring (somnray.scoring.device)."""

from __future__ import annotations

import pytest
import torch

from somnray.core.errors import ConfigError
from somnray.scoring import device as device_module
from somnray.scoring.device import (
    cpu_flags,
    cpu_model,
    faster_autocast,
    precision_name,
    scoring_autocast,
    scoring_device,
)


def test_precision_auto_on_cpu_starts_from_fp32():
    """'auto' on CPU is fp32 until the scorer's timed probe says otherwise; fp16 on CPU is refused."""
    assert scoring_autocast(torch.device("cpu"), "auto") is None
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


class _FakeClock:
    """perf_counter stand-in that advances only by what the timed function says it cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [
    (1.0, 0.5, torch.bfloat16),   # 2× faster: taken
    (1.0, 0.9, None),             # 1.1×: inside the margin, fp32 kept
    (1.0, 1.5, None),             # slower (bf16 emulated): fp32 kept
])
def test_faster_autocast_takes_bf16_only_when_clearly_faster(monkeypatch, fp32_s, bf16_s, expected):
    """The measured choice needs a speed-up of at least BF16_MIN_SPEEDUP; warm-up calls are not timed."""
    clock = _FakeClock()
    monkeypatch.setattr(device_module.time, "perf_counter", clock)
    calls = []

    def run(dtype):
        calls.append(dtype)
        # the first call of each precision (warm-up) is ten times slower and must not count
        first = calls.count(dtype) == 1
        clock.now += (bf16_s if dtype is torch.bfloat16 else fp32_s) * (10 if first else 1)

    assert faster_autocast(run, repeats=3) is expected
    assert calls == [None] * 4 + [torch.bfloat16] * 4


def test_cpu_facts_are_read_without_error():
    """The CPU model and flags used in benchmark reports are strings, whatever the platform."""
    assert isinstance(cpu_model(), str) and cpu_model()
    assert all(isinstance(f, str) for f in cpu_flags())
