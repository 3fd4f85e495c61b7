"""Unit tests of the shared layers: STFT front end, multi-head attention with relative positions,
post-norm Transformer layers with cross-attention, MLP heads (the alignment loss is tested with
CoRe-Sleep in test_coresleep.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from somnray.models.layers.attention import MultiHeadAttention
from somnray.models.layers.heads import MLPHead
from somnray.models.layers.stft import STFTFrontEnd
from somnray.models.layers.transformer import TransformerLayer



# -- STFT --------------------------------------------------------------------------------------
def test_stft_shapes():
    """A 30-s epoch gives 29 frames × 129 bins, 128 with the DC bin dropped; leading dims kept."""
    x = torch.randn(2, 3, 3000)
    assert STFTFrontEnd()(x).shape == (2, 3, 29, 129)
    assert STFTFrontEnd(drop_dc=True)(x).shape == (2, 3, 29, 128)


def test_stft_matches_scipy():
    """The log-magnitude equals scipy's STFT (symmetric Hamming 200, hop 100, NFFT 256) in dB."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3000)
    window = scipy.signal.get_window("hamming", 200, fftbins=False)  # symmetric, as MATLAB's
    _, _, zxx = scipy.signal.stft(x, fs=100, window=window, nperseg=200, noverlap=100, nfft=256,
                                  detrend=False, return_onesided=True, boundary=None, padded=False)
    # scipy scales the STFT by 1/sum(window); undo it to get |X| as MATLAB's spectrogram.
    expected = 20 * np.log10(np.abs(zxx) * window.sum()).T  # (29, 129)
    got = STFTFrontEnd(normalize=False).log_spectrogram(torch.from_numpy(x).float()).numpy()
    assert got.shape == expected.shape == (29, 129)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    got_no_dc = STFTFrontEnd(normalize=False, drop_dc=True).log_spectrogram(torch.from_numpy(x).float())
    np.testing.assert_allclose(got_no_dc.numpy(), expected[:, 1:], atol=2e-3)


def test_stft_flat_epoch_is_finite():
    """A flat (detached) epoch gives the floor level, not -inf."""
    assert torch.isfinite(STFTFrontEnd()(torch.zeros(1, 3000))).all()


def test_stft_statistics_are_state_dict_buffers():
    """Per-bin statistics are saved in the state dict, restored by load_state_dict, and normalise."""
    fe = STFTFrontEnd(drop_dc=True)
    x = torch.randn(64, 3000) * 5 + 1
    mean, std = fe.statistics_from(x)
    fe.set_statistics(mean, std)
    state = fe.state_dict()
    assert set(state) == {"bin_mean", "bin_std"}
    fresh = STFTFrontEnd(drop_dc=True)
    fresh.load_state_dict(state)
    out = fresh(x)
    torch.testing.assert_close(out, fe(x))
    assert out.mean((0, 1)).abs().max() < 1e-3
    assert (out.std((0, 1)) - 1).abs().max() < 1e-2


def test_stft_rejects_wrong_statistics():
    """Statistics of the wrong size or non-finite values are refused with the expected size."""
    fe = STFTFrontEnd(drop_dc=True)
    with pytest.raises(ValueError, match="expected 128 per-bin statistics"):
        fe.set_statistics(torch.zeros(129), torch.ones(129))
    with pytest.raises(ValueError, match="finite"):
        fe.set_statistics(torch.full((128,), float("nan")), torch.ones(128))


# -- attention -----------------------------------------------------------------------------------
@pytest.mark.parametrize("clip, equivariant", [(None, True), (0, True), (2, False)])
def test_attention_permutation_equivariance_only_without_relative_positions(clip, equivariant):
    """Self-attention is permutation-equivariant without relative positions or with clip 0 (one
    shared bias per query row, which the softmax cancels), but not with clip > 0."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, rel_pos_clip=clip).eval()
    if clip is not None:
        torch.nn.init.normal_(attn.rel_key, std=1.0)
    x = torch.randn(2, 7, 16)
    perm = torch.randperm(7)
    out, out_perm = attn(x, x, x), attn(x[:, perm], x[:, perm], x[:, perm])
    assert torch.allclose(out[:, perm], out_perm, atol=1e-5) is equivariant


def test_key_padding_mask_hides_keys():
    """A masked key's value cannot influence any output."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, rel_pos_clip=3).eval()
    x = torch.randn(1, 5, 16)
    mask = torch.tensor([[False, False, True, False, False]])
    y = x.clone()
    y[0, 2] = torch.randn(16) * 100
    out_x = attn(x, x, x, key_padding_mask=mask)
    out_y = attn(x, y, y, key_padding_mask=mask)
    torch.testing.assert_close(out_x, out_y)


