"""The per-modality temporal CNN feature extractor of CIMSleepNet.

Shen et al., NeurIPS 2024 (CIMSleepNet), Fig. 2 "temporal CNN"; docs/models.md
§1.2(c). The layer table is the released code's (an AttnSleep-style front-end): bias-free convs each
followed by BatchNorm + GELU, two max-pools and one dropout.

Shape legend: ``N`` flattened epochs, ``S = 3000`` samples an epoch, ``C`` output width (128).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


def _conv_bn_gelu(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm1d(out_channels), nn.GELU()]


class TemporalCNN(nn.Module):
    """Temporal CNN of §1.2(c): ``(N, 1, 3000) -> (N, C, 20)``.

    Parameters
    ----------
    widths : sequence of 2 int
        Channels of the first two convs and of the last two (paper: 64, 128).
    dropout : float
        Dropout after the first pool (paper: 0.5).
    """

    #: Time steps the extractor leaves of a 3000-sample epoch (tokens a modality contributes).
    OUTPUT_STEPS = 20

    def __init__(self, widths: Sequence[int] = (64, 128), dropout: float = 0.5):
        super().__init__()
        if len(widths) != 2:
            raise ValueError(f"temporal CNN widths must list 2 channel counts, got {list(widths)}")
        w1, w2 = widths
        self.out_channels = w2
        self.layers = nn.Sequential(
            *_conv_bn_gelu(1, w1, 50, 6, 24),        # (N, w1, 500)
            *_conv_bn_gelu(w1, w1, 25, 3, 12),       # (N, w1, 167)
            nn.MaxPool1d(8, stride=2, padding=4),    # (N, w1, 84)
            nn.Dropout(dropout),
            *_conv_bn_gelu(w1, w2, 8, 1, 2),         # (N, w2, 81)
            *_conv_bn_gelu(w2, w2, 8, 1, 2),         # (N, w2, 78)
            nn.MaxPool1d(4, stride=4, padding=1),    # (N, w2, 20)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, 1, S)`` epochs to ``(N, C, 20)`` feature maps."""
        return self.layers(x)
