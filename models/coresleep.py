"""CoRe-Sleep and its Table I benchmark architectures (Early and Mid-Late fusion).

Kontras, Chatzichristos, Phan, Suykens, De Vos. "CoRe-Sleep: A Multimodal Fusion Framework for
Time Series Robust to Imperfect Modalities". IEEE TNSRE 32 (2024); arXiv:2304.06485.
Implementation spec: docs/models.md §2 (tags [P] paper, [C] official code, [D] our default).

What each block implements
--------------------------
* Front end (§II-A, docs/models.md §2.1 steps 6–8): log-magnitude STFT per 30-s epoch, 2-s Hamming
  window, 1-s hop, NFFT 256, DC bin dropped → ``F = 29`` frames × ``K = 128`` bins, each bin
  normalised with training-set statistics (buffers, see :meth:`set_spectrogram_statistics`).
  When ``d_model != 128`` (the tiny variants) a per-modality ``Linear(128, d_model)`` projects the
  bins; at the paper's width there is no projection (docs/models.md §2.2: "no input projection").
* Transformer layer (§II-B, Eq. 1–5; CA Eq. 6–7): post-norm, 8 heads, FFN 1024, ReLU, dropout
  0.3, Shaw relative positions clipped to ±6 and no absolute position
  (:class:`~somnray.models.layers.transformer.TransformerLayer`).
* Unimodal encoder per modality (§II-C, Fig. 1b): inner Transformer (4 layers) over the CLS token
  and the 29 frames of each epoch; the CLS output is the epoch embedding; outer Transformer
  (4 layers) over the ``L`` epoch embeddings of a sequence.
* Multimodal encoder (§II-C, Fig. 1a): the *same* inner/outer stacks (SA and FFN weights shared)
  with the cross-attention sub-layer switched on.  CA queries come from the other modality's
  unimodal outputs: its full 30-token inner output for the inner stack, its outer output for the
  outer stack; keys and values from the stream itself (Eq. 6).  Fused representation
  ``Z = Σ_m Z_m`` (§II-C, last paragraph).
* Heads (§II-F, docs/models.md §2.2): one MLP per representation (multimodal + one per modality), or
  one shared head (``shared_head=True``, the paper's incomplete-data set-up).
* Losses (§II-D, Eq. 8–10): multimodal CE, MS (unimodal CEs), AL (cosine-similarity CLIP loss on
  the unimodal inner CLS embeddings, λ_A = 0.1, no temperature).
* Benchmarks (§II-E, Fig. 2): :class:`CoReSleep` with ``fusion="midlate"`` (independent encoders
  summed before the head, no CA) and :class:`CoReSleepEarly` (one shared encoder over the
  concatenated modality token sequences with a learnable modality embedding; unimodal predictions
  from extra single-modality passes).  Table I's loss switches (``+AL``, ``+MS``) are the loss
  weights of the registered variants.

More than two modalities
------------------------
The paper suggests "multiple sequential CAs" for ``M > 2``.  Here each stream keeps *one* CA
sub-layer per layer whose queries are the **mean of the other present modalities'** unimodal
outputs at that epoch.  For ``M = 2`` this is exactly the paper; for ``M ≥ 3`` it keeps the
parameter count and the layer structure independent of ``M`` and, because the mean is taken over
the modalities present *at each epoch*, any subset of modalities can be missing per epoch without
a combinatorial set of CA branches.  (A CA sub-layer per other modality would give each pair its
own weights but would need a different layer type and a rule for skipping absent pairs.)

Missing modalities (per epoch, via ``present``)
-----------------------------------------------
Let ``n`` be the number of modalities present at an epoch.

* An absent epoch of a modality is never computed on: its inner Transformer runs only on the
  epochs where it is present (rows are gathered, then scattered back as zeros), and its outer
  Transformer masks the absent epochs as keys (key padding mask in SA, in CA of the own stream,
  and as CA queries: where no *other* modality is present the CA sub-layer is skipped for that
  token, so the multimodal pass reduces to the unimodal one).  Sequences in which a modality has
  no present epoch skip that modality's outer pass entirely.  A modality that is absent from
  ``signals`` (or absent at every epoch of the batch) is never read.
* ``Z`` sums only the present modalities' streams.
* ``logits`` = multimodal head on ``Z`` where ``n ≥ 2``; the present modality's unimodal head
  where ``n = 1``; zeros where ``n = 0`` (nothing to predict from).  ``aux["logits_mm"]`` is zero
  where ``n < 2`` and ``aux["logits_<m>"]`` is zero where ``m`` is absent.

Shape legend
------------
``B`` sequences, ``L`` epochs a sequence (paper 21), ``N = B·L``, ``M`` modalities, ``F = 29``
STFT frames, ``K = 128`` bins, ``T = F + 1`` inner tokens (CLS first), ``D`` = ``d_model``,
``n_m`` = number of epochs at which modality ``m`` is present, ``C = 5`` classes.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from .base import (EPOCH_SAMPLES, ModelOutput, SleepBatch, SleepStagingModel,
                   masked_cross_entropy)
from .layers.alignment import alignment_loss
from .layers.heads import MLPHead
from .layers.stft import STFTFrontEnd
from .layers.transformer import TransformerStack
from .registry import register_model

#: Loss weights of the full CoRe-Sleep objective, Eq. 8–10: ``mm`` multimodal CE, ``ms`` each
#: unimodal CE on multimodal epochs, ``align`` λ_A, ``single`` the CE of epochs with one modality.
PAPER_LOSS_WEIGHTS: dict[str, float] = {"mm": 1.0, "ms": 1.0, "align": 0.1, "single": 1.0}


def _scatter_rows(rows: Tensor, index: Tensor, n: int) -> Tensor:
    """Place ``rows`` ``(k, ...)`` at ``index`` of a zero tensor ``(n, ...)`` (differentiable)."""
    return rows.new_zeros((n, *rows.shape[1:])).index_copy(0, index, rows)


class _CoReSleepBase(SleepStagingModel):
    """What CoRe-Sleep and its benchmarks share: front end, heads, prediction rule and loss.

    Parameters
    ----------
    modalities : sequence of str
        Modalities in the column order of ``present`` (paper: EEG, EOG).
    d_model : int
        Token width ``D`` (paper 128, the number of STFT bins without DC).
    n_heads : int
        Attention heads (paper 8, head dim 16).
    d_ff : int
        FFN width (paper 1024).
    n_inner_layers, n_outer_layers : int
        Layers of the inner (within-epoch) and outer (across-epoch) Transformers (paper 4 and 4).
    dropout : float
        Dropout on sub-layer outputs and inside the FFN (paper 0.3).
    attn_dropout : float
        Dropout on attention probabilities (not in the paper; [D] 0).
    rel_pos_clip : int
        Clip of the Shaw relative positions (code: ±6).
    head_hidden : sequence of int
        Hidden widths of each MLP head (code: 1024, 1024).
    head_dropout : float
        Dropout in the heads (paper 0.3).
    shared_head : bool
        One head for the multimodal and every unimodal representation (§III-D).
    big_al : bool
        Alignment negatives from the whole batch instead of the same sequence.
    align_level : {"inner", "outer"}
        Which unimodal embeddings the AL compares: the inner CLS outputs (code ``align_inner``,
        default) or the outer Transformer outputs.
    loss_weights : mapping of str to float, optional
        Overrides of :data:`PAPER_LOSS_WEIGHTS` for this instance (the Table I switches).
    window_s, hop_s : float
        STFT window and hop in seconds (paper 2 s and 1 s).
    n_fft : int
        FFT length (paper 256).
    """

    #: Epochs a sequence in the paper (10.5 min); the model itself accepts any ``L``.
    default_seq_length: ClassVar[int] = 21
    default_loss_weights: ClassVar[dict[str, float]] = dict(PAPER_LOSS_WEIGHTS)
    #: An epoch without a modality is scored from the others (the unimodal heads, see the
    #: module docstring).
    multimodal_missing_policy = "drop"
    paper = ("Kontras et al., CoRe-Sleep: A Multimodal Fusion Framework for Time Series Robust to "
             "Imperfect Modalities, IEEE TNSRE 32 (2024)")
    #: The spectrogram statistics are fitted on training epochs.
    needs_epoch_sample = True

    def __init__(self, modalities: Sequence[str] = ("eeg", "eog"), d_model: int = 128,
                 n_heads: int = 8, d_ff: int = 1024, n_inner_layers: int = 4, n_outer_layers: int = 4,
                 dropout: float = 0.3, attn_dropout: float = 0.0, rel_pos_clip: int = 6,
                 head_hidden: Sequence[int] = (1024, 1024), head_dropout: float = 0.3,
                 shared_head: bool = False, big_al: bool = False,
                 align_level: Literal["inner", "outer"] = "inner",
                 loss_weights: Mapping[str, float] | None = None,
                 window_s: float = 2.0, hop_s: float = 1.0, n_fft: int = 256):
        super().__init__(modalities)
        if align_level not in ("inner", "outer"):
            raise ValueError(f"align_level must be 'inner' or 'outer', got {align_level!r}")
        self.d_model = d_model
        self.big_al = big_al
        self.align_level = align_level
        self.n_inner_layers, self.n_outer_layers = n_inner_layers, n_outer_layers
        self._layer_kwargs = dict(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout,
                                  attn_dropout=attn_dropout, activation="relu",
                                  cross_query="context", rel_pos_clip=rel_pos_clip, out_bias=False)
        # Instance-level weights shadow the class default, so each registered variant carries
        # its own Table I switches while the trainer can still override them per run.
        self.default_loss_weights = self.resolve_loss_weights(loss_weights)

        self.front_end = nn.ModuleDict({
            m: STFTFrontEnd(window_s=window_s, hop_s=hop_s, n_fft=n_fft, drop_dc=True)
            for m in self.modalities})
        n_bins = next(iter(self.front_end.values())).n_bins
        self.input_proj = nn.ModuleDict({
            m: nn.Identity() if n_bins == d_model else nn.Linear(n_bins, d_model)
            for m in self.modalities})

        head_names = ["shared"] if shared_head else (
            (["mm"] if len(self.modalities) > 1 else []) + list(self.modalities))
        self.heads = nn.ModuleDict({n: MLPHead(d_model, head_hidden, dropout=head_dropout)
                                    for n in head_names})

    # -- building blocks ------------------------------------------------------------------------
    def _stack(self, n_layers: int, cross_attention: bool) -> TransformerStack:
        return TransformerStack(n_layers, cross_attention=cross_attention, **self._layer_kwargs)

    def _head(self, name: str) -> nn.Module:
        return self.heads["shared"] if "shared" in self.heads else self.heads[name]

    def _tokens(self, modality: str, x: Tensor, index: Tensor) -> Tensor:
        """Frame tokens ``(n_m, F, D)`` of the epochs ``index`` of ``x`` ``(B, L, 3000)``."""
        epochs = x.reshape(-1, EPOCH_SAMPLES)[index]  # (n_m, 3000): only the present epochs are read
        spec = self.front_end[modality](epochs)  # (n_m, F, K)
        # The STFT runs in float32; follow the parameters' dtype (DeepSpeed bf16/fp16 casts them).
        return self.input_proj[modality](spec.to(next(self.parameters()).dtype))

    @staticmethod
    def _prepend(cls: Tensor, tokens: Tensor) -> Tensor:
        """``(n, F, D)`` → ``(n, T, D)`` with the CLS vector ``(D,)`` first."""
        return torch.cat([cls.to(tokens.dtype).expand(tokens.shape[0], 1, -1), tokens], dim=1)

    @staticmethod
    def _run_outer(stack: TransformerStack, seq: Tensor, present: Tensor, context: Tensor | None = None,
                   cross_mask: Tensor | None = None) -> Tensor:
        """Outer Transformer over the sequences in which the modality appears at least once.

        ``seq`` ``(B, L, D)`` epoch embeddings (zero at absent epochs), ``present`` ``(B, L)``.
        Absent epochs are masked as keys in every layer, so they cannot reach a present epoch; the
        output is zero at absent epochs.  Skipping all-absent sequences also avoids a softmax over
        an all-masked row.
        """
        rows = present.any(dim=1).nonzero().squeeze(1)  # sequences with ≥ 1 present epoch
        out = stack(seq[rows], None if context is None else context[rows],
                    key_padding_mask=~present[rows],
                    cross_mask=None if cross_mask is None else cross_mask[rows])  # (b, L, D)
        out = _scatter_rows(out, rows, seq.shape[0])  # (B, L, D)
        return out.masked_fill(~present[..., None], 0.0)

    def _active(self, signals: Mapping[str, Tensor], present: Tensor) -> list[int]:
        """Indices of modalities that have a signal and at least one present epoch."""
        return [i for i, m in enumerate(self.modalities) if m in signals and bool(present[..., i].any())]

    def _predict(self, fused: Tensor | None, streams: dict[int, Tensor], present: Tensor,
                 aux: dict[str, Tensor]) -> ModelOutput:
        """Apply the heads and the per-epoch prediction rule (module docstring).

        ``fused`` ``(B, L, D)`` (None when fewer than two modalities are active), ``streams``
        maps an active modality index to its unimodal representation ``(B, L, D)``.
        """
        batch, length, _ = present.shape
        n_present = present.sum(-1)  # (B, L)
        like = next(iter(streams.values())) if streams else None
        zeros = (like.new_zeros(batch, length, 5) if like is not None
                 else torch.zeros(batch, length, 5, device=present.device))
        logits = zeros
        single = zeros
        for i, m in enumerate(self.modalities):
            if i in streams:
                logit_m = self._head(m)(streams[i]).masked_fill(~present[..., i, None], 0.0)
                single = single + logit_m  # at n = 1 epochs exactly one term is non-zero
            else:
                logit_m = zeros
            aux[f"logits_{m}"] = logit_m
        if len(self.modalities) > 1:
            logits_mm = zeros if fused is None else self._head("mm")(fused)
            logits_mm = logits_mm.masked_fill((n_present < 2)[..., None], 0.0)
            aux["logits_mm"] = logits_mm
            logits = torch.where((n_present >= 2)[..., None], logits_mm, single)
        else:
            logits = single
        aux["present"] = present
        return ModelOutput(logits=logits, aux=aux)

    # -- spectrogram statistics -----------------------------------------------------------------
    def set_spectrogram_statistics(self, modality: str, mean: Tensor, std: Tensor) -> None:
        """Set the per-bin normalisation of ``modality``'s spectrogram (training-set statistics).

        Parameters
        ----------
        modality : str
            One of :attr:`modalities`.
        mean, std : Tensor
            ``(K,)`` per-bin mean and standard deviation of the log-spectrogram in dB.
        """
        if modality not in self.front_end:
            raise ValueError(f"unknown modality {modality!r} for spectrogram statistics; this model "
                             f"uses {list(self.modalities)}")
        self.front_end[modality].set_statistics(mean, std)

    def fit_training_statistics(self, class_counts: Tensor, epochs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Set each sampled modality's spectrogram normalisation from training epochs (§II-A).

        Class counts are not used (the loss is unweighted). Returns the ``front_end.<m>.bin_mean``
        and ``front_end.<m>.bin_std`` buffers set; a modality without epochs keeps its statistics.
        """
        fitted = {}
        for modality, (mean, std) in self.spectrogram_statistics(epochs).items():
            self.set_spectrogram_statistics(modality, mean, std)
            front = self.front_end[modality]
            fitted[f"front_end.{modality}.bin_mean"] = front.bin_mean.clone()
            fitted[f"front_end.{modality}.bin_std"] = front.bin_std.clone()
        return fitted

    @torch.no_grad()
    def spectrogram_statistics(self, signals: Mapping[str, Tensor],
                               present: Tensor | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-bin mean and std of each modality's log-spectrogram over the given epochs.

        Parameters
        ----------
        signals : mapping of str to Tensor
            ``(..., 3000)`` epochs per modality (e.g. a sample of the training split).
        present : Tensor, optional
            ``(..., M)`` availability mask matching ``signals``' leading dims; absent epochs are
            left out of the statistics.

        Returns
        -------
        dict of str to (Tensor, Tensor)
            ``modality → (mean, std)``, each ``(K,)``, ready for :meth:`set_spectrogram_statistics`.
        """
        stats = {}
        for modality, x in signals.items():
            if modality not in self.front_end:
                raise ValueError(f"signals has modality {modality!r} this model does not use; it uses "
                                 f"{list(self.modalities)}")
            if x.shape[-1] != EPOCH_SAMPLES:
                raise ValueError(f"signals[{modality!r}] must end in {EPOCH_SAMPLES} samples, got "
                                 f"{tuple(x.shape)}")
            epochs = x.reshape(-1, EPOCH_SAMPLES)
            if present is not None:
                epochs = epochs[present[..., self.modalities.index(modality)].reshape(-1).bool()]
            if epochs.shape[0] == 0:
                raise ValueError(f"no present epoch of {modality!r} to compute statistics from")
            stats[modality] = self.front_end[modality].statistics_from(epochs)
        return stats

    # -- loss ----------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, batch: SleepBatch,
             weights: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """CoRe-Sleep objective, Eq. 8–10, with the incomplete-data rule of §III-D.

        Terms (``n`` = modalities present at an epoch):

        * ``ce_mm``: multimodal-head CE on epochs with ``n ≥ 2`` (weight ``mm``).
        * ``ce_<m>``: modality ``m``'s unimodal-head CE on epochs with ``m`` present and
          ``n ≥ 2``; ``ms`` is their sum (Eq. 9, weight ``ms``).
        * ``ce_single``: CE of the prediction on epochs with ``n = 1``, i.e. the unimodal head of
          the one present modality (weight ``single``).  "Only on the initial 100 [multimodal
          patients] are the MS and AL losses calculated" (§III-D): a recording lacking a modality
          trains only its available branch, through this term.  A single-modality model trains
          on this term alone.
        * ``align``: Eq. 10 summed over modality pairs, on epochs where both are present
          (weight ``align`` = λ_A).
        * ``total``: the weighted sum.
        """
        if batch.labels is None:
            raise ValueError("loss needs batch.labels; got a batch without labels")
        w = self.resolve_loss_weights(weights)
        aux, labels = output.aux, batch.labels
        present = aux["present"]
        n_present = present.sum(-1)
        multi = n_present >= 2
        terms: dict[str, Tensor] = {}
        zero = output.logits.sum() * 0.0
        terms["ce_single"] = masked_cross_entropy(output.logits, labels, n_present == 1)
        if len(self.modalities) > 1:
            terms["ce_mm"] = masked_cross_entropy(aux["logits_mm"], labels, multi)
            ms = zero
            for i, m in enumerate(self.modalities):
                terms[f"ce_{m}"] = masked_cross_entropy(aux[f"logits_{m}"], labels, present[..., i] & multi)
                ms = ms + terms[f"ce_{m}"]
            terms["ms"] = ms
            align = zero
            key = "cls" if self.align_level == "inner" else "seq"
            for i, a in enumerate(self.modalities):
                for j in range(i + 1, len(self.modalities)):
                    b = self.modalities[j]
                    if f"{key}_{a}" in aux and f"{key}_{b}" in aux:
                        align = align + alignment_loss(aux[f"{key}_{a}"], aux[f"{key}_{b}"],
                                                       present[..., i] & present[..., j], self.big_al)
            terms["align"] = align
            terms["total"] = (w["mm"] * terms["ce_mm"] + w["ms"] * ms + w["align"] * align
                              + w["single"] * terms["ce_single"])
        else:
            terms["total"] = w["single"] * terms["ce_single"]
        return terms

    # -- parameter groups ------------------------------------------------------------------------
    def _group_of(self, name: str) -> str:
        parts = name.split(".")
        if ".cross_attn." in name or ".norm_ca." in name:
            return "cross_attention"
        if parts[0] == "heads":
            return "heads"
        if parts[0] in ("input_proj", "modality_embedding"):
            return "front_end"
        if parts[0] == "cls":  # CoReSleep: cls.<m>; Early: one shared cls
            return f"inner_{parts[1]}" if len(parts) > 1 else "inner"
        if parts[0] in ("inner", "outer"):  # CoReSleep: inner.<m>.layers...; Early: inner.layers...
            return f"{parts[0]}_{parts[1]}" if parts[1] in self.modalities else parts[0]
        return "other"

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by block: ``front_end``, ``inner_<m>``, ``outer_<m>`` (the CLS vector
        belongs to ``inner_<m>``), ``cross_attention``, ``heads`` (Early fusion: ``inner``,
        ``outer`` for the shared encoder).

        The paper trains in one phase and freezes nothing; any of these groups may be frozen, e.g.
        ``[inner_eeg, outer_eeg]`` to fine-tune the rest of an EEG-pretrained model. A group
        exists only if it has parameters (no ``front_end`` for CoRe and Mid-Late fusion at
        ``d_model = 128``, no ``cross_attention`` for Mid-Late fusion or one modality).
        """
        groups: dict[str, list[str]] = {}
        for name, _ in self.named_parameters():
            groups.setdefault(self._group_of(name), []).append(name)
        return groups


