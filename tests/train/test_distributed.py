"""Tests of device / precision choice and the DeepSpeed config (somnray.train.distributed, .optim)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from somnray.train.config import DataConfig, ModelConfig, OptimConfig, PhaseConfig
from somnray.train.distributed import (build_deepspeed_config, choose_backend, choose_precision,
                                       micro_batch_size, precision_of, training_device)
from somnray.train.optim import build_optimizer, build_scheduler, lr_factor


def _phase(tiny_model_name: str, **sections) -> PhaseConfig:
    return PhaseConfig(name="p", data=DataConfig(dataset="ds", split={"name": "fixed"}),
                       model=ModelConfig(name=tiny_model_name), **sections)


@pytest.mark.parametrize("use_gpu, cuda, expected", [
    ("auto", False, "cpu"), ("auto", True, "cuda:0"), (False, True, "cpu"), (True, True, "cuda:0"),
])
def test_training_device(use_gpu, cuda, expected) -> None:
    """The device follows use_gpu and what the worker sees."""
    assert str(training_device(use_gpu, cuda_available=cuda)) == expected


def test_gpu_required_but_absent_raises() -> None:
    """use_gpu true without CUDA fails with advice instead of silently training on CPU."""
    with pytest.raises(RuntimeError, match="use_gpu is true"):
        training_device(True, cuda_available=False)


@pytest.mark.parametrize("precision, device, bf16, expected", [
    ("auto", "cpu", None, "fp32"), ("auto", "cuda", True, "bf16"), ("auto", "cuda", False, "fp16"),
    ("fp32", "cuda", True, "fp32"), ("fp16", "cuda", True, "fp16"), ("bf16", "cpu", None, "bf16"),
])
def test_choose_precision(precision, device, bf16, expected) -> None:
    """auto: bf16 on bf16-capable GPUs, fp16 on older GPUs, fp32 on CPU; explicit choices kept."""
    assert choose_precision(precision, device, bf16_supported=bf16) == expected


def test_bf16_on_old_gpu_raises() -> None:
    """An explicit bf16 on a GPU without bf16 support is refused."""
    with pytest.raises(RuntimeError, match="bf16"):
        choose_precision("bf16", "cuda", bf16_supported=False)


def test_backend_follows_device() -> None:
    """nccl on CUDA, gloo on CPU."""
    assert (choose_backend("cuda:1"), choose_backend("cpu")) == ("nccl", "gloo")


@pytest.mark.parametrize("world, accum, batch, micro", [
    (1, 1, 16, 16), (2, 1, 16, 8), (8, 1, 64, 8), (2, 2, 64, 16), (8, 4, 64, 2),
])
@pytest.mark.parametrize("stage", [0, 1, 2])  # stage 3: test_zero3_needs_one_worker
def test_gpu_deepspeed_config_as_data(tiny_model_name, world, accum, batch, micro, stage) -> None:
    """On N GPUs the batch sizes multiply out, ZeRO stage and bf16 are set, clipping is passed."""
    phase = _phase(tiny_model_name, optim=OptimConfig(batch_size=batch, grad_accum_steps=accum, clip_norm=1.0),
                   deepspeed={"zero_stage": stage, "precision": "auto"}, scaling={"num_workers": world})
    ds = build_deepspeed_config(phase, world, "cuda", bf16_supported=True)
    assert ds["train_batch_size"] == batch
    assert ds["train_micro_batch_size_per_gpu"] == micro
    assert ds["gradient_accumulation_steps"] == accum
    assert micro * accum * world == batch
    assert ds["zero_optimization"] == {"stage": stage}
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and precision_of(ds) == "bf16"
    assert ds["gradient_clipping"] == 1.0
    assert "optimizer" not in ds and "scheduler" not in ds  # torch client optimizer, our schedule
    assert "zero_allow_untested_optimizer" not in ds  # Adam is ZeRO-tested


def test_zero3_needs_one_worker(tiny_model_name) -> None:
    """ZeRO-3 with several workers is refused with the reason; on one worker it is accepted."""
    with pytest.raises(ValueError, match=r"zero_stage 3 cannot train .* several workers"):
        _phase(tiny_model_name, optim=OptimConfig(batch_size=16), deepspeed={"zero_stage": 3},
               scaling={"num_workers": 2})
    phase = _phase(tiny_model_name, optim=OptimConfig(batch_size=16), deepspeed={"zero_stage": 3})
    assert build_deepspeed_config(phase, 1, "cuda", bf16_supported=True)["zero_optimization"] == {"stage": 3}


def test_older_gpu_gets_fp16_and_cpu_fp32(tiny_model_name) -> None:
    """The same phase gives fp16 on a pre-Ampere GPU and fp32 on CPU; only precision differs."""
    phase = _phase(tiny_model_name, optim=OptimConfig(batch_size=8))
    gpu = build_deepspeed_config(phase, 1, "cuda", bf16_supported=False)
    cpu = build_deepspeed_config(phase, 1, "cpu")
    assert precision_of(gpu) == "fp16" and gpu["fp16"]["loss_scale"] == 0
    assert precision_of(cpu) == "fp32"
    assert {k: v for k, v in gpu.items() if k not in ("fp16", "bf16")} == \
           {k: v for k, v in cpu.items() if k not in ("fp16", "bf16")}
    assert "gradient_clipping" not in cpu


def test_sgd_under_zero_is_allowed_explicitly(tiny_model_name) -> None:
    """A non-Adam client optimizer under ZeRO sets zero_allow_untested_optimizer."""
    phase = _phase(tiny_model_name, optim=OptimConfig(optimizer="sgd", momentum=0.9, batch_size=8),
                   deepspeed={"zero_stage": 2})
    assert build_deepspeed_config(phase, 2, "cpu")["zero_allow_untested_optimizer"] is True
    phase0 = _phase(tiny_model_name, optim=OptimConfig(optimizer="sgd", batch_size=8))
    assert "zero_allow_untested_optimizer" not in build_deepspeed_config(phase0, 2, "cpu")


def test_uneven_batch_raises() -> None:
    """A global batch that does not split over workers × accumulation raises with the numbers."""
    with pytest.raises(ValueError, match=r"batch_size \(10\).*world size \(4\)"):
        micro_batch_size(10, 4, 1)


def test_deepspeed_accepts_the_config(tiny_model_name) -> None:
    """DeepSpeed's own config parser accepts what we build (single process)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    phase = _phase(tiny_model_name, optim=OptimConfig(batch_size=8, grad_accum_steps=2, clip_norm=5.0),
                   deepspeed={"zero_stage": 2})
    parsed = DeepSpeedConfig(build_deepspeed_config(phase, 1, "cpu"))
    assert (parsed.train_batch_size, parsed.gradient_accumulation_steps, parsed.zero_optimization_stage,
            parsed.gradient_clipping) == (8, 2, 2, 5.0)


