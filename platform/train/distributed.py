"""Device, precision, process-group backend and the DeepSpeed config of a training phase.

Nothing here hard-codes a device: the device follows ``scaling.use_gpu`` and what the worker
sees, the precision follows the device (``auto``: bf16 on GPUs that support it, fp16 on older
GPUs, fp32 on CPU), and the backend follows the device (nccl on CUDA, gloo otherwise). The
hardware probes are keyword arguments so that GPU settings can be checked as data on a CPU
machine.

The DeepSpeed config carries batch sizes, ZeRO stage, precision and clipping only: the optimizer
and the schedule are torch objects handed to ``deepspeed.initialize`` (see :mod:`.optim`).

Scoring a trained model (evaluation, ``somnray score``, the Serve app) has its own device and
precision policy, with ``bf16`` on CPUs only where it is measured faster: :mod:`somnray.scoring.device`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .config import PhaseConfig

Precision = Literal["fp32", "bf16", "fp16"]

#: Optimizers DeepSpeed's ZeRO accepts without ``zero_allow_untested_optimizer`` (torch's Adam family).
_ZERO_TESTED_OPTIMIZERS = ("adam", "adamw")


def training_device(use_gpu: Literal["auto"] | bool, *, cuda_available: bool | None = None,
                  device_index: int = 0) -> torch.device:
    """The torch device a worker trains on.

    Parameters
    ----------
    use_gpu : "auto" or bool
        ``scaling.use_gpu``: ``auto`` takes a GPU when one is visible.
    cuda_available : bool, optional
        Whether CUDA is usable (default: ask torch).
    device_index : int
        CUDA device index within the worker's visible devices (Ray Train sets
        ``CUDA_VISIBLE_DEVICES`` per worker, so usually 0 or the local rank).

    Raises
    ------
    RuntimeError
        ``use_gpu`` is true but no CUDA device is visible.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if use_gpu is True and not cuda_available:
        raise RuntimeError("scaling.use_gpu is true but this worker sees no CUDA device; set use_gpu "
                           "to auto or false, or schedule the workers on GPU nodes")
    if use_gpu is False or not cuda_available:
        return torch.device("cpu")
    return torch.device("cuda", device_index)


def choose_precision(precision: Literal["auto", "fp32", "bf16", "fp16"], device: torch.device | str, *,
                     bf16_supported: bool | None = None) -> Precision:
    """Resolve ``deepspeed.precision`` for ``device``.

    ``auto`` gives fp32 on CPU, bf16 on GPUs that support it (Ampere and later) and fp16 on older
    GPUs. An explicit choice is kept, except bf16 on a GPU without bf16 support, which raises.

    Parameters
    ----------
    bf16_supported : bool, optional
        Whether the CUDA device supports bf16 (default: ask torch; only consulted on CUDA).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32" if precision == "auto" else precision
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if bf16_supported else "fp16"
    if precision == "bf16" and not bf16_supported:
        raise RuntimeError("deepspeed.precision is bf16 but this GPU does not support bf16; use fp16 or auto")
    return precision


def choose_backend(device: torch.device | str) -> Literal["nccl", "gloo"]:
    """Collective backend for ``device``: nccl on CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def micro_batch_size(batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Sequences per worker per micro-step, so that micro × accumulation × world = global batch.

    Raises
    ------
    ValueError
        If the global batch does not split evenly.
    """
    if world_size < 1 or grad_accum_steps < 1:
        raise ValueError(f"world_size and grad_accum_steps must be >= 1, got {world_size}, {grad_accum_steps}")
    per = world_size * grad_accum_steps
    if batch_size % per:
        raise ValueError(f"optim.batch_size ({batch_size}) is not a multiple of world size ({world_size}) × "
                         f"optim.grad_accum_steps ({grad_accum_steps}); choose a batch size divisible by {per}")
    return batch_size // per


def build_deepspeed_config(cfg: PhaseConfig, world_size: int, device: torch.device | str, *,
                           bf16_supported: bool | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict of a phase on ``world_size`` workers of ``device`` type.

    Parameters
    ----------
    cfg : PhaseConfig
        The phase (its ``optim`` and ``deepspeed`` sections are used).
    world_size : int
        Number of data-parallel workers.
    device : torch.device or str
        The workers' device (it decides the precision).
    bf16_supported : bool, optional
        Passed to :func:`choose_precision`.

    Returns
    -------
    dict
        ``train_batch_size``, ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``
        (consistent for ``world_size``), ``zero_optimization.stage``, ``bf16`` / ``fp16``,
        ``gradient_clipping`` (when set) and ``zero_allow_untested_optimizer`` for non-Adam
        client optimizers under ZeRO.
    """
    optim = cfg.optim
    micro = micro_batch_size(optim.batch_size, world_size, optim.grad_accum_steps)
    precision = choose_precision(cfg.deepspeed.precision, device, bf16_supported=bf16_supported)
    stage = cfg.deepspeed.zero_stage
    ds: dict[str, Any] = {
        "train_batch_size": optim.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": optim.grad_accum_steps,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        # loss_scale 0 = dynamic loss scaling, DeepSpeed's recommended fp16 setting.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # The trainer logs its own metrics; DeepSpeed's periodic prints would only add noise.
        "steps_per_print": 2 ** 31 - 1,
        "wall_clock_breakdown": False,
    }
    if optim.clip_norm is not None:
        ds["gradient_clipping"] = float(optim.clip_norm)
    if stage > 0 and optim.optimizer not in _ZERO_TESTED_OPTIMIZERS:
        ds["zero_allow_untested_optimizer"] = True
    return ds


def autocast_dtype(precision: Precision) -> torch.dtype:
    """The dtype model inputs are cast to for ``precision`` (DeepSpeed casts the weights)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_of(ds_config: dict[str, Any]) -> Precision:
    """The precision a DeepSpeed config dict enables."""
    if ds_config.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"
