"""CIMSleepNet: robust sleep staging over incomplete multimodal signals via contrastive imagination.

Shen, Xin, Dai, Zhang, Wang, "Robust Sleep Staging over Incomplete Multimodal Physiological Signals
via Contrastive Imagination", NeurIPS 2024 (https://openreview.net/forum?id=bc1qt1sZsW). The paper's
full text was not available; the architecture follows the official code (SQAIYY/CIMSleepNet) as
written down in docs/models.md §1; bare section numbers below refer to it.

Pipeline (paper Fig. 2, docs/models.md §1.2)::

    x_m (B, L, 3000) per modality, mask p (B, L, M)
      │ MAIM (§1.2(a), layers/maim.py): encode observed epochs, fuse, VAE latent, decode every modality
      ├──► x̂_m (N, 3000) ──► SMCCL heads (§1.2(b), layers/smccl.py) ──► u_m, p_m  (training loss only)
      │ completion x̄_m = p_m·x_m + (1 − p_m)·x̂_m
      │ temporal CNN per modality (§1.2(c), layers/temporal_cnn.py): (N, C, 20)
      │ fusion F: concatenate along time -> (N, M·20, C) tokens
      │ Transformer layer with MCTA (§1.2(d), layers/mcta.py): (B, L, D)
      ▼ classifier (§1.2(e)): Linear(D, D/2) -> ReLU -> Linear(D/2, 5) per epoch -> logits (B, L, 5)

Loss (§1.3): ``total = ce + alpha * sum_m imag_m + beta * smccl + cluster`` with
``imag_m = mse_m + kl``, ``alpha = 0.001``, ``beta = 0.01`` (``cluster`` trains only the cluster heads).

Table 3's ablations are switches (``imagination``, ``smccl``, ``temporal_attention``) and registered
variants: ``cimsleepnet_no_maim``, ``cimsleepnet_no_smccl``, ``cimsleepnet_no_mcta``; the released
frozen cluster heads are ``cimsleepnet_frozen_lambda``.

Decisions where the released code is wrong or silent (docs/models.md §1.6):

* **Decoder output and completion units** (§1.1 step 6). The classifier path sees z-scored signals.
  Default ``decoder_output="linear"``: the decoder has no final sigmoid and reconstructs the z-scored
  signal, so ``x̂`` is in the units of ``x`` and the completion mixes like with like; the MSE is taken
  in z-score units. ``decoder_output="sigmoid"`` keeps the released sigmoid: the target is mapped to
  [0, 1] by a *fixed* affine map of the clipped z-score, ``(clip(x, -c, c) + c) / 2c`` with
  ``c = sigmoid_clip`` (4 SD), and the sigmoid output is mapped back by the inverse for completion.
  A per-epoch min-max scaling is not used because it discards the amplitude that the completion
  needs, and the range of a missing epoch is unknown.
* **Imagination target at missing epochs** (§1.6.2): ``imagination_target="random_observed"`` (a
  random observed epoch of the same modality and sequence), ``"oracle"`` or ``"zeros"``.
* **Encoder input** (§1.6.3): encoders see only observed epochs (see ``ModalityAwareImagination``).
* **Latent at inference** (§1.6.6): ``z = mu`` in eval mode.
* **lambda** (§1.6.4): one detached scalar per batch, the mean pairwise normalised mutual information
  of the cluster heads, which learn by the IIC objective ``cluster = -I`` on the detached imagined
  epochs (``consistency="trained"``); ``consistency="frozen"`` keeps the released frozen heads.
* **KL** (§1.6.5): summed over epochs and latent dims (released); ``kl_reduction="mean"`` averages over
  epochs. As released, every modality's imagination term carries the KL. With ``"sum"`` the
  trainer warns when the micro-batch is not the paper's 64 × 25 epochs.
* **Class weights** (§1.3.1): the ``class_weights`` buffer (ones by default = plain CE), set from
  *training* counts by :meth:`CIMSleepNet.fit_training_statistics` (:func:`attnsleep_class_weights`).
* **M modalities**: fusion, SMCCL modality labels and the token concatenation generalise to any
  ``M >= 2``; ``M = 2`` (EEG, EOG) is the released model.
* **Sequence length**: the inter-epoch convs mix a fixed context of ``context_epochs`` (25); other
  lengths are scored in windows of that context (see ``MultiLevelCrossBranchAttention``).

Shape legend: ``B`` sequences, ``L`` epochs a sequence, ``N = B * L``, ``M`` modalities,
``S = 3000`` samples an epoch, ``Z`` latent size, ``P`` projection size, ``C`` token width,
``T = 20 * M`` tokens an epoch, ``D`` epoch feature width (640 for EEG+EOG).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .base import (EPOCH_SAMPLES, IGNORE_INDEX, N_CLASSES, ModelOutput, SleepBatch, SleepStagingModel,
                   masked_cross_entropy)
from .layers.maim import IMAGINATION_TARGETS, ModalityAwareImagination, gaussian_kl, imagination_target
from .layers.mcta import MCTATransformerLayer
from .layers.smccl import CONSISTENCY_MODES, SMCCLHeads, cluster_loss, modality_consistency, smccl_loss
from .layers.temporal_cnn import TemporalCNN
from .registry import register_model

__all__ = ["CIMSleepNet", "attnsleep_class_weights", "cimsleepnet", "cimsleepnet_frozen_lambda", "cimsleepnet_no_maim",
           "cimsleepnet_no_mcta", "cimsleepnet_no_smccl", "cimsleepnet_tiny"]

#: AttnSleep's per-class prior used by the class-weight rule (§1.3.1), W/N1/N2/N3/REM.
_ATTNSLEEP_MU = (1.5 / 5, 2.0 / 5, 1.5 / 5, 1.0 / 5, 1.5 / 5)


def attnsleep_class_weights(counts: Sequence[int] | np.ndarray) -> Tensor:
    """Class weights by the AttnSleep rule the released trainer uses (§1.3.1).

    ``w_k = round(mu_k * max(1, ln(mu_k * n / n_k)), 2)`` with ``mu = [1.5, 2, 1.5, 1, 1.5] / 5``.
    Compute ``counts`` on the training split only (the released code counts all splits).

    Parameters
    ----------
    counts : sequence of 5 int
        Epochs per class W, N1, N2, N3, REM.

    Returns
    -------
    Tensor
        ``(5,)`` float32 weights; a class with no epochs gets ``mu_k`` (its log term is unbounded).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (N_CLASSES,) or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be {N_CLASSES} non-negative numbers with a positive sum, "
                         f"got {counts.tolist()}")
    mu = np.asarray(_ATTNSLEEP_MU)
    total = counts.sum()
    with np.errstate(divide="ignore"):
        factor = np.where(counts > 0, np.log(mu * total / np.maximum(counts, 1e-12)), 1.0)
    weights = np.round(mu * np.maximum(1.0, factor), 2)
    return torch.tensor(weights, dtype=torch.float32)