def test_no_module_hard_codes_a_device() -> None:
    """No training module names a fixed CUDA device or calls .cuda()."""
    folder = Path(__import__("somnray.train.distributed", fromlist=["x"]).__file__).parent
    pattern = re.compile(r"""\.cuda\(|["']cuda:\d|device\s*=\s*["']cuda""")
    offenders = [f"{p.name}:{i}" for p in folder.glob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


@pytest.mark.parametrize("optimizer, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                            ("sgd", torch.optim.SGD)])
def test_build_optimizer_skips_frozen_parameters(optimizer, cls) -> None:
    """The client optimizer is the configured torch class over trainable parameters only."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    net[0].weight.requires_grad_(False)
    opt = build_optimizer(net.parameters(), OptimConfig(optimizer=optimizer, lr=0.01, amsgrad=False))
    assert isinstance(opt, cls)
    assert sum(len(g["params"]) for g in opt.param_groups) == 3


def test_lr_schedules() -> None:
    """Warm-up rises linearly, cosine ends at min_lr, step multiplies by gamma at milestones."""
    cos = OptimConfig(lr=1e-3, schedule="warmup_cosine", warmup_steps=10, min_lr=1e-5, max_steps=110)
    assert lr_factor(cos, 0) == pytest.approx(0.1) and lr_factor(cos, 9) == pytest.approx(1.0)
    assert lr_factor(cos, 60) == pytest.approx((1e-2 + 1) / 2)
    assert lr_factor(cos, 110) * 1e-3 == pytest.approx(1e-5)
    step = OptimConfig(lr=1e-3, schedule="step", step_milestones=(5,), step_gamma=0.1)
    assert (lr_factor(step, 4), lr_factor(step, 5)) == (1.0, pytest.approx(0.1))
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), step)
    sched = build_scheduler(opt, step)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
