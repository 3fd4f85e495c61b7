"""MCTA: multi-level cross-branch temporal attention, and the Transformer layer built around it.

Shen et al., NeurIPS 2024 (CIMSleepNet), Fig. 3 (MCTA) and Fig. 2 ("Transformer containing MCTA");
docs/models.md §1.2(d). Everything here follows the released code, whose quirks
are kept on purpose and flagged where they occur:

* the temporal convs are *causal* 1-D convs that convolve across the **token axis**: the token (or
  epoch) index is the conv's channel dimension and the features are its length;
* at the intra-epoch level an attention branch (causal convs on keys/values) and a Bi-GRU branch run
  over the ``T`` tokens of one epoch; the Bi-GRU output supplies half of the keys and values;
* at the inter-epoch level the intra Bi-GRU output supplies the queries (recurrent -> attention) and
  the pooled intra attention output feeds a second Bi-GRU over the epochs (attention -> recurrent);
  both branches are merged by a causal conv over the two of them.

Shape legend: ``B`` sequences, ``L`` epochs a sequence, ``N = B * L``, ``T`` tokens an epoch
(20 per modality), ``C`` token width (128), ``F = T * C`` flattened epoch (5120), ``K`` the context
the inter-epoch convs are built for (25 epochs), ``D = F // stride`` inter-epoch width (640).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

FfnResidual = Literal["released", "standard"]


class CausalConv1d(nn.Conv1d):
    """1-D conv padded by ``kernel - 1`` on both sides whose last ``kernel - 1`` outputs are cropped.

    This is the released code's causal conv (with ``stride > 1`` the crop still removes
    ``kernel - 1`` outputs, which is what makes a k2/s8 conv map 5120 features to exactly 640).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        self.crop = kernel_size - 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=self.crop)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - see class docstring
        y = super().forward(x)
        return y[..., :-self.crop] if self.crop else y

    @staticmethod
    def output_length(length: int, kernel_size: int, stride: int = 1) -> int:
        """Length of the output for an input of ``length``."""
        pad = kernel_size - 1
        return (length + 2 * pad - kernel_size) // stride + 1 - pad


class StdLayerNorm(nn.Module):
    """The released code's LayerNorm: ``a * (x - mean) / (std + eps) + b`` with the *unbiased* std.

    It differs from :class:`torch.nn.LayerNorm` (biased variance, eps inside the square root); kept
    for fidelity (§1.2(d).4).
    """

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


def multi_head_attention(query: Tensor, key: Tensor, value: Tensor, heads: int, dropout: float) -> Tensor:
    """Scaled dot-product attention with ``heads`` heads and no projections (as in the code).

    Parameters
    ----------
    query : Tensor
        ``(B', Lq, D)``.
    key, value : Tensor
        ``(B', Lk, D)``.
    heads : int
        Number of heads; ``D`` must be divisible by it.
    dropout : float
        Dropout on the attention probabilities (0 in eval mode is the caller's job).

    Returns
    -------
    Tensor
        ``(B', Lq, D)``.
    """
    batch, _, width = query.shape
    split = lambda t: t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2)  # (B', h, L, D/h)
    out = F.scaled_dot_product_attention(split(query), split(key), split(value), dropout_p=dropout)
    return out.transpose(1, 2).reshape(batch, -1, width)  # (B', h, Lq, D/h) -> (B', Lq, D)