class CIMSleepNet(SleepStagingModel):
    """CIMSleepNet (Shen et al., NeurIPS 2024); see the module docstring for the block diagram.

    Parameters
    ----------
    modalities : sequence of str
        At least two modalities (released: ``("eeg", "eog")``).
    context_epochs : int
        Epochs the inter-epoch MCTA convs are built for (paper: 25).
    maim_widths : sequence of 3 int
        MAIM encoder widths (32, 64, 128).
    latent_dim, latent_hidden : int
        VAE latent size and the width before it (128, 128).
    cnn_widths : sequence of 2 int
        Temporal CNN widths (64, 128); the second is the token width ``C``.
    intra_heads, inter_heads : int
        MCTA heads at the intra-/inter-epoch level (4, 8).
    inter_stride : int
        Stride of the k2 inter-epoch convs; ``D = 20 * M * C // inter_stride`` (8 -> 640).
    ffn_mult : int
        FFN hidden size over ``D`` (4).
    classifier_hidden : int, optional
        Hidden width of the classifier (default ``D // 2`` = 320).
    proj_dim : int
        SMCCL projection size ``P`` (128).
    dropout : float
        Dropout in encoders, temporal CNN, Bi-GRUs, sub-layers and before the classifier (0.5).
    attn_dropout : float
        Dropout on attention probabilities (0.1).
    temperature, base_temperature : float
        SMCCL ``tau`` and ``tau_b`` (0.07, 0.07).
    decoder_output : {"linear", "sigmoid"}
        See the module docstring (default ``"linear"``).
    sigmoid_clip : float
        ``c`` of the sigmoid mode's fixed [-c, c] -> [0, 1] map, in standard deviations.
    imagination_target : {"random_observed", "oracle", "zeros"}
        Target of the imagination MSE at missing epochs (default ``"random_observed"``).
    kl_reduction : {"sum", "mean"}
        KL reduction (default ``"sum"``, as released: the term scales with the micro-batch).
    consistency : {"trained", "frozen"}
        Cluster heads behind ``lambda``: trained by the IIC objective (default) or frozen at
        their initial weights as released (an ablation; ``lambda`` then stays ≈ 0).
    imagination : bool
        Build MAIM (default). ``False`` is Table 3's "without MAIM": missing epochs are completed
        with zeros and there is no imagination loss; SMCCL, which calibrates imagined epochs, must
        then be off too.
    smccl : bool
        Build the SMCCL heads and loss (default); ``False`` is Table 3's "without SMCCL".
    temporal_attention : {"mcta", "plain"}
        MCTA (default) or plain self-attention at both levels (Table 3's "without MCTA").
    ffn_residual : {"released", "standard"}
        FFN sub-layer wrapper (default ``"released"``).
    class_weights : sequence of 5 float, optional
        CE class weights (default: all ones).
    """

    default_loss_weights = {"alpha": 0.001, "beta": 0.01, "cluster": 1.0}
    #: The released micro-batch: 64 sequences of 25 epochs (the scale of the summed KL).
    paper_micro_batch = (64, 25)
    #: A missing modality is imagined by MAIM and completed (module docstring).
    multimodal_missing_policy = "impute"
    paper = ("Shen et al., Robust Sleep Staging over Incomplete Multimodal Physiological Signals via "
             "Contrastive Imagination, NeurIPS 2024")

    def __init__(self, modalities: Sequence[str] = ("eeg", "eog"), *, context_epochs: int = 25,
                 maim_widths: Sequence[int] = (32, 64, 128), latent_dim: int = 128, latent_hidden: int = 128,
                 cnn_widths: Sequence[int] = (64, 128), intra_heads: int = 4, inter_heads: int = 8,
                 inter_stride: int = 8, ffn_mult: int = 4, classifier_hidden: int | None = None,
                 proj_dim: int = 128, dropout: float = 0.5, attn_dropout: float = 0.1,
                 temperature: float = 0.07, base_temperature: float = 0.07, decoder_output: str = "linear",
                 sigmoid_clip: float = 4.0, imagination_target: str = "random_observed",
                 kl_reduction: str = "sum", consistency: str = "trained", imagination: bool = True,
                 smccl: bool = True, temporal_attention: str = "mcta", ffn_residual: str = "released",
                 class_weights: Sequence[float] | Tensor | None = None):
        super().__init__(modalities)
        problems = []
        if len(self.modalities) < 2:
            problems.append(f"CIMSleepNet needs at least 2 modalities, got {list(self.modalities)}")
        if decoder_output not in ("linear", "sigmoid"):
            problems.append(f"decoder_output must be 'linear' or 'sigmoid', got {decoder_output!r}")
        if imagination_target not in IMAGINATION_TARGETS:
            problems.append(f"imagination_target must be one of {list(IMAGINATION_TARGETS)}, "
                            f"got {imagination_target!r}")
        if kl_reduction not in ("sum", "mean"):
            problems.append(f"kl_reduction must be 'sum' or 'mean', got {kl_reduction!r}")
        if consistency not in CONSISTENCY_MODES:
            problems.append(f"consistency must be one of {list(CONSISTENCY_MODES)}, got {consistency!r}")
        if not sigmoid_clip > 0:
            problems.append(f"sigmoid_clip must be positive, got {sigmoid_clip}")
        if smccl and not imagination:
            problems.append("smccl needs imagination: SMCCL calibrates MAIM's imagined epochs")
        if problems:
            raise ValueError("invalid CIMSleepNet configuration: " + "; ".join(problems))
        self.decoder_output = decoder_output
        self.sigmoid_clip = float(sigmoid_clip)
        self.imagination_target = imagination_target
        self.kl_reduction = kl_reduction
        self.temperature, self.base_temperature = temperature, base_temperature

        self.imagination, self.smccl = bool(imagination), bool(smccl)
        self.maim = (ModalityAwareImagination(self.modalities, maim_widths, latent_dim, latent_hidden,
                                              dropout, decoder_output) if imagination else None)
        self.smccl_heads = SMCCLHeads(self.modalities, EPOCH_SAMPLES, proj_dim, consistency) if smccl else None
        self.temporal_cnns = nn.ModuleDict({m: TemporalCNN(cnn_widths, dropout) for m in self.modalities})
        tokens = TemporalCNN.OUTPUT_STEPS * len(self.modalities)
        self.transformer = MCTATransformerLayer(tokens, cnn_widths[-1], context_epochs, intra_heads,
                                                inter_heads, inter_stride, ffn_mult, dropout, attn_dropout,
                                                ffn_residual, temporal_attention)
        self.feature_dim = self.transformer.out_dim
        hidden = classifier_hidden or self.feature_dim // 2
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.ReLU(),
                                        nn.Linear(hidden, N_CLASSES))
        self.register_buffer("class_weights", torch.ones(N_CLASSES))
        if class_weights is not None:
            self.set_class_weights(class_weights)

    # -- configuration ------------------------------------------------------------------------
    def set_class_weights(self, weights: Sequence[float] | Tensor) -> None:
        """Set the CE class weights (e.g. :func:`attnsleep_class_weights` of training counts)."""
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (N_CLASSES,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError(f"class_weights must be {N_CLASSES} finite non-negative numbers, "
                             f"got {weights.tolist()}")
        self.class_weights.copy_(weights.to(self.class_weights.device))

    def fit_training_statistics(self, class_counts: Tensor, epochs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Set the CE class weights by the AttnSleep rule from training class counts (§1.3.1).

        Returns the ``class_weights`` buffer set.
        """
        self.set_class_weights(attnsleep_class_weights(class_counts))
        return {"class_weights": self.class_weights.clone()}

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameters by component: ``maim``, ``smccl_heads``, ``temporal_cnn``, ``mcta``,
        ``classifier``, and ``all``.

        The released recipe trains in one phase and freezes nothing; any component may be frozen
        (e.g. ``[maim, smccl_heads]`` to keep a trained imagination module fixed).
        """
        prefixes = {"maim": "maim.", "smccl_heads": "smccl_heads.", "temporal_cnn": "temporal_cnns.",
                    "mcta": "transformer.", "classifier": "classifier."}
        names = [n for n, _ in self.named_parameters()]
        groups = {g: [n for n in names if n.startswith(p)] for g, p in prefixes.items()}
        groups["all"] = names
        return groups

    # -- units of the decoder -----------------------------------------------------------------
    def _decoder_to_signal(self, recon: Tensor) -> Tensor:
        """Decoder output -> z-scored signal units (identity unless ``decoder_output="sigmoid"``)."""
        if self.decoder_output == "linear":
            return recon
        return recon * (2 * self.sigmoid_clip) - self.sigmoid_clip

    def _signal_to_decoder(self, signal: Tensor) -> Tensor:
        """z-scored signal -> decoder output units (the fixed clip-and-scale map in sigmoid mode)."""
        if self.decoder_output == "linear":
            return signal
        c = self.sigmoid_clip
        return (signal.clamp(-c, c) + c) / (2 * c)

    def training_warnings(self, micro_batch: int, sequence_length: int) -> list[str]:
        """A summed KL weighs ``micro_batch · sequence_length / (64 · 25)`` times the paper's: say so."""
        paper_b, paper_l = self.paper_micro_batch
        if self.kl_reduction != "sum" or (micro_batch, sequence_length) == self.paper_micro_batch:
            return []
        scale = micro_batch * sequence_length / (paper_b * paper_l)
        return [f"CIMSleepNet sums its KL over the micro-batch (kl_reduction='sum'): {micro_batch} x "
                f"{sequence_length} epochs per micro-batch against the paper's {paper_b} x {paper_l}, so the KL "
                f"weighs {scale:.3g} times the paper's; use kl_reduction='mean' or micro-batches of "
                f"{paper_b} sequences of {paper_l} epochs"]

    # -- forward ------------------------------------------------------------------------------
    def forward_checked(self, signals: dict[str, Tensor], present: Tensor) -> ModelOutput:
        """Imagine, complete, extract, attend and classify (module docstring, §1.2).

        Returns
        -------
        ModelOutput
            ``logits (B, L, 5)``; ``aux``: ``recon_<m>`` decoder output ``(B, L, S)`` (in [0, 1] in
            sigmoid mode), ``completed_<m>`` the completed signal ``(B, L, S)``, ``mu``/``logvar``
            ``(B, L, Z)``, ``proj_<m>`` L2-normalised SMCCL projections ``(B, L, P)``,
            ``cluster_<m>`` cluster probabilities ``(B, L, P)``, ``features`` ``(B, L, D)``.
        """
        batch, length, n_mod = present.shape
        n = batch * length
        flat = {m: x.reshape(n, EPOCH_SAMPLES) for m, x in signals.items()}     # (B, L, S) -> (N, S)
        mask = present.reshape(n, n_mod)                                        # (B, L, M) -> (N, M)
        imagined = self.maim(flat, mask) if self.maim is not None else None

        completed: dict[str, Tensor] = {}
        for i, name in enumerate(self.modalities):
            if imagined is not None:
                x_hat = self._decoder_to_signal(imagined.recon[name])           # (N, S)
            else:  # without MAIM a missing epoch is a flat zero (the z-scored mean)
                x_hat = mask.new_zeros((n, EPOCH_SAMPLES), dtype=self.classifier[0].weight.dtype)
            if name in flat:
                # where(), not p*x + (1-p)*x̂: a NaN/garbage sample at a missing epoch must not leak.
                completed[name] = torch.where(mask[:, i:i + 1], flat[name].to(x_hat.dtype), x_hat)
            else:
                completed[name] = x_hat                                         # never read: imagined

        maps = [self.temporal_cnns[m](completed[m].unsqueeze(1)) for m in self.modalities]  # (N, C, 20) each
        tokens = torch.cat(maps, dim=2).transpose(1, 2)                         # (N, C, T) -> (N, T, C)
        tokens = tokens.reshape(batch, length, tokens.shape[1], tokens.shape[2])  # (B, L, T, C)
        features = self.transformer(tokens)                                     # (B, L, D)
        logits = self.classifier(self.dropout(features))                        # (B, L, 5)

        seq = lambda t: t.reshape(batch, length, *t.shape[1:])                  # (N, ...) -> (B, L, ...)
        aux: dict[str, Tensor] = {"features": features}
        for name in self.modalities:
            aux[f"completed_{name}"] = seq(completed[name])
        if imagined is not None:
            aux.update(mu=seq(imagined.mu), logvar=seq(imagined.logvar))
            for name in self.modalities:
                aux[f"recon_{name}"] = seq(imagined.recon[name])
        if self.smccl_heads is not None:
            proj, clusters = self.smccl_heads(imagined.recon)
            for name in self.modalities:
                aux[f"proj_{name}"] = seq(proj[name])
                aux[f"cluster_{name}"] = seq(clusters[name])
        return ModelOutput(logits=logits, aux=aux)

    # -- loss ---------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, batch: SleepBatch,
             weights: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """Named loss terms of §1.3 and their weighted total.

        Returns
        -------
        dict of str to Tensor
            ``ce`` (class-weighted CE), ``kl``, per modality ``mse_<m>`` and ``imag_<m> = mse_<m> + kl``,
            ``smccl``, ``lambda`` (the detached consistency score, for logging), ``cluster`` (the
            cluster heads' IIC objective ``-I``; not with ``consistency="frozen"``) and
            ``total = ce + alpha * sum_m imag_<m> + beta * smccl + cluster_weight * cluster``.
        """
        w = self.resolve_loss_weights(weights)
        if batch.labels is None:
            raise ValueError("CIMSleepNet.loss needs batch.labels of shape (B, L); got None")
        labels = batch.labels.long()
        present = self.presence(batch.signals, batch.present)                  # (B, L, M) effective
        if labels.shape != present.shape[:2]:
            raise ValueError(f"batch.labels must have shape {tuple(present.shape[:2])} (B, L), "
                             f"got {tuple(labels.shape)}")
        terms: dict[str, Tensor] = {}
        terms["ce"] = masked_cross_entropy(output.logits, labels, weight=self.class_weights.float())
        terms["total"] = terms["ce"]
        if self.maim is not None:
            imag_sum = self._imagination_terms(output.aux, batch, present, terms)
            terms["total"] = terms["total"] + w["alpha"] * imag_sum
        if self.smccl_heads is not None:
            self._smccl_terms(output.aux, labels, terms)
            terms["total"] = terms["total"] + w["beta"] * terms["smccl"]
            if "cluster" in terms:
                terms["total"] = terms["total"] + w["cluster"] * terms["cluster"]
        return terms

    def _imagination_terms(self, aux: Mapping[str, Tensor], batch: SleepBatch, present: Tensor,
                           terms: dict[str, Tensor]) -> Tensor:
        """Add ``kl``, ``mse_<m>`` and ``imag_<m>`` to ``terms``; return ``sum_m imag_<m>`` (§1.3.2)."""
        kl = gaussian_kl(aux["mu"].float(), aux["logvar"].float(), self.kl_reduction)
        terms["kl"] = kl
        imag_sum = kl.new_zeros(())
        for i, name in enumerate(self.modalities):
            recon = aux[f"recon_{name}"].float()                               # (B, L, S)
            target, valid = imagination_target(batch.signals.get(name), present[..., i],
                                               self.imagination_target)
            if bool(valid.any()):
                goal = self._signal_to_decoder(target[valid].float())          # (n_valid, S)
                mse = (recon[valid] - goal).pow(2).mean()
            else:
                mse = recon.sum() * 0.0
            terms[f"mse_{name}"] = mse
            terms[f"imag_{name}"] = mse + kl
            imag_sum = imag_sum + terms[f"imag_{name}"]
        return imag_sum

    def _smccl_terms(self, aux: Mapping[str, Tensor], labels: Tensor, terms: dict[str, Tensor]) -> None:
        """Add ``lambda``, ``smccl`` and (trained heads) ``cluster`` to ``terms`` (§1.3.3)."""
        labelled = labels != IGNORE_INDEX                                       # (B, L)
        n_lab = int(labelled.sum())
        feats = torch.cat([aux[f"proj_{m}"][labelled] for m in self.modalities])  # (M*n_lab, P)
        anchor_labels = labels[labelled].repeat(len(self.modalities))           # (M*n_lab,)
        anchor_modality = torch.arange(len(self.modalities), device=labels.device).repeat_interleave(n_lab)
        clusters = [aux[f"cluster_{m}"].reshape(-1, aux[f"cluster_{m}"].shape[-1])
                    for m in self.modalities]                                   # (N, P) each
        lam = modality_consistency(clusters)
        terms["lambda"] = lam
        terms["smccl"] = smccl_loss(feats, anchor_labels, anchor_modality, lam, self.temperature,
                                    self.base_temperature)
        if self.smccl_heads.consistency == "trained":
            terms["cluster"] = cluster_loss(clusters)


# -- registered variants ----------------------------------------------------------------------
@register_model
def cimsleepnet(**overrides) -> CIMSleepNet:
    """CIMSleepNet as released: EEG+EOG, 25-epoch context, ~9.9 M parameters (1.6 M training-only)."""
    return CIMSleepNet(**overrides)


@register_model
def cimsleepnet_tiny(**overrides) -> CIMSleepNet:
    """Same topology with small widths (~0.63 M parameters) for tests and smoke runs.

    Dropout is 0.1, not the released 0.5: at 16 temporal-CNN channels, dropping half of them left
    W and REM inseparable for hundreds of steps on the synthetic cohort (validation macro-F1
    0.51-0.57, W never predicted); with 0.1 and (16, 32) channels it reached 0.81-0.83 in 250 steps.
    """
    config = dict(maim_widths=(4, 8, 16), latent_dim=16, latent_hidden=16, cnn_widths=(16, 32),
                  intra_heads=2, inter_heads=2, proj_dim=8, dropout=0.1)
    config.update(overrides)
    return CIMSleepNet(**config)


@register_model
def cimsleepnet_no_maim(**overrides) -> CIMSleepNet:
    """Table 3 "without MAIM": missing epochs completed with zeros; no imagination, hence no SMCCL either."""
    return CIMSleepNet(**{"imagination": False, "smccl": False, **overrides})


@register_model
def cimsleepnet_no_smccl(**overrides) -> CIMSleepNet:
    """Table 3 "without SMCCL": MAIM imagines, but no contrastive calibration of the imagined epochs."""
    return CIMSleepNet(**{"smccl": False, **overrides})


@register_model
def cimsleepnet_no_mcta(**overrides) -> CIMSleepNet:
    """Table 3 "without MCTA": the Transformer layer attends with plain self-attention at both levels."""
    return CIMSleepNet(**{"temporal_attention": "plain", **overrides})


@register_model
def cimsleepnet_frozen_lambda(**overrides) -> CIMSleepNet:
    """The released model's frozen cluster heads: ``lambda`` stays at its initial ≈ 0 (an ablation)."""
    return CIMSleepNet(**{"consistency": "frozen", **overrides})