def _explicit_attention(attn: MultiHeadAttention, query, key, value, key_padding_mask=None):
    """The Shaw et al. formula written out step by step: the reference the fused kernel must match."""
    def split(x):
        return x.view(x.shape[0], x.shape[1], attn.n_heads, attn.d_head).transpose(1, 2)

    q, k, v = split(attn.q_proj(query)), split(attn.k_proj(key)), split(attn.v_proj(value))
    scores = q @ k.transpose(-2, -1)
    if attn.rel_pos_clip is not None:
        c = attn.rel_pos_clip
        for i in range(q.shape[2]):
            for j in range(k.shape[2]):
                r = min(max(j - i, -c), c) + c
                scores[:, :, i, j] = scores[:, :, i, j] + (q[:, :, i] * attn.rel_key[:, r]).sum(-1)
    scores = scores / attn.d_head ** 0.5
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
    return attn.out_proj(out)


@pytest.mark.parametrize("clip", [None, 2])
@pytest.mark.parametrize("self_attention", [True, False])
def test_fused_attention_matches_the_explicit_formula_in_values_and_gradients(clip, self_attention):
    """The fused path (one QKV product, one scaled_dot_product_attention call with the relative
    positions and padding as a bias) gives the explicit formula's outputs and the same gradients for
    every parameter and input, so training is unchanged too."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, rel_pos_clip=clip).train()  # dropout 0: train mode is deterministic
    if clip is not None:
        torch.nn.init.normal_(attn.rel_key, std=0.5)
    x = torch.randn(3, 6, 16, requires_grad=True)
    ctx = x if self_attention else torch.randn(3, 6, 16, requires_grad=True)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1, 4:] = True
    got = attn(x, ctx, ctx, key_padding_mask=mask) if not self_attention else attn(x, x, x, key_padding_mask=mask)
    want = _explicit_attention(attn, x, ctx, ctx, key_padding_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(got)
    inputs = [x] + ([] if self_attention else [ctx]) + list(attn.parameters())
    grads_got = torch.autograd.grad((got * weights).sum(), inputs)
    grads_want = torch.autograd.grad((want * weights).sum(), inputs)
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


# -- Transformer layer ---------------------------------------------------------------------------
def _layer(cross_query: str) -> TransformerLayer:
    torch.manual_seed(0)
    return TransformerLayer(16, 4, 32, dropout=0.0, cross_attention=True, cross_query=cross_query,
                            rel_pos_clip=2).eval()


def test_cross_attention_queries_from_context():
    """CoRe-Sleep form (queries from the context): context token i only affects output token i;
    MC² form (queries from the stream): one context token affects every output token."""
    x, ctx = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    ctx2 = ctx.clone()
    ctx2[0, 3] += 5.0
    for cross_query, only_own in (("context", True), ("self", False)):
        layer = _layer(cross_query)
        changed = (layer(x, ctx) - layer(x, ctx2)).abs().amax(-1)[0] > 1e-6  # (T,)
        if only_own:
            assert changed.tolist() == [False, False, False, True, False, False]
        else:
            assert bool(changed.all())


def test_layer_without_context_skips_cross_attention():
    """A layer built with CA but called without context equals the same weights with CA masked
    out everywhere, and cross_mask skips CA only at the masked tokens."""
    layer = _layer("context")
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    no_ca = layer(x)
    torch.testing.assert_close(layer(x, ctx, cross_mask=torch.zeros(2, 5, dtype=torch.bool)), no_ca)
    mask = torch.tensor([[True, False, True, True, True], [True] * 5])
    partial = layer(x, ctx, cross_mask=mask)
    # Token (0, 1) skipped CA; SA mixes tokens before CA, and the FFN is per token, so only that
    # token matches the context-free output.
    torch.testing.assert_close(partial[0, 1], no_ca[0, 1])
    assert not torch.allclose(partial[0, 0], no_ca[0, 0])
    with pytest.raises(ValueError, match="without cross-attention"):
        TransformerLayer(16, 4, 32)(x, ctx)


# -- heads ---------------------------------------------------------------------------------------
def test_mlp_head_shape_and_size():
    """The paper's head (128 → 1024 → 1024 → 5) has 1.19 M parameters and maps (..., D) to (..., 5)."""
    head = MLPHead(128, (1024, 1024))
    assert sum(p.numel() for p in head.parameters()) == 128 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 5 + 5
    assert head(torch.randn(2, 3, 128)).shape == (2, 3, 5)
    assert MLPHead(8, ())(torch.randn(4, 8)).shape == (4, 5)
