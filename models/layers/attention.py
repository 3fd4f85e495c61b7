"""Multi-head attention with optional Shaw-style relative positions.

Shared by CoRe-Sleep's inner/outer Transformers (relative positions, docs/models.md §2.2) and
MC²SleepNet's backbone and sequence Transformers (sinusoidal absolute positions, §3.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        if query is key and key is value:
            # Self-attention: one (D → 3D) product instead of three (D → D) ones over the same
            # tokens — fewer passes over the input and one larger, better-blocked GEMM.  The three
            # projections stay separate parameters (checkpoints and parameter groups unchanged).
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            q, k, v = (self._split(t) for t in F.linear(query, weight, bias).chunk(3, dim=-1))
        else:
            q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        # The relative-position term and the padding go in as one additive bias, so the
        # product, scaling, softmax and weighted sum run as one fused kernel (PyTorch's
        # scaled_dot_product_attention) instead of five passes over a (B, H, Tq, Tk) tensor.
        bias = None
        if self.rel_pos_clip is not None:
            tq, tk = q.shape[-2], k.shape[-2]
            dist = torch.arange(tk, device=q.device)[None, :] - torch.arange(tq, device=q.device)[:, None]
            idx = dist.clamp(-self.rel_pos_clip, self.rel_pos_clip) + self.rel_pos_clip  # (Tq, Tk)
            # q_i · a_r for every clipped distance r, then pick r = clip(j - i) per (i, j); the
            # kernel adds the bias after its 1/√d scaling, so the bias is scaled here.
            q_rel = torch.einsum("bhid,hrd->bhir", q, self.rel_key.to(q.dtype)) / math.sqrt(self.d_head)
            bias = torch.gather(q_rel, -1, idx.expand(*q_rel.shape[:2], tq, tk))  # (B, H, Tq, Tk)
        if key_padding_mask is not None:
            pad = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                key_padding_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, Tk)
            bias = pad if bias is None else bias + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)  # (B, Tq, D)
        return self.out_proj(out)


__all__ = ["MultiHeadAttention"]
