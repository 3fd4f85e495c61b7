"""Two-way InfoNCE between two views of the same epochs, contrasted per sequence position.

MC²SleepNet (Na et al., 2024, §3.1, Eq. 14–16) aligns the projected raw-signal embedding
``zz^Sg_{i,j}`` and spectrogram embedding ``zz^Sp_{i,j}`` of epoch ``j`` of sequence ``i``. The
negatives of a pair are the other view at the *same position* ``j`` of the other ``B − 1``
sequences of the batch. With ``s_j(i, k) = zz^Sg_{i,j} · zz^Sp_{k,j} / τ`` and
``r_{i,j} = exp s_j(i, i) / Σ_k exp s_j(i, k)``:

* ``form="paper"`` (Eq. 14, as written): the log is taken after averaging over the positions,
  ``L_sig2spc = mean_i [ −log( (1/L) Σ_j r_{i,j} ) ]``;
* ``form="conventional"``: the usual mean of per-position logs,
  ``L_sig2spc = mean_{i,j} [ −log r_{i,j} ]``, i.e. a B×B CLIP loss per position, averaged.

``L_spc2sig`` swaps the views (Eq. 15) and the loss is their mean (Eq. 16). By Jensen's inequality
the paper's form is never larger than the conventional one. The temperature is not given in the
paper; docs/models.md §3.3 [D] uses τ = 0.1.

Epochs can be excluded with ``valid`` (e.g. where the modality is absent): they are neither
anchors nor negatives, ``L`` in Eq. 14 becomes the number of valid positions of the sequence, and a
sequence without any valid position does not count.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

InfoNCEForm = Literal["paper", "conventional"]


def _one_way(logits: Tensor, valid: Tensor, form: InfoNCEForm) -> Tensor:
    """Loss of anchors (dim 1) against candidates (dim 2) of ``logits (L, B, B)``."""
    # Invalid candidates get -inf so that they are not negatives; a valid anchor always has its own
    # (valid) positive. A position with no valid epoch at all keeps every candidate so that its rows
    # (whose anchors are all discarded) stay finite and give a zero, not NaN, gradient.
    candidates = (valid | ~valid.any(dim=0, keepdim=True)).T.unsqueeze(1)  # (L, 1, B)
    logits = logits.masked_fill(~candidates, float("-inf"))
    log_ratio = torch.diagonal(torch.log_softmax(logits, dim=-1), dim1=-2, dim2=-1)  # (L, B): log r
    anchors = valid.T  # (L, B)
    log_ratio = torch.where(anchors, log_ratio, torch.zeros_like(log_ratio))
    if form == "conventional":
        return -(log_ratio.sum() / anchors.sum())
    # paper: −log of the mean ratio over the valid positions of each sequence.
    counts = anchors.sum(dim=0)  # (B,) valid positions per sequence
    # -inf drops invalid positions from the logsumexp; a sequence with no valid position is filled
    # with 0 instead, so its (discarded) logsumexp is finite and back-propagates no NaN.
    fill = torch.where(counts > 0, float("-inf"), 0.0).to(log_ratio.dtype)  # (B,)
    masked = torch.where(anchors, log_ratio, fill.expand_as(log_ratio))
    per_sequence = torch.logsumexp(masked, dim=0) - counts.clamp_min(1).log()  # (B,)
    used = counts > 0
    return -(per_sequence[used].sum() / used.sum())


def info_nce_per_position(z_a: Tensor, z_b: Tensor, temperature: float = 0.1,
                          valid: Tensor | None = None, form: InfoNCEForm = "paper") -> Tensor:
    """Symmetric InfoNCE between views ``z_a`` and ``z_b``, negatives from the same position.

    Parameters
    ----------
    z_a, z_b : Tensor
        ``(B, L, D)`` embeddings of the two views (MC²SleepNet: L2-normalised projections).
    temperature : float
        Softmax temperature τ.
    valid : Tensor, optional
        ``(B, L)`` bool; false epochs are excluded (see the module docstring).
    form : {"paper", "conventional"}
        Where the log is taken (see the module docstring).

    Returns
    -------
    Tensor
        Scalar ``(L_a2b + L_b2a) / 2`` (Eq. 16), computed in float32. Zero (with a graph) when
        nothing is valid.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 3:
        raise ValueError(f"z_a and z_b must both have shape (B, L, D), got {tuple(z_a.shape)} and "
                         f"{tuple(z_b.shape)}")
    if form not in ("paper", "conventional"):
        raise ValueError(f"form must be 'paper' or 'conventional', got {form!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    batch, length, _ = z_a.shape
    if valid is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=z_a.device)
    valid = valid.bool()
    if not bool(valid.any()):
        return (z_a.sum() + z_b.sum()) * 0.0
    a = z_a.float().transpose(0, 1)  # (L, B, D): position-major
    b = z_b.float().transpose(0, 1)
    logits = a @ b.transpose(1, 2) / temperature  # (L, B, B): s_j(i, k)
    a2b = _one_way(logits, valid, form)
    b2a = _one_way(logits.transpose(1, 2), valid, form)
    return (a2b + b2a) / 2


__all__ = ["InfoNCEForm", "info_nce_per_position"]
