"""CLIP-style alignment loss between two modalities' epoch embeddings (CoRe-Sleep's AL).

Kontras et al., TNSRE 2024, §II-D, Eq. 10: for two modalities measured at the same time, each
epoch's embedding of one modality must pick out the embedding of the *same* epoch of the other
modality.  With ``S_ij = cos(a_i, b_j)`` the loss is ``CE(S, I) + CE(Sᵀ, I)`` (row-wise softmax
cross-entropy, the diagonal is the target).  Following the released code (docs/models.md §2.3):

* the logits are the raw cosines in ``[-1, 1]`` (no temperature);
* negatives are the other epochs *of the same sequence* (``S`` is ``L × L`` per sequence); with
  ``batch_wide=True`` (the code's ``big_al``) all epochs of the batch are contrasted instead.

Epochs where either modality is absent are neither anchors nor negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _diagonal_ce(scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sum and count of ``-log softmax(scores)_ii`` over valid anchor rows.

    ``scores`` ``(G, L, L)``, ``valid`` ``(G, L)``: invalid columns are masked out of the softmax,
    invalid rows and groups with fewer than two valid epochs (no negative) do not count.
    """
    scores = scores.float().masked_fill(~valid[:, None, :], float("-inf"))
    rows = valid & (valid.sum(-1, keepdim=True) >= 2)  # (G, L)
    # Rows that do not count may be all -inf; zero them so log_softmax stays finite.
    scores = torch.where(rows[..., None], scores, torch.zeros_like(scores))
    log_p = torch.log_softmax(scores, dim=-1).diagonal(dim1=-2, dim2=-1)  # (G, L)
    return -(log_p * rows).sum(), rows.sum()


def alignment_loss(a: Tensor, b: Tensor, valid: Tensor | None = None,
                   batch_wide: bool = False) -> Tensor:
    """Symmetric cosine-similarity alignment loss ``CE(S, I) + CE(Sᵀ, I)`` (CoRe-Sleep Eq. 10).

    Parameters
    ----------
    a, b : Tensor
        ``(B, L, D)`` embeddings of two modalities for the same epochs.
    valid : Tensor, optional
        ``(B, L)`` bool, epochs where both modalities are present; all by default.
    batch_wide : bool
        Contrast against every valid epoch of the batch (``N × N``) instead of the epochs of the
        same sequence (``L × L`` per sequence, the paper's form).

    Returns
    -------
    Tensor
        Scalar: the mean over anchor epochs of each direction's CE, summed over both directions.
        Zero (with a graph to the inputs) when no sequence has two valid epochs.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"alignment_loss needs two (B, L, D) tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if valid is None:
        valid = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
    valid = valid.bool()
    a_n, b_n = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    if batch_wide:
        # One group holding every epoch of the batch: (1, N, D).
        a_n, b_n, valid = a_n.reshape(1, -1, a.shape[-1]), b_n.reshape(1, -1, b.shape[-1]), valid.reshape(1, -1)
    scores = a_n @ b_n.transpose(-2, -1)  # (G, L, L): S_ij = cos(a_i, b_j)
    total_ab, count = _diagonal_ce(scores, valid)
    total_ba, _ = _diagonal_ce(scores.transpose(-2, -1), valid)
    if int(count) == 0:
        return (a.sum() + b.sum()) * 0.0
    return (total_ab + total_ba) / count


__all__ = ["alignment_loss"]