class CoReSleep(_CoReSleepBase):
    """CoRe-Sleep: coordinated-representation fusion (Kontras et al., TNSRE 2024, Fig. 1), or the
    Mid-Late fusion benchmark (Fig. 2a) with ``fusion="midlate"``.

    Parameters
    ----------
    fusion : {"core", "midlate"}
        ``"core"``: per-modality unimodal pass, then a multimodal pass through the same stacks with
        cross-attention to the other modalities (§II-C).  ``"midlate"``: independent unimodal
        encoders, ``Z = Σ_m U_m`` before the multimodal head, no cross-attention (§II-E).
    **kwargs
        See :class:`_CoReSleepBase`.

    Notes
    -----
    ``aux`` keys: ``logits_mm`` (when ``M ≥ 2``), ``logits_<m>``, ``cls_<m>`` (unimodal inner CLS
    embeddings ``(B, L, D)``, the AL input), ``seq_<m>`` (unimodal outer outputs), ``fused``
    (``Z``), ``present`` (effective mask).  Embedding keys exist only for modalities that ran.
    """

    def __init__(self, modalities: Sequence[str] = ("eeg", "eog"),
                 fusion: Literal["core", "midlate"] = "core", **kwargs):
        super().__init__(modalities, **kwargs)
        if fusion not in ("core", "midlate"):
            raise ValueError(f"fusion must be 'core' or 'midlate', got {fusion!r}")
        self.fusion = fusion
        cross = fusion == "core" and len(self.modalities) > 1
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.randn(self.d_model) * 0.02)
                                     for m in self.modalities})
        self.inner = nn.ModuleDict({m: self._stack(self.n_inner_layers, cross) for m in self.modalities})
        self.outer = nn.ModuleDict({m: self._stack(self.n_outer_layers, cross) for m in self.modalities})

    def forward_checked(self, signals: dict[str, Tensor], present: Tensor) -> ModelOutput:
        batch, length, _ = present.shape
        n = batch * length
        flat = present.reshape(n, -1)  # (N, M)
        active = self._active(signals, present)
        aux: dict[str, Tensor] = {}

        # Unimodal pass (Fig. 1b; docs/models.md §2.2 steps 1–3), present epochs only.
        index, tokens, inner_out, cls_emb, seq_out = {}, {}, {}, {}, {}
        for i in active:
            m = self.modalities[i]
            index[i] = flat[:, i].nonzero().squeeze(1)  # (n_m,)
            tokens[i] = self._prepend(self.cls[m], self._tokens(m, signals[m], index[i]))  # (n_m, T, D)
            inner_out[i] = self.inner[m](tokens[i])  # (n_m, T, D)
            cls_emb[i] = _scatter_rows(inner_out[i][:, 0], index[i], n).view(batch, length, -1)  # (B, L, D)
            seq_out[i] = self._run_outer(self.outer[m], cls_emb[i], present[..., i])  # (B, L, D)
            aux[f"cls_{m}"], aux[f"seq_{m}"] = cls_emb[i], seq_out[i]

        # Multimodal pass (steps 4–6): same stacks, CA queries from the other modalities; the
        # unimodal heads keep reading U_m, the multimodal head reads Z = Σ_m Z_m.
        fused = None
        if len(active) > 1:
            streams = seq_out if self.fusion == "midlate" else {
                i: self._multimodal(i, active, flat, present, index, tokens, inner_out, cls_emb, seq_out)
                for i in active}
            fused = torch.stack([streams[i] for i in active]).sum(0)  # (B, L, D)
            aux["fused"] = fused
        return self._predict(fused, seq_out, present, aux)

    def _multimodal(self, i: int, active: list[int], flat: Tensor, present: Tensor,
                    index: dict[int, Tensor], tokens: dict[int, Tensor], inner_out: dict[int, Tensor],
                    cls_emb: dict[int, Tensor], seq_out: dict[int, Tensor]) -> Tensor:
        """Multimodal representation ``Z_i`` ``(B, L, D)`` of modality ``i`` (Eq. 6–7)."""
        m = self.modalities[i]
        batch, length, _ = present.shape
        n = batch * length
        others = [j for j in active if j != i]
        n_others = flat[:, others].sum(1)  # (N,): other modalities present at each epoch
        sel = (flat[:, i] & (n_others > 0)).nonzero().squeeze(1)  # (s,) epochs to cross-attend

        # Inner: queries = mean over present others of their full unimodal inner output (T tokens).
        emb = cls_emb[i].reshape(n, -1)  # (N, D)
        if sel.numel():
            ctx = inner_out[i].new_zeros(n, *inner_out[i].shape[1:])  # (N, T, D)
            for j in others:
                ctx = ctx.index_add(0, index[j], inner_out[j])
            ctx = ctx[sel] / n_others[sel, None, None].to(ctx.dtype)  # (s, T, D)
            rows = (flat[:, i].long().cumsum(0) - 1)[sel]  # row of each selected epoch in tokens[i]
            h = self.inner[m](tokens[i][rows], context=ctx)  # (s, T, D)
            # Epochs without another modality keep the unimodal CLS (CA skipped there).
            emb = emb.index_copy(0, sel, h[:, 0])
        emb = emb.view(batch, length, -1)  # (B, L, D)

        # Outer: queries = mean over present others of their unimodal outer outputs.
        n_others_seq = n_others.view(batch, length)
        ctx_seq = torch.stack([seq_out[j] for j in others]).sum(0)  # (B, L, D), zero where absent
        ctx_seq = ctx_seq / n_others_seq.clamp_min(1)[..., None].to(ctx_seq.dtype)
        return self._run_outer(self.outer[m], emb, present[..., i], context=ctx_seq,
                               cross_mask=n_others_seq > 0)


