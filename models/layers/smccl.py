"""SMCCL: semantic & modal calibration contrastive learning of CIMSleepNet.

Shen et al., NeurIPS 2024 (CIMSleepNet), Fig. 2 "distribution alignment"; docs/models.md
§1.2(b) (projection heads) and §1.3.3 (loss, modality-consistency score).

A supervised-contrastive loss over the projected imagined epochs of every modality, in which a pair
is weighted by whether it shares the sleep stage and/or the modality; the weight of the mixed cases
is set by the modality-consistency score ``lambda`` (a normalised mutual information between the
modalities' soft cluster assignments).

Shape legend: ``N`` flattened epochs, ``A`` anchors (``M * N`` or fewer), ``P`` projection size,
``K`` cluster count (= ``P``).
"""

from __future__ import annotations

import itertools
import sys
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Probability floor of the consistency score, as in the released code (``sys.float_info.epsilon``).
_EPS = sys.float_info.epsilon


class ProjectionHead(nn.Sequential):
    """``Linear(S, P) -> ReLU -> Linear(P, P)`` on a flattened imagined epoch (§1.2(b)).

    Parameters
    ----------
    in_features : int
        ``S``, samples an epoch (3000).
    dim : int
        ``P`` (128).
    kind : {"contrastive", "cluster"}
        ``"contrastive"`` L2-normalises the output (``u_m``); ``"cluster"`` applies a softmax
        (``p_m``, used only for ``lambda``).
    """

    def __init__(self, in_features: int, dim: int, kind: str):
        if kind not in ("contrastive", "cluster"):
            raise ValueError(f"projection head kind must be 'contrastive' or 'cluster', got {kind!r}")
        super().__init__(nn.Linear(in_features, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - see class docstring
        y = super().forward(x)
        return F.normalize(y, dim=-1) if self.kind == "contrastive" else y.softmax(dim=-1)


def pair_weights(labels: Tensor, modality: Tensor, lam: float | Tensor) -> tuple[Tensor, Tensor]:
    """SMCCL pair weights ``w_ij`` and positive-set sizes ``|P_i|`` (§1.3.3 table).

    ======================  ===============  ============
    same class?             same modality?   ``w_ij``
    ======================  ===============  ============
    yes                     yes              1
    yes                     no               1 - lambda
    no                      yes              lambda
    no                      no               0
    ======================  ===============  ============

    ``|P_i| = #{j : y_j = y_i or c_j = c_i}``, counting ``j = i`` as the released code does.

    Parameters
    ----------
    labels, modality : Tensor
        ``(A,)`` class and modality labels of the anchors.
    lam : float or Tensor
        Scalar modality-consistency score.

    Returns
    -------
    weights : Tensor
        ``(A, A)`` (the diagonal is not zeroed here).
    positives : Tensor
        ``(A,)`` ``|P_i|``.
    """
    same_class = labels[:, None] == labels[None, :]
    same_mod = modality[:, None] == modality[None, :]
    lam = torch.as_tensor(lam, dtype=torch.float32, device=labels.device)
    weights = torch.zeros(same_class.shape, device=labels.device)
    weights = torch.where(same_class & same_mod, torch.ones_like(weights), weights)
    weights = torch.where(same_class & ~same_mod, (1 - lam).expand_as(weights), weights)
    weights = torch.where(~same_class & same_mod, lam.expand_as(weights), weights)
    positives = (same_class | same_mod).sum(dim=1)
    return weights, positives


def smccl_loss(features: Tensor, labels: Tensor, modality: Tensor, lam: float | Tensor,
               temperature: float = 0.07, base_temperature: float = 0.07) -> Tensor:
    """Semantic & modal calibration contrastive loss (§1.3.3).

    ``l_i = -(tau / tau_b) (1 / |P_i|) sum_{j != i} w_ij log( exp(u_i.u_j / tau) / sum_{k != i} exp(u_i.u_k / tau) )``,
    ``L = mean_i l_i``.

    Parameters
    ----------
    features : Tensor
        ``(A, P)`` L2-normalised projections ``u``.
    labels : Tensor
        ``(A,)`` stage labels (callers drop ignored epochs first).
    modality : Tensor
        ``(A,)`` modality index of each anchor.
    lam : float or Tensor
        Scalar modality-consistency score in [0, 1] (detached).
    temperature, base_temperature : float
        ``tau`` and ``tau_b`` (both 0.07: the scale factor is 1).

    Returns
    -------
    Tensor
        Scalar loss; zero (with a graph) when there are fewer than two anchors.
    """
    anchors = features.shape[0]
    if anchors < 2:
        return features.sum() * 0.0
    logits = features.float() @ features.float().T / temperature               # (A, A)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()           # stability only
    off_diag = ~torch.eye(anchors, dtype=torch.bool, device=features.device)
    log_denominator = torch.logsumexp(logits.masked_fill(~off_diag, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator                                         # (A, A)
    weights, positives = pair_weights(labels, modality, lam)
    weighted = (weights * off_diag * log_prob).sum(dim=1)                       # (A,)
    loss = -(temperature / base_temperature) * weighted / positives.to(weighted.dtype)
    return loss.mean()


def mutual_information(p_a: Tensor, p_b: Tensor) -> tuple[Tensor, Tensor]:
    """Mutual information and joint entropy of two paired soft cluster assignments (§1.3.3).

    ``P = sym(mean_n p_a,n p_b,n^T)`` normalised to sum 1; marginals ``p_i = P 1``, ``p_j = 1^T P``;
    probabilities floored at machine epsilon as in the released code; ``I = sum P log(P / (p_i p_j))``
    and ``H = -sum P log P``. Differentiable: ``-I`` is the IIC objective the cluster heads train on.

    Parameters
    ----------
    p_a, p_b : Tensor
        ``(N, K)`` rows on the probability simplex, row ``n`` of both from the same epoch.

    Returns
    -------
    tuple of Tensor
        Scalars ``(I, H)``.
    """
    joint = (p_a.float()[:, :, None] * p_b.float()[:, None, :]).mean(dim=0)      # (K, K)
    joint = (joint + joint.T) / 2
    joint = joint / joint.sum()
    p_i = joint.sum(dim=1, keepdim=True).clamp(min=_EPS)                         # (K, 1)
    p_j = joint.sum(dim=0, keepdim=True).clamp(min=_EPS)                         # (1, K)
    joint = joint.clamp(min=_EPS)
    mutual = (joint * (joint.log() - p_i.log() - p_j.log())).sum()
    entropy = -(joint * joint.log()).sum()
    return mutual, entropy


def normalised_mutual_information(p_a: Tensor, p_b: Tensor) -> Tensor:
    """Modality-consistency score of two soft cluster assignments (§1.3.3, [D] scalar form).

    ``lambda = clamp(I(P) / H(P), 0, 1)`` with ``I`` and ``H`` of :func:`mutual_information`. A
    point-mass ``P`` (``H = 0``) gives 0.

    Parameters
    ----------
    p_a, p_b : Tensor
        ``(N, K)`` rows on the probability simplex.

    Returns
    -------
    Tensor
        Scalar in [0, 1], detached: SMCCL weights its pairs with it, and a gradient through
        ``lambda`` would let SMCCL lower its own loss by moving the weights instead of the features.
    """
    with torch.no_grad():
        mutual, entropy = mutual_information(p_a, p_b)
        if float(entropy) <= _EPS:
            return torch.zeros((), device=p_a.device)
        return (mutual / entropy).clamp(0.0, 1.0)


def modality_consistency(probabilities: Sequence[Tensor]) -> Tensor:
    """``lambda`` for ``M`` modalities: the mean pairwise score (``M = 2``: the released pair)."""
    _check_pairs(probabilities)
    scores = [normalised_mutual_information(a, b) for a, b in itertools.combinations(probabilities, 2)]
    return torch.stack(scores).mean()


def cluster_loss(probabilities: Sequence[Tensor]) -> Tensor:
    """The cluster heads' objective: ``-I`` (IIC), averaged over modality pairs.

    Maximising the mutual information between the modalities' assignments of the same epochs makes
    each head a clustering that the other modality's head can predict: the score ``lambda`` then
    measures how consistently the two imagined modalities fall into the same clusters, which is
    what it weighs in SMCCL (docs/models.md §1.6.4).
    """
    _check_pairs(probabilities)
    return -torch.stack([mutual_information(a, b)[0] for a, b in itertools.combinations(probabilities, 2)]).mean()


def _check_pairs(probabilities: Sequence[Tensor]) -> None:
    if len(probabilities) < 2:
        raise ValueError(f"modality consistency needs at least 2 modalities, got {len(probabilities)}")


#: How the cluster heads behind ``lambda`` are treated (docs/models.md §1.6.4).
CONSISTENCY_MODES = ("trained", "frozen")


class SMCCLHeads(nn.Module):
    """The per-modality contrastive and cluster heads of §1.2(b) (training-only parameters).

    Parameters
    ----------
    modalities : sequence of str
    in_features : int
        ``S`` (3000).
    dim : int
        ``P`` (128).
    consistency : {"trained", "frozen"}
        ``"trained"``: the cluster heads learn by :func:`cluster_loss` on the *detached* imagined
        epochs (their objective reaches no other parameter). ``"frozen"``: as released, no loss
        reaches them and they keep their initial weights (``requires_grad=False``), so ``lambda``
        stays near its initial value (an ablation).
    """

    def __init__(self, modalities: Sequence[str], in_features: int = 3000, dim: int = 128,
                 consistency: str = "trained"):
        super().__init__()
        if consistency not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {list(CONSISTENCY_MODES)}, got {consistency!r}")
        self.consistency = consistency
        self.contrastive = nn.ModuleDict({m: ProjectionHead(in_features, dim, "contrastive")
                                          for m in modalities})
        self.cluster = nn.ModuleDict({m: ProjectionHead(in_features, dim, "cluster") for m in modalities})
        if consistency == "frozen":
            self.cluster.requires_grad_(False)

    def forward(self, recon: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Project ``(N, S)`` imagined epochs to ``u_m (N, P)`` and ``p_m (N, P)`` per modality."""
        proj = {m: head(recon[m]) for m, head in self.contrastive.items()}
        # The cluster heads judge the imagination; their objective must not reshape it.
        clusters = {m: head(recon[m].detach()) for m, head in self.cluster.items()}
        return proj, clusters
