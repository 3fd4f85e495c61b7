"""SleePyCo's raw-signal CNN backbone with squeeze-and-excitation channel gates.

Lee et al., "SleePyCo: Automatic sleep scoring with feature pyramid and contrastive learning"
(Expert Systems with Applications, 2024; code ``gist-ailab/SleePyCo``, ``models/sleepyco.py``),
re-used by MC²SleepNet (Na et al., 2024, §3.1 "Epoch level training") as the raw-signal backbone
``F_Sg``. Layer configuration as in SleePyCo's code (docs/models.md §3.2):

* 5 blocks; every convolution has kernel 3, stride 1, "same" padding, and is followed by
  BatchNorm and PReLU. Widths 64 (2 convs), 128 (2), 192 (3), 256 (3), 256 (3).
* A squeeze-and-excitation gate (average pool → Linear C→C/16 → ReLU → Linear → sigmoid) after
  the last BatchNorm of each block, before its PReLU.
* Blocks 2–5 start with a max-pool of width 5; the input is zero-padded (split left/right) to a
  multiple of 5 first, so 3000 → 600 → 120 → 24 → 5 (24 padded to 25).

Shapes: ``x (N, 1, S)`` → ``(N, C_last, S / 5**4)``; for 30-s epochs at 100 Hz ``(N, 256, 5)``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class PaddedMaxPool1d(nn.Module):
    """Max-pool of ``size`` with stride ``size``, after zero-padding the length to a multiple of it.

    The pad is split as evenly as possible, the extra sample going right (SleePyCo's ``MaxPool1d``).
    Zero padding (not ``-inf``) is what SleePyCo does; after a PReLU the features can be negative,
    so a padded border can win the max, as in the original.
    """

    def __init__(self, size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"max-pool size must be >= 1, got {size}")
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        remainder = x.shape[-1] % self.size
        if remainder:
            pad = self.size - remainder
            x = F.pad(x, (pad // 2, pad - pad // 2))
        return F.max_pool1d(x, self.size, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class ChannelGate(nn.Module):
    """Squeeze-and-excitation gate: ``x · sigmoid(W2 · ReLU(W1 · mean_t(x)))``.

    Parameters
    ----------
    channels : int
        Number of channels ``C``.
    reduction : int
        Bottleneck ratio; the hidden width is ``max(1, C // reduction)`` (SleePyCo: 16).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.mlp(x.mean(dim=-1)).sigmoid()  # (N, C): one gate per channel
        return x * scale.unsqueeze(-1)


class SleePyCoBackbone(nn.Module):
    """SleePyCo's five-block CNN feature extractor (``pretrain`` mode: last block only).

    Parameters
    ----------
    in_channels : int
        Input channels (one EEG derivation in MC²SleepNet).
    widths : sequence of int
        Output width of each block (SleePyCo: 64, 128, 192, 256, 256).
    depths : sequence of int
        Convolutions per block (SleePyCo: 2, 2, 3, 3, 3).
    pool_size : int
        Max-pool width at the start of every block but the first (SleePyCo: 5).
    se_reduction : int
        Squeeze-and-excitation bottleneck ratio (SleePyCo: 16).

    Shapes
    ------
    ``(N, in_channels, S)`` → ``(N, widths[-1], ceil-ish(S / pool_size**(len(widths) - 1)))``.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (64, 128, 192, 256, 256),
                 depths: Sequence[int] = (2, 2, 3, 3, 3), pool_size: int = 5, se_reduction: int = 16):
        super().__init__()
        widths, depths = tuple(widths), tuple(depths)
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths and depths must be non-empty and of equal length, got "
                             f"widths={list(widths)} and depths={list(depths)}")
        if min(depths) < 1 or min(widths) < 1:
            raise ValueError(f"every block needs >= 1 convolution and >= 1 channel, got "
                             f"widths={list(widths)} and depths={list(depths)}")
        self.widths = widths
        self.pool_size = pool_size
        blocks = []
        channels = in_channels
        for index, (width, depth) in enumerate(zip(widths, depths)):
            layers: list[nn.Module] = [] if index == 0 else [PaddedMaxPool1d(pool_size)]
            for conv_index in range(depth):
                layers += [nn.Conv1d(channels, width, kernel_size=3, padding=1), nn.BatchNorm1d(width)]
                if conv_index == depth - 1:
                    layers.append(ChannelGate(width, se_reduction))
                layers.append(nn.PReLU())
                channels = width
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SleePyCo's initialisation: Kaiming-normal (fan-out) convolutions, unit BatchNorm."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def output_length(self, n_samples: int) -> int:
        """Number of time steps left after the pools for an input of ``n_samples``."""
        for _ in range(len(self.widths) - 1):
            n_samples = -(-n_samples // self.pool_size)
        return n_samples

    def forward(self, x: Tensor) -> Tensor:
        """Feature map ``(N, C_last, T)`` of signals ``x`` ``(N, in_channels, S)``."""
        return self.blocks(x)


__all__ = ["ChannelGate", "PaddedMaxPool1d", "SleePyCoBackbone"]