class CoReSleepEarly(_CoReSleepBase):
    """Early-fusion benchmark of Kontras et al., TNSRE 2024, §II-E and Fig. 2b.

    One encoder (inner + outer Transformer, no cross-attention) shared by all modalities.  The
    inner Transformer of an epoch reads ``[CLS; frames_m1 + e_m1; frames_m2 + e_m2; ...]``, the
    frame tokens of every modality concatenated, each plus a learnable modality embedding
    ``e_m`` (§II-E: "we sum another learnable embedding unique for every modality").  Relative
    positions run over the concatenated token index; the modality embedding tells the modalities
    apart.  Tokens of a modality absent at that epoch are masked as keys.  The outer Transformer
    reads the CLS outputs.  Unimodal predictions need extra passes through the same encoder with
    one modality's tokens (``[CLS; frames_m + e_m]``), which also give the AL embeddings.

    ``aux`` keys as in :class:`CoReSleep`.
    """

    def __init__(self, modalities: Sequence[str] = ("eeg", "eog"), **kwargs):
        super().__init__(modalities, **kwargs)
        self.cls = nn.Parameter(torch.randn(self.d_model) * 0.02)
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modalities), self.d_model) * 0.02)
        self.inner = self._stack(self.n_inner_layers, cross_attention=False)
        self.outer = self._stack(self.n_outer_layers, cross_attention=False)

    def forward_checked(self, signals: dict[str, Tensor], present: Tensor) -> ModelOutput:
        batch, length, _ = present.shape
        n = batch * length
        flat = present.reshape(n, -1)  # (N, M)
        active = self._active(signals, present)
        aux: dict[str, Tensor] = {}

        index, frames, seq_out = {}, {}, {}
        for i in active:
            m = self.modalities[i]
            index[i] = flat[:, i].nonzero().squeeze(1)  # (n_m,)
            frames[i] = self._tokens(m, signals[m], index[i]) + self.modality_embedding[i]  # (n_m, F, D)
            # Unimodal pass: the shared encoder on this modality alone.
            h = self.inner(self._prepend(self.cls, frames[i]))  # (n_m, T, D)
            cls_emb = _scatter_rows(h[:, 0], index[i], n).view(batch, length, -1)  # (B, L, D)
            seq_out[i] = self._run_outer(self.outer, cls_emb, present[..., i])
            aux[f"cls_{self.modalities[i]}"], aux[f"seq_{self.modalities[i]}"] = cls_emb, seq_out[i]

        fused = None
        if len(active) > 1:
            any_present = flat[:, active].any(1)  # (N,)
            sel = any_present.nonzero().squeeze(1)  # (s,)
            parts, masks = [], []
            for i in active:
                parts.append(_scatter_rows(frames[i], index[i], n)[sel])  # (s, F, D), zero where absent
                masks.append((~flat[sel, i])[:, None].expand(-1, frames[i].shape[1]))  # (s, F)
            tokens = self._prepend(self.cls, torch.cat(parts, dim=1))  # (s, 1 + F·A, D)
            pad = torch.cat([torch.zeros_like(masks[0][:, :1]), *masks], dim=1)  # CLS is never masked
            h = self.inner(tokens, key_padding_mask=pad)  # (s, 1 + F·A, D)
            cls_mm = _scatter_rows(h[:, 0], sel, n).view(batch, length, -1)  # (B, L, D)
            fused = self._run_outer(self.outer, cls_mm, any_present.view(batch, length))
            aux["fused"] = fused
        return self._predict(fused, seq_out, present, aux)


