"""Post-norm Transformer layers with optional cross-attention, and positional encodings.

One layer (docs/models.md §2.2 for CoRe-Sleep, §3.2 for MC²SleepNet)::

    h   = LN(x + Drop(SA(x)))
    h   = LN(h + Drop(CA(h, context)))          # only when cross-attention is built and used
    out = LN(h + Drop(W2 · Drop(act(W1 · h))))  # FFN

The two papers differ in which side of the cross-attention provides the queries:

* CoRe-Sleep (Eq. 6–7): queries come from the *other* modality (``context``), keys and values
  from the stream's own tokens (``cross_query="context"``); both sequences are time-aligned so
  token ``i`` of the result is added back to own token ``i``.
* MC²SleepNet: queries from the stream itself, keys/values from the other view
  (``cross_query="self"``).

A layer built with cross-attention can still run without it (``context=None``): CoRe-Sleep's
unimodal and multimodal passes share the SA and FFN weights and only the multimodal pass uses CA.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class FeedForward(nn.Module):
    """``W2 · Drop(act(W1 · x))`` (the position-wise FFN)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), _ACTIVATIONS[activation](**({"inplace": True} if activation == "relu" else {})),
                                 nn.Dropout(dropout), nn.Linear(d_ff, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerLayer(nn.Module):
    """A post-norm Transformer layer: self-attention, optional cross-attention, FFN.

    Parameters
    ----------
    d_model, n_heads, d_ff : int
        Width, heads and FFN width (both papers: 128, 8, 1024).
    dropout : float
        Dropout on each sub-layer's output and inside the FFN (CoRe-Sleep 0.3, MC² 0.1).
    attn_dropout : float
        Dropout on attention probabilities.
    activation : {"relu", "gelu"}
        FFN non-linearity (CoRe-Sleep ReLU, MC² GELU).
    cross_attention : bool
        Build a cross-attention sub-layer.
    cross_query : {"context", "self"}
        Which side provides the cross-attention queries (see the module docstring).
    rel_pos_clip : int, optional
        Shaw relative positions in the self-attention (and cross-attention) with this clip.
    out_bias : bool
        Bias on the attention output projections.
    """

    def __init__(self, d_model: int = 128, n_heads: int = 8, d_ff: int = 1024, dropout: float = 0.1,
                 attn_dropout: float = 0.0, activation: str = "relu", cross_attention: bool = False,
                 cross_query: Literal["context", "self"] = "context", rel_pos_clip: int | None = None,
                 out_bias: bool = True):
        super().__init__()
        if cross_query not in ("context", "self"):
            raise ValueError(f"cross_query must be 'context' or 'self', got {cross_query!r}")
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, out_bias, rel_pos_clip)
        self.norm_sa = nn.LayerNorm(d_model)
        self.cross_query = cross_query
        self.cross_attn = (MultiHeadAttention(d_model, n_heads, attn_dropout, out_bias, rel_pos_clip)
                           if cross_attention else None)
        self.norm_ca = nn.LayerNorm(d_model) if cross_attention else None
        self.ffn = FeedForward(d_model, d_ff, dropout, activation)
        self.norm_ff = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None,
                key_padding_mask: Tensor | None = None,
                context_padding_mask: Tensor | None = None,
                cross_mask: Tensor | None = None) -> Tensor:
        """Run the layer on ``x`` ``(B, T, D)``; ``context`` ``(B, Tc, D)`` enables cross-attention.

        ``key_padding_mask`` ``(B, T)`` and ``context_padding_mask`` ``(B, Tc)`` mark keys to ignore.
        ``cross_mask`` ``(B, T)`` bool, optional: tokens where it is false skip the cross-attention
        sub-layer (their ``h`` passes through unchanged), e.g. CoRe-Sleep epochs at which the other
        modality, which would provide the query, is absent.
        """
        h = self.norm_sa(x + self.dropout(self.self_attn(x, x, x, key_padding_mask)))
        if context is not None:
            if self.cross_attn is None:
                raise ValueError("context was given to a TransformerLayer built without cross-attention")
            if self.cross_query == "context":
                # CoRe-Sleep Eq. 6–7: the other modality asks, this stream answers.
                ca = self.cross_attn(context, h, h, key_padding_mask)
            else:
                ca = self.cross_attn(h, context, context, context_padding_mask)
            h_ca = self.norm_ca(h + self.dropout(ca))
            h = h_ca if cross_mask is None else torch.where(cross_mask[..., None], h_ca, h)
        return self.norm_ff(h + self.dropout(self.ffn(h)))


class TransformerStack(nn.Module):
    """``n_layers`` :class:`TransformerLayer` s; the same ``context`` is given to every layer
    (CoRe-Sleep's code and MC²SleepNet's public code both do this)."""

    def __init__(self, n_layers: int, **layer_kwargs):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.layers = nn.ModuleList(TransformerLayer(**layer_kwargs) for _ in range(n_layers))

    def forward(self, x: Tensor, context: Tensor | None = None,
                key_padding_mask: Tensor | None = None,
                context_padding_mask: Tensor | None = None,
                cross_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, context, key_padding_mask, context_padding_mask, cross_mask)
        return x


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sine/cosine position code of Vaswani et al. (2017) to ``(B, T, D)`` tokens."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} tokens is longer than max_len={self.pe.shape[0]}")
        return x + self.pe[: x.shape[1]].to(x.dtype)


__all__ = ["FeedForward", "TransformerLayer", "TransformerStack", "SinusoidalPositionalEncoding"]
