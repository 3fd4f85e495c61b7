"""Multi-head attention with optional Shaw-style relative positions.

Shared by CoRe-Sleep's inner/outer Transformers (relative positions, docs/models.md §2.2) and
MC²SleepNet's backbone and sequence Transformers (sinusoidal absolute positions, §3.2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``n_heads`` heads.

    With ``rel_pos_clip = c``, a learnable vector per head and clipped relative distance is added
    to the keys (Shaw et al., 2018): ``score_ij = q_i · (k_j + a_{clip(j - i, ±c)}) / √d_head``,
    the form docs/models.md §2.2 chooses for CoRe-Sleep (relative distances clipped to ±6, no absolute
    position embedding).

    Parameters
    ----------
    d_model : int
        Token width ``D``.
    n_heads : int
        Number of heads; ``D`` must divide evenly.
    dropout : float
        Dropout on the attention probabilities.
    out_bias : bool
        Bias of the output projection (CoRe-Sleep's code has none).
    rel_pos_clip : int, optional
        Clip distance for relative positions; None disables them.

    Shapes
    ------
    query ``(B, Tq, D)``, key/value ``(B, Tk, D)`` → ``(B, Tq, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, out_bias: bool = True,
                 rel_pos_clip: int | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model, bias=out_bias)
        self.dropout = nn.Dropout(dropout)
        self.rel_pos_clip = rel_pos_clip
        if rel_pos_clip is not None:
            self.rel_key = nn.Parameter(torch.empty(n_heads, 2 * rel_pos_clip + 1, self.d_head))
            nn.init.normal_(self.rel_key, std=0.02)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend from ``query`` to ``key``/``value``.

        Parameters
        ----------
        key_padding_mask : Tensor, optional
            ``(B, Tk)`` bool, true where a key must be ignored.
        """
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
        if self.rel_pos_clip is not None:
            tq, tk = q.shape[-2], k.shape[-2]
            dist = torch.arange(tk, device=q.device)[None, :] - torch.arange(tq, device=q.device)[:, None]
            idx = dist.clamp(-self.rel_pos_clip, self.rel_pos_clip) + self.rel_pos_clip  # (Tq, Tk)
            # q_i · a_r for every clipped distance r, then pick r = clip(j - i) per (i, j).
            q_rel = torch.einsum("bhid,hrd->bhir", q, self.rel_key.to(q.dtype))  # (B, H, Tq, R)
            scores = scores + torch.gather(q_rel, -1, idx.expand(*q_rel.shape[:2], tq, tk))
        scores = scores / math.sqrt(self.d_head)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        attn = self.dropout(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        out = (attn @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)  # (B, Tq, D)
        return self.out_proj(out)


__all__ = ["MultiHeadAttention"]