class MultiLevelCrossBranchAttention(nn.Module):
    """MCTA (Fig. 3; docs/models.md §1.2(d) steps 2-3): intra-epoch then inter-epoch cross-branch attention.

    Parameters
    ----------
    tokens : int
        ``T``, tokens an epoch (20 per modality: 40 for EEG+EOG).
    width : int
        ``C``, token width (128).
    context : int
        ``K``, the epochs the inter-epoch convs mix (25, the paper's context). Sequences of another
        length are cut into windows of ``K`` epochs, the last one zero-padded, and the outputs of the
        padding are dropped; with ``L = K`` this is exactly the released model.
    intra_heads, inter_heads : int
        Heads at the two levels (4 and 8).
    inter_stride : int
        Stride of the k2 causal convs that map ``F`` features to ``D = F // stride`` (8).
    gru_dropout : float
        Dropout on both Bi-GRU outputs (0.5).
    attn_dropout : float
        Dropout on attention probabilities (0.1).
    """

    def __init__(self, tokens: int = 40, width: int = 128, context: int = 25, intra_heads: int = 4,
                 inter_heads: int = 8, inter_stride: int = 8, gru_dropout: float = 0.5,
                 attn_dropout: float = 0.1):
        super().__init__()
        flat = tokens * width
        out_dim = CausalConv1d.output_length(flat, 2, inter_stride)
        problems = []
        if width % intra_heads or width % 2:
            problems.append(f"token width {width} must be even and divisible by intra_heads={intra_heads}")
        if out_dim % inter_heads or out_dim % 2:
            problems.append(f"inter-epoch width {out_dim} (= {tokens}*{width}//{inter_stride}) must be "
                            f"even and divisible by inter_heads={inter_heads}")
        if tokens < 2 or context < 2:
            problems.append(f"need at least 2 tokens and a context of 2 epochs, got {tokens} and {context}")
        if problems:
            raise ValueError("invalid MCTA configuration: " + "; ".join(problems))
        self.tokens, self.width, self.context = tokens, width, context
        self.intra_heads, self.inter_heads = intra_heads, inter_heads
        self.out_dim = out_dim
        self.attn_dropout = attn_dropout
        half_t, half_k = tokens // 2, context // 2
        # Intra-epoch level: channels = tokens.
        self.intra_key = CausalConv1d(tokens, half_t, 3)
        self.intra_value = CausalConv1d(tokens, half_t, 3)
        self.intra_key_gru = CausalConv1d(tokens, half_t, 3)
        self.intra_value_gru = CausalConv1d(tokens, half_t, 3)
        self.intra_gru = nn.GRU(width, width // 2, num_layers=2, bidirectional=True, batch_first=True)
        # Inter-epoch level: channels = epochs of the context.
        self.inter_query = CausalConv1d(context, context, 2, stride=inter_stride)
        self.inter_key = CausalConv1d(context, half_k, 2, stride=inter_stride)
        self.inter_value = CausalConv1d(context, half_k, 2, stride=inter_stride)
        self.inter_key_gru = CausalConv1d(context, half_k, 3)
        self.inter_value_gru = CausalConv1d(context, half_k, 3)
        self.pool = nn.AdaptiveAvgPool1d(out_dim)
        self.inter_gru = nn.GRU(out_dim, out_dim // 2, num_layers=2, bidirectional=True, batch_first=True)
        self.merge = CausalConv1d(2, 1, 3)
        self.gru_dropout = nn.Dropout(gru_dropout)

    def _recurrent(self, gru: nn.GRU, x: Tensor) -> Tensor:
        return F.gelu(self.gru_dropout(gru(x)[0]))

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        """Run both levels.

        Parameters
        ----------
        query : Tensor
            ``(B, L, T, C)`` queries ``Q0`` (the pre-conv output).
        key_value : Tensor
            ``(B, L, T, C)`` ``K0 = V0 = LayerNorm(Q0)``.

        Returns
        -------
        Tensor
            ``(B, L, D)`` merged cross-branch output.
        """
        batch, length, tokens, width = query.shape
        q0 = query.reshape(batch * length, tokens, width)           # (N, T, C)
        kv = key_value.reshape(batch * length, tokens, width)       # (N, T, C)
        dropout = self.attn_dropout if self.training else 0.0

        # Intra-epoch level (step 2). The GRU runs over the T tokens as one sequence, crossing the
        # modality boundary (docs/models.md §1.6.9, as released). The released code also runs it on V0 and
        # discards the result; that dead computation is dropped.
        g_in = self._recurrent(self.intra_gru, kv)                  # (N, T, C)
        keys = torch.cat([self.intra_key(kv), self.intra_key_gru(g_in)], dim=1)        # (N, 2*(T//2), C)
        values = torch.cat([self.intra_value(kv), self.intra_value_gru(g_in)], dim=1)  # (N, 2*(T//2), C)
        a_in = multi_head_attention(q0, keys, values, self.intra_heads, dropout)        # (N, T, C)

        # Inter-epoch level (step 3), on windows of K epochs.
        g_seq = self._windows(g_in.reshape(batch, length, tokens * width))  # (B', K, F)
        a_seq = self._windows(a_in.reshape(batch, length, tokens * width))  # (B', K, F)
        q_out = self.inter_query(g_seq)                             # (B', K, D): recurrent -> attention
        g_out = self._recurrent(self.inter_gru, self.pool(a_seq))   # (B', K, D): attention -> recurrent
        keys = torch.cat([self.inter_key(g_seq), self.inter_key_gru(g_out)], dim=1)        # (B', 2*(K//2), D)
        values = torch.cat([self.inter_value(g_seq), self.inter_value_gru(g_out)], dim=1)  # (B', 2*(K//2), D)
        a_out = multi_head_attention(q_out, keys, values, self.inter_heads, dropout)        # (B', K, D)
        both = torch.stack([a_out, g_out], dim=2).flatten(0, 1)    # (B'*K, 2, D) branches as channels
        merged = self.merge(both).view(-1, self.context, self.out_dim)  # (B'*K, 1, D) -> (B', K, D)
        return merged.reshape(batch, -1, self.out_dim)[:, :length]  # (B, W*K, D) -> (B, L, D)

    def _windows(self, x: Tensor) -> Tensor:
        """``(B, L, F) -> (B * ceil(L/K), K, F)``, zero-padding the last window."""
        batch, length, feat = x.shape
        padded = math.ceil(length / self.context) * self.context
        if padded != length:
            x = F.pad(x, (0, 0, 0, padded - length))
        return x.reshape(batch * (padded // self.context), self.context, feat)  # windows of K epochs


class PlainTemporalAttention(nn.Module):
    """The Transformer without MCTA (CIMSleepNet Table 3's ablation): plain self-attention at both levels.

    Intra-epoch: self-attention over the ``T`` tokens of an epoch (keys = values = the normed
    tokens, as in MCTA, without its convs and Bi-GRU branch); the epoch is flattened and projected
    to ``D``; inter-epoch: self-attention over the ``L`` epochs of the sequence. Same interface and
    output width as :class:`MultiLevelCrossBranchAttention`, so only the attention differs.

    Parameters
    ----------
    tokens, width, intra_heads, inter_heads, inter_stride, attn_dropout
        As :class:`MultiLevelCrossBranchAttention` (``D = T·C`` after a k2 / ``inter_stride`` conv's crop).
    """

    def __init__(self, tokens: int = 40, width: int = 128, intra_heads: int = 4, inter_heads: int = 8,
                 inter_stride: int = 8, attn_dropout: float = 0.1):
        super().__init__()
        self.out_dim = CausalConv1d.output_length(tokens * width, 2, inter_stride)
        if width % intra_heads or self.out_dim % inter_heads:
            raise ValueError(f"token width {width} and epoch width {self.out_dim} must be divisible by "
                             f"intra_heads={intra_heads} and inter_heads={inter_heads}")
        self.intra_heads, self.inter_heads, self.attn_dropout = intra_heads, inter_heads, attn_dropout
        self.project = nn.Linear(tokens * width, self.out_dim)

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        """``(B, L, T, C)`` queries and keys/values → ``(B, L, D)``."""
        batch, length, tokens, width = query.shape
        dropout = self.attn_dropout if self.training else 0.0
        kv = key_value.reshape(batch * length, tokens, width)
        a_in = multi_head_attention(query.reshape(batch * length, tokens, width), kv, kv, self.intra_heads, dropout)
        epochs = self.project(a_in.reshape(batch, length, tokens * width))  # (B, L, D)
        return multi_head_attention(epochs, epochs, epochs, self.inter_heads, dropout)


#: Temporal attention inside CIMSleepNet's Transformer layer: MCTA, or plain attention (ablation).
TEMPORAL_ATTENTION = ("mcta", "plain")


class PositionwiseFeedForward(nn.Sequential):
    """``Linear(D, 4D) -> ReLU -> Dropout -> Linear(4D, D)`` (§1.2(d).4)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.5):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class MCTATransformerLayer(nn.Module):
    """The one Transformer layer of CIMSleepNet (§1.2(d) steps 1 and 4): ``(B, L, T, C) -> (B, L, D)``.

    1. ``Q0 = CausalConv_k7(tokens -> tokens)(x)``; ``K0 = V0 = LN(Q0)``.
    2. ``f = MCTA(Q0, K0, V0)``; released wrapper ``f <- f + Dropout(f)`` (no identity residual: the
       input is ``T x C`` and the output ``D``).
    3. FFN sub-layer, ``ffn_residual="released"``: ``g = FFN(LN(f)); g <- g + Dropout(g)``;
       ``"standard"``: ``g = f + Dropout(FFN(LN(f)))`` (docs/models.md §1.2(d).4 [D] flag).
    4. Final ``LN(g)``.

    All LayerNorms are :class:`StdLayerNorm`.

    Parameters
    ----------
    tokens, width, context, intra_heads, inter_heads, inter_stride, attn_dropout
        See :class:`MultiLevelCrossBranchAttention`.
    ffn_mult : int
        FFN hidden size as a multiple of ``D`` (2560 = 4 * 640).
    dropout : float
        Sub-layer, FFN and Bi-GRU dropout (0.5).
    ffn_residual : {"released", "standard"}
    temporal_attention : {"mcta", "plain"}
        MCTA, or :class:`PlainTemporalAttention` (the "without MCTA" ablation).
    """

    def __init__(self, tokens: int = 40, width: int = 128, context: int = 25, intra_heads: int = 4,
                 inter_heads: int = 8, inter_stride: int = 8, ffn_mult: int = 4, dropout: float = 0.5,
                 attn_dropout: float = 0.1, ffn_residual: FfnResidual = "released",
                 temporal_attention: str = "mcta"):
        super().__init__()
        if ffn_residual not in ("released", "standard"):
            raise ValueError(f"ffn_residual must be 'released' or 'standard', got {ffn_residual!r}")
        if temporal_attention not in TEMPORAL_ATTENTION:
            raise ValueError(f"temporal_attention must be one of {list(TEMPORAL_ATTENTION)}, "
                             f"got {temporal_attention!r}")
        self.ffn_residual = ffn_residual
        self.query_conv = CausalConv1d(tokens, tokens, 7)
        self.attn_norm = StdLayerNorm(width)
        if temporal_attention == "mcta":
            self.attention = MultiLevelCrossBranchAttention(tokens, width, context, intra_heads, inter_heads,
                                                            inter_stride, dropout, attn_dropout)
        else:
            self.attention = PlainTemporalAttention(tokens, width, intra_heads, inter_heads, inter_stride,
                                                    attn_dropout)
        self.out_dim = self.attention.out_dim
        self.ffn_norm = StdLayerNorm(self.out_dim)
        self.ffn = PositionwiseFeedForward(self.out_dim, ffn_mult * self.out_dim, dropout)
        self.final_norm = StdLayerNorm(self.out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, L, T, C)`` tokens to ``(B, L, D)`` epoch features."""
        batch, length, tokens, width = x.shape
        q0 = self.query_conv(x.reshape(batch * length, tokens, width))  # (N, T, C), conv over tokens
        q0 = q0.view(batch, length, tokens, width)                      # (B, L, T, C)
        f = self.attention(q0, self.attn_norm(q0))                      # (B, L, D)
        f = f + self.dropout(f)
        if self.ffn_residual == "released":
            g = self.ffn(self.ffn_norm(f))
            g = g + self.dropout(g)
        else:
            g = f + self.dropout(self.ffn(self.ffn_norm(f)))
        return self.final_norm(g)
