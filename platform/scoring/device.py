"""The device and arithmetic scoring runs in.

One policy for every scoring path (evaluation, cohort scoring, the Serve app):

* device ``auto``: CUDA when a GPU is visible, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as named;
* precision ``auto``: bf16 autocast on GPUs that support it and on CPUs with AMX bf16 tiles, fp32
  elsewhere; ``fp32``, ``bf16``, or ``fp16`` (GPUs only) as named.

Training decides its device and precision differently (from ``scaling.use_gpu`` and
``deepspeed.precision``, with DeepSpeed casting the weights): see
:mod:`somnray.train.distributed`.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Literal

import torch

from somnray.core.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: Autocast dtype → the precision's name (None: no autocast, plain fp32).
_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles, where bf16 matmuls are several times faster than fp32.

    Without AMX (or at least AVX512-BF16) bf16 autocast on CPU is *slower* than fp32, so it is
    only chosen automatically when the hardware supports it natively.
    """
    probe = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            return bool(probe())
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        return "amx_bf16" in line.split()
    return False


def scoring_device(device: Device | str = "auto") -> torch.device:
    """The device a scorer runs on: ``"auto"`` is CUDA when a GPU is visible, else CPU.

    Raises
    ------
    ConfigError
        Not a device name, or CUDA asked for on a machine without a visible GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError("device", [f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r} ({exc})"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", [f"device {device!r} was asked for but no CUDA GPU is visible"])
    return dev


def scoring_autocast(device: torch.device, precision: Precision | str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``"auto"`` picks bf16 on GPUs that support it and on CPUs with AMX, fp32 elsewhere.

    Raises
    ------
    ConfigError
        An unknown precision, or fp16 on CPU.
    """
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_amx() else None
    if precision not in choices:
        raise ConfigError("precision", [f"precision must be one of ['auto', 'fp32', 'bf16', 'fp16'], "
                                        f"got {precision!r}"])
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision", ["precision 'fp16' is for GPUs; use 'bf16' or 'fp32' on CPU"])
    return choices[precision]


def precision_name(autocast_dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the name of an autocast dtype from :func:`scoring_autocast`."""
    return _PRECISION_NAMES[autocast_dtype]


__all__ = ["Device", "Precision", "cpu_has_amx", "precision_name", "scoring_autocast", "scoring_device"]
