"""Whole-night inference: per-epoch class probabilities for a recording of any length.

Models are trained on windows of ``L`` consecutive epochs.  A night of ``n`` epochs is scored by
cutting windows of ``L`` (stride ``L`` by default, or any smaller stride, e.g. 1, for the
sliding-window averaging CoRe-Sleep's test protocol allows), running them in batches, and
averaging each epoch's softmax over the windows that cover it.  A night shorter than ``L`` is run
as a single shorter window (every somnray model accepts any ``L``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from .base import SleepStagingModel


def window_starts(n_epochs: int, length: int, stride: int | None = None) -> np.ndarray:
    """Starts ``0, stride, …`` plus one window ending at the last epoch, so every epoch is covered."""
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    stride = stride or length
    if stride < 1 or stride > length:
        raise ValueError(f"stride must be in [1, {length}], got {stride}")
    if n_epochs <= length:
        return np.zeros(1 if n_epochs else 0, dtype=np.int64)
    starts = np.arange(0, n_epochs - length + 1, stride, dtype=np.int64)
    if starts[-1] + length < n_epochs:
        starts = np.append(starts, n_epochs - length)
    return starts


def window_index(n_epochs: int, length: int, stride: int | None = None) -> np.ndarray:
    """``(W, min(L, n))`` epoch indices of the windows :func:`window_starts` cuts from a night."""
    starts = window_starts(n_epochs, length, stride)
    return starts[:, None] + np.arange(min(length, n_epochs), dtype=np.int64)[None, :]


@torch.no_grad()
def window_probabilities(model: SleepStagingModel, signals: Mapping[str, Tensor], present: Tensor, *,
                         autocast_dtype: torch.dtype | None = None) -> Tensor:
    """Softmax ``(W, L, 5)`` (fp32) of a batch of windows already on the model's device.

    ``signals[m]`` is ``(W, L, 3000)`` per modality present, ``present`` ``(W, L, M)``; with
    ``autocast_dtype`` the forward pass runs under autocast, the softmax always in fp32.
    """
    with torch.autocast(present.device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        logits = model(signals, present).logits
    return torch.softmax(logits.float(), dim=-1)


def average_windows(n_epochs: int, windows: Iterable[tuple[np.ndarray | Tensor, np.ndarray | Tensor]]
                    ) -> np.ndarray:
    """Each epoch's probabilities averaged over the windows covering it.

    Parameters
    ----------
    n_epochs : int
        Epochs of the night.
    windows : iterable of (idx, probs)
        ``idx`` ``(W, L)`` epoch indices (:func:`window_index`) and ``probs`` ``(W, L, 5)`` their
        probabilities; consumed one item at a time, so a generator bounds memory.

    Returns
    -------
    ndarray
        ``(n, 5)`` float32; sums are accumulated in float64.
    """
    sums = torch.zeros(n_epochs, 5, dtype=torch.float64)
    counts = torch.zeros(n_epochs, dtype=torch.float64)
    for idx, probs in windows:
        flat = torch.as_tensor(idx).reshape(-1)
        sums.index_add_(0, flat, torch.as_tensor(probs).double().reshape(-1, 5))
        counts.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))
    return (sums / counts.clamp_min(1)[:, None]).float().numpy()


@torch.no_grad()
def predict_night(model: SleepStagingModel, signals: Mapping[str, np.ndarray | Tensor],
                  present: np.ndarray | Tensor, *, length: int, stride: int | None = None,
                  batch_size: int = 16, device: torch.device | str | None = None,
                  autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Per-epoch class probabilities ``(n, 5)`` for one recording.

    Parameters
    ----------
    model : SleepStagingModel
        A model in eval mode (it is put in eval mode here anyway).
    signals : mapping of str to array
        ``(n, 3000)`` per modality the recording has; modalities it lacks are simply left out.
    present : array
        ``(n, M)`` bool availability, columns ordered as ``model.modalities``.
    length : int
        Window length ``L`` (the model's training sequence length).
    stride : int, optional
        Window stride (default ``length``: non-overlapping windows plus one aligned to the end).
    batch_size : int
        Windows per forward pass (bounds memory for a 24-hour recording).
    device : torch.device or str, optional
        Where to run (default: where the model's parameters are).
    autocast_dtype : torch.dtype, optional
        Run under autocast with this dtype (bf16 on CPUs with AMX and on recent GPUs).

    Returns
    -------
    ndarray
        ``(n, 5)`` float32 probabilities averaged over the windows covering each epoch.
    """
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    present_t = torch.as_tensor(np.asarray(present), dtype=torch.bool)
    n = present_t.shape[0]
    if present_t.dim() != 2 or present_t.shape[1] != len(model.modalities):
        raise ValueError(f"present must be (n_epochs, {len(model.modalities)}), got {tuple(present_t.shape)}")
    sig = {m: torch.as_tensor(np.asarray(x, dtype=np.float32)) for m, x in signals.items()}
    for m, x in sig.items():
        if x.shape[0] != n:
            raise ValueError(f"signals[{m!r}] has {x.shape[0]} epochs but present has {n}")
    index = torch.as_tensor(window_index(n, length, stride))

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(index), batch_size):
            idx = index[i:i + batch_size]  # (W, L) epoch indices
            probs = window_probabilities(model, {m: x[idx].to(device) for m, x in sig.items()},
                                         present_t[idx].to(device), autocast_dtype=autocast_dtype)
            yield idx, probs.cpu()

    return average_windows(n, batches())


__all__ = ["average_windows", "predict_night", "window_index", "window_probabilities", "window_starts"]
