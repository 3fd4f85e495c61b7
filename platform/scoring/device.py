"""The device and arithmetic scoring runs in.

One policy for every scoring path (evaluation, cohort scoring, the Serve app):

* device ``auto``: CUDA when a GPU is visible, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as named;
* precision ``auto``: bf16 autocast on GPUs that support it; on a CPU with native bf16 arithmetic
  (AVX512-BF16 or AMX) bf16 only when a timed probe of the model shows it clearly faster than
  fp32 on this machine (:func:`faster_autocast`), fp32 elsewhere; ``fp32``, ``bf16``, or ``fp16``
  (GPUs only) as named.  bf16 stays within the stage-agreement bar the tests check for every
  architecture (≥ 99 % of epochs identical to fp32 on trained weights).

Training decides its device and precision differently (from ``scaling.use_gpu`` and
``deepspeed.precision``, with DeepSpeed casting the weights): see
:mod:`somnray.train.distributed`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import torch

from somnray.core.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: Autocast dtype → the precision's name (None: no autocast, plain fp32).
_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

#: How much faster (ratio of fp32 to bf16 time) bf16 must be before ``auto`` takes it.  A margin,
#: not a tie-break: on a busy machine two close timings can swap, and a choice that flips from one
#: load to the next would make a night's probabilities depend on the machine's mood.
BF16_MIN_SPEEDUP = 1.25


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (``/proc/cpuinfo``), empty where unknown."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`), for reports."""
    import platform

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles, where bf16 matmuls are several times faster than fp32."""
    probe = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            return bool(probe())
    return "amx_bf16" in cpu_flags()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX).

    Without either, bf16 autocast on CPU converts every operand and is slower than fp32, so
    ``auto`` does not even time it there.
    """
    return cpu_has_amx() or "avx512_bf16" in cpu_flags()


def faster_autocast(run: Callable[[torch.dtype | None], object], candidate: torch.dtype = torch.bfloat16,
                    *, repeats: int = 3, min_speedup: float = BF16_MIN_SPEEDUP) -> torch.dtype | None:
    """``candidate`` if running ``run`` under it is at least ``min_speedup`` × faster than fp32.

    Parameters
    ----------
    run : callable
        Runs one representative forward pass under the autocast dtype it is given (None: fp32).
    candidate : torch.dtype
        The autocast dtype to try against fp32.
    repeats : int
        Timed calls per precision after one untimed warm-up call each; the best is compared
        (the minimum is the least disturbed by other processes).
    min_speedup : float
        Required ratio of the fp32 time to the candidate's.

    Returns
    -------
    torch.dtype or None
        ``candidate`` or None (fp32).
    """
    best: dict[torch.dtype | None, float] = {}
    for dtype in (None, candidate):
        run(dtype)  # warm-up: kernels chosen, caches filled, first-call allocations made
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(dtype)
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return candidate if best[None] >= min_speedup * best[candidate] else None


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

    ``"auto"`` picks bf16 on GPUs that support it and fp32 elsewhere; on a CPU with native bf16
    the :class:`~somnray.scoring.scorer.Scorer` then times the model itself
    (:func:`faster_autocast`) and may still take bf16.

    Raises
    ------
    ConfigError
        An unknown precision, or fp16 on CPU.
    """
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return None
    if precision not in choices:
        raise ConfigError("precision", [f"precision must be one of ['auto', 'fp32', 'bf16', 'fp16'], "
                                        f"got {precision!r}"])
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision", ["precision 'fp16' is for GPUs; use 'bf16' or 'fp32' on CPU"])
    return choices[precision]


def precision_name(autocast_dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the name of an autocast dtype from :func:`scoring_autocast`."""
    return _PRECISION_NAMES[autocast_dtype]


__all__ = ["BF16_MIN_SPEEDUP", "Device", "Precision", "cpu_flags", "cpu_has_amx", "cpu_has_native_bf16",
           "cpu_model", "faster_autocast", "precision_name", "scoring_autocast", "scoring_device"]
