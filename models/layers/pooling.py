"""Epoch-wise attention pooling of an epoch's tokens into one vector.

MC²SleepNet (Na et al., 2024, §3.1, Eq. 9–12) condenses the tokens ``z_t`` of one 30-s epoch
(``T = 5`` CNN steps or ``T = 29`` spectrogram frames) with an additive attention:

    a_t = tanh(W z_t + b_a)                    (Eq. 9,  W ∈ R^{A×F})
    α_t = softmax_t(a_tᵀ a_e)                  (Eq. 10, learnable context vector a_e ∈ R^A)
    EW(Z) = Σ_t α_t z_t                        (Eq. 11)
    O = GAP(EW(Z))                             (Eq. 12)

A weighted sum is already one vector, so GAP after it is ambiguous. docs/models.md §3.2 [D] reads EW
as re-weighting the tokens (``α_t z_t``) and GAP as the mean over ``t``, i.e.
``O = (1/T) Σ_t α_t z_t`` (``reduce="mean"``, the default); ``reduce="sum"`` returns Eq. 11 as
written (``Σ_t α_t z_t``). The two differ only by the constant ``T``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class EpochAttentionPooling(nn.Module):
    """Additive attention over the tokens of an epoch, then average (or sum) pooling.

    Parameters
    ----------
    d_model : int
        Token width ``F`` (paper: 128).
    attention_size : int, optional
        Attention width ``A`` (paper: 128); defaults to ``d_model``.
    reduce : {"mean", "sum"}
        ``"mean"``: ``(1/T) Σ α_t z_t`` (docs/models.md [D]); ``"sum"``: ``Σ α_t z_t`` (Eq. 11).

    Shapes
    ------
    ``z (N, T, F)`` → ``(N, F)``; :meth:`attention_weights` gives ``α (N, T)``.
    """

    def __init__(self, d_model: int, attention_size: int | None = None,
                 reduce: Literal["mean", "sum"] = "mean"):
        super().__init__()
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        attention_size = attention_size or d_model
        self.proj = nn.Linear(d_model, attention_size)
        self.context = nn.Parameter(torch.empty(attention_size))
        nn.init.normal_(self.context, std=attention_size ** -0.5)
        self.reduce = reduce

    def attention_weights(self, z: Tensor) -> Tensor:
        """Attention ``α (N, T)`` over the tokens of ``z (N, T, F)`` (Eq. 9–10)."""
        scores = torch.tanh(self.proj(z)) @ self.context.to(z.dtype)  # (N, T)
        return torch.softmax(scores.float(), dim=-1).to(z.dtype)

    def forward(self, z: Tensor) -> Tensor:
        weighted = z * self.attention_weights(z).unsqueeze(-1)  # (N, T, F): α_t z_t
        return weighted.mean(dim=1) if self.reduce == "mean" else weighted.sum(dim=1)

    def extra_repr(self) -> str:
        return f"reduce={self.reduce!r}"


__all__ = ["EpochAttentionPooling"]