# -- registered variants -------------------------------------------------------------------------
#: Paper hyper-parameters (§II-F and docs/models.md §2.2) are the class defaults.
#: Tiny: d_model 32 (with a 128→32 input projection), 2 heads, 1 inner + 1 outer layer, FFN 64,
#: one hidden head layer of 64 — tens of thousands of parameters, for tests and smoke runs.
_TINY = dict(d_model=32, n_heads=2, d_ff=64, n_inner_layers=1, n_outer_layers=1, head_hidden=(64,))
_NO_MS = {"ms": 0.0}
_NO_AL = {"align": 0.0}
_NO_MS_AL = {"ms": 0.0, "align": 0.0}


def _build(cls: type[_CoReSleepBase], loss_weights: Mapping[str, float] | None, defaults: dict,
           overrides: dict) -> _CoReSleepBase:
    # Config overrides of loss weights merge into the variant's switches rather than replace them.
    weights = {**(loss_weights or {}), **overrides.pop("loss_weights", {})}
    return cls(**{**defaults, **overrides, "loss_weights": weights})


@register_model
def coresleep(**overrides) -> CoReSleep:
    """CoRe-Sleep (CoRe + MS + AL), the paper's model: EEG+EOG, 10.0 M parameters."""
    return _build(CoReSleep, None, {"fusion": "core"}, overrides)


