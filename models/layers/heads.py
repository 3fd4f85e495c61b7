"""MLP classification heads applied to every epoch of a sequence.

CoRe-Sleep (Kontras et al., TNSRE 2024, §II-F, "2-layer MLP for predictors ... 0.3 dropout") uses
three of these (multimodal, EEG, EOG); its released code gives each two hidden layers of 1024
(docs/models.md §2.2):
``Linear 128→1024, ReLU, Dropout, Linear 1024→1024, ReLU, Dropout, Linear 1024→5``.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..base import N_CLASSES


class MLPHead(nn.Module):
    """``[Linear → ReLU → Dropout] × len(hidden)`` followed by a linear classifier.

    Parameters
    ----------
    d_in : int
        Input width ``D``.
    hidden : sequence of int
        Hidden widths (CoRe-Sleep: ``(1024, 1024)``); empty gives a linear classifier.
    n_classes : int
        Output classes (5 sleep stages).
    dropout : float
        Dropout after each hidden activation (CoRe-Sleep 0.3).

    Shapes
    ------
    ``(..., D)`` → ``(..., n_classes)``.
    """

    def __init__(self, d_in: int, hidden: Sequence[int] = (1024, 1024), n_classes: int = N_CLASSES,
                 dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        width = d_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


__all__ = ["MLPHead"]