@register_model
def core(**overrides) -> CoReSleep:
    """CoRe (Table I): CoRe-Sleep's architecture trained with the multimodal CE only."""
    return _build(CoReSleep, _NO_MS_AL, {"fusion": "core"}, overrides)


@register_model
def core_al(**overrides) -> CoReSleep:
    """CoRe + AL (Table I)."""
    return _build(CoReSleep, _NO_MS, {"fusion": "core"}, overrides)


@register_model
def core_ms(**overrides) -> CoReSleep:
    """CoRe + MS (Table I)."""
    return _build(CoReSleep, _NO_AL, {"fusion": "core"}, overrides)


@register_model
def coresleep_early(**overrides) -> CoReSleepEarly:
    """Early + MS + AL (Table I, Fig. 2b)."""
    return _build(CoReSleepEarly, None, {}, overrides)


@register_model
def early(**overrides) -> CoReSleepEarly:
    """Early (Table I): Early fusion trained with the multimodal CE only."""
    return _build(CoReSleepEarly, _NO_MS_AL, {}, overrides)


@register_model
def early_al(**overrides) -> CoReSleepEarly:
    """Early + AL (Table I)."""
    return _build(CoReSleepEarly, _NO_MS, {}, overrides)


@register_model
def early_ms(**overrides) -> CoReSleepEarly:
    """Early + MS (Table I)."""
    return _build(CoReSleepEarly, _NO_AL, {}, overrides)


@register_model
def coresleep_midlate(**overrides) -> CoReSleep:
    """Mid-Late + MS + AL (Table I, Fig. 2a)."""
    return _build(CoReSleep, None, {"fusion": "midlate"}, overrides)


@register_model
def midlate(**overrides) -> CoReSleep:
    """Mid-Late (Table I): independent encoders summed before the head, multimodal CE only."""
    return _build(CoReSleep, _NO_MS_AL, {"fusion": "midlate"}, overrides)


@register_model
def midlate_al(**overrides) -> CoReSleep:
    """Mid-Late + AL (Table I)."""
    return _build(CoReSleep, _NO_MS, {"fusion": "midlate"}, overrides)


@register_model
def midlate_ms(**overrides) -> CoReSleep:
    """Mid-Late + MS (Table I)."""
    return _build(CoReSleep, _NO_AL, {"fusion": "midlate"}, overrides)


@register_model
def coresleep_tiny(**overrides) -> CoReSleep:
    """Tiny CoRe-Sleep (CoRe + MS + AL) for tests and smoke runs."""
    return _build(CoReSleep, None, {"fusion": "core", **_TINY}, overrides)


@register_model
def core_tiny(**overrides) -> CoReSleep:
    """Tiny CoRe (multimodal CE only)."""
    return _build(CoReSleep, _NO_MS_AL, {"fusion": "core", **_TINY}, overrides)


@register_model
def coresleep_early_tiny(**overrides) -> CoReSleepEarly:
    """Tiny Early + MS + AL."""
    return _build(CoReSleepEarly, None, dict(_TINY), overrides)


@register_model
def coresleep_midlate_tiny(**overrides) -> CoReSleep:
    """Tiny Mid-Late + MS + AL."""
    return _build(CoReSleep, None, {"fusion": "midlate", **_TINY}, overrides)


__all__ = ["CoReSleep", "CoReSleepEarly", "PAPER_LOSS_WEIGHTS"]
