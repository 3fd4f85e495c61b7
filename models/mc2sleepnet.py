"""MC²SleepNet: multi-modal cross-masking with contrastive learning (Na et al., 2024).

Y. Na, Y. Lee, H. K. Ahn, S. H. Oh, J.-G. Lee, H.-K. Lee, H. Kim, "MC²SleepNet: Multi-modal
Cross-masking with Contrastive Learning for Sleep Stage Classification" (formatted as ACM MM 2024).
Specification and provenance of every default: docs/models.md §3 ([P] paper, [C] partial public code
``younghoonNa/MC2SleepNet``, [D] somnray default). Bare § numbers in this file are the paper's.

One EEG channel gives two "views" of each 30-s epoch, which the network treats as two modalities:

=====================  ================================================  ======================
block                  what                                              paper
=====================  ================================================  ======================
raw backbone ``F_Sg``  SleePyCo CNN (5 blocks, SE gates) → channel        §3.1, Fig. 1
                       max-pool 256→128 → ``Z^Sg (N, 5, 128)``
spectrogram backbone   log-STFT ``(N, 29, 129)`` → Conv1d 129→128 + GELU  §3.1, Eq. 1–8
``F_Sp``               → sinusoidal PE → 4 post-LN Transformer layers
                       → ``Z^Sp (N, 29, 128)``
epoch-wise attention   additive attention + GAP per view → ``O (N, 128)``  Eq. 9–12
projection heads       128→128→128, L2-normalised → ``zz (N, 128)``        Eq. 13
epoch-level loss       two-way InfoNCE per sequence position               Eq. 14–16
sequence level         per view: PE, mask (pretrain), 4 layers SA→CA→FFN   §3.2, Eq. 17
                       (CA: queries from the stream, keys/values = other
                       view's unmasked input sequence) → ``t (B, L, 128)``
heads and loss         MLP(t^Sg), MLP(t^Sp), MLP(t^Sg ⊕ t^Sp); 3× CE       Eq. 18–23
=====================  ================================================  ======================

Prediction (``ModelOutput.logits``) is the concatenation head's (§3.2, "For an inference").

Training has two phases (§3, Table 3), selected with ``phase=`` or :meth:`MC2SleepNet.set_phase`,
and an optional stage 0 before them:

* ``"backbone"`` (stage 0): the paper starts from pre-trained backbones without saying how they
  were trained. Here each view's backbone and epoch-wise attention classify every epoch on its own
  through that view's head (``raw_head`` / ``spec_head`` on the pooled ``O``; no sequence level,
  no masking, no augmentation); loss = CE_raw + CE_spec, averaged over epochs; the prediction is
  the sum of the two views' logits. ``epoch_views="raw"`` / ``"spec"`` trains and predicts from
  one view only: the single-epoch baselines of Table 3 ("CNN only", "TF only", registered as
  ``mc2sleepnet_cnn_only`` / ``mc2sleepnet_tf_only``). The next phase starts from these weights
  (``init_from: previous``); the heads are re-used as a warm start.
* ``"pretrain"``: the whole network; in training mode the sequence inputs are masked
  (Bernoulli(``mask_ratio``) per position and view, a learnable mask token per view, at least one
  visible position) and the inputs augmented; loss = InfoNCE + 1·CE_raw + 0.1·CE_spec +
  0.1·CE_concat (Eq. 19, 23).
* ``"finetune"``: no masking, no augmentation, loss = CE_raw + CE_spec + CE_concat; the trainer
  freezes the ``"epoch_level"`` parameter group (both backbones, epoch-wise attention, projection
  heads). Frozen components are kept in eval mode by :meth:`MC2SleepNet.train`, so their
  BatchNorm running statistics and dropout stay fixed too.

Augmentation (§4.1.2, docs/models.md §3.4): the paper introduces it for the contrastive learning. The
InfoNCE needs the augmented views, and both views then feed the sequence level, as a data loader
that augments its samples would do (one backbone pass). ``augment_sequence_path=False`` runs the
backbones a second time on the clean inputs for the sequence level instead (about twice the
epoch-level cost, and the classifier never sees augmented epochs).

Missing modality: MC²SleepNet is not a missing-modality model. Epochs whose modality is absent
(``present`` false) are left out of every loss term (they are neither InfoNCE anchors nor
negatives), but the forward pass still scores them from whatever signal is there: their logits
are unreliable and should be ignored downstream. A batch without the model's modality at all
raises ``ValueError``.

Parameter count. The full model has 6,216,404 parameters (paper: 5.76 M, Table 2): raw CNN
1,543,621 (docs/models.md estimate ≈1.5 M), spectrogram backbone 1,336,064 (≈1.3 M, of which the
resizing conv 16,640), the two sequence blocks 3,169,280 (≈3.2 M), epoch-wise attention 33,280,
projection heads 66,048, classification heads 67,855 (with the [D] hidden layer of 128), mask
tokens 256. The three blocks docs/models.md §3.2 sizes (CNN, spectrogram Transformer, sequence
blocks) already sum to 6.05 M > 5.76 M, so the 0.46 M (+7.9 %) gap cannot come from the parts the
paper leaves open (resizing conv, EW, projection, heads, mask tokens: 0.18 M together). It must lie
in a specified block built or counted differently (e.g. a narrower FFN somewhere, or a count that
leaves a block out); neither the text nor the partial public code says which, so we follow the
text.

Shapes (``B`` sequences, ``L`` epochs a sequence, ``N = B·L``, ``S = 3000`` samples, ``F = 29``
frames, ``K = 129`` bins, ``T`` tokens an epoch, ``D = 128`` width, ``P = 128`` projection width).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .augment import RawAugmentation, augment_raw, augment_spectrogram
from .base import EPOCH_SAMPLES, IGNORE_INDEX, N_CLASSES, ModelOutput, SleepBatch, SleepStagingModel
from .layers.contrastive import InfoNCEForm, info_nce_per_position
from .layers.heads import MLPHead
from .layers.pooling import EpochAttentionPooling
from .layers.sleepyco import SleePyCoBackbone
from .layers.stft import STFTFrontEnd
from .layers.transformer import SinusoidalPositionalEncoding, TransformerStack
from .registry import register_model

#: Training phases: stage 0 (single-epoch backbones, §3 "pre-trained backbones"), then §3 / Table 3's two.
PHASES = ("backbone", "pretrain", "finetune")
Phase = Literal["backbone", "pretrain", "finetune"]
#: Views a single-epoch (``backbone``) phase trains and predicts from.
EPOCH_VIEWS = ("both", "raw", "spec")

#: Parameter groups that make up the epoch level, frozen in the fine-tuning phase.
EPOCH_LEVEL_GROUPS = ("raw_backbone", "spec_backbone", "epoch_attention", "projection")


class RawSignalEncoder(nn.Module):
    """``F_Sg``: SleePyCo CNN, then max-pooling over channels to the Transformer width (§3.1).

    The paper's final "max-pool of width 2 to match the Transformer output dimensions" is read as a
    pool over the channel axis, 256 → 128 (docs/models.md §3.2 [I]); the time axis keeps T = 5.

    Shapes: ``(N, S)`` → ``(N, T, D)``.
    """

    def __init__(self, d_model: int, widths: Sequence[int], depths: Sequence[int], se_reduction: int):
        super().__init__()
        self.cnn = SleePyCoBackbone(1, widths, depths, pool_size=5, se_reduction=se_reduction)
        if widths[-1] % d_model:
            raise ValueError(f"the last CNN width ({widths[-1]}) must be a multiple of d_model "
                             f"({d_model}) for the channel max-pool")
        self.channel_pool = widths[-1] // d_model

    def forward(self, x: Tensor) -> Tensor:
        z = self.cnn(x.unsqueeze(1))  # (N, C, T)
        z = z.transpose(1, 2)  # (N, T, C)
        return F.max_pool1d(z, self.channel_pool) if self.channel_pool > 1 else z  # (N, T, D)


class SpectrogramEncoder(nn.Module):
    """``F_Sp``: resizing CNN + GELU, sinusoidal PE, post-LN Transformer (§3.1, Eq. 1–8).

    The "simple CNN resizing layer" is a Conv1d over the 129 bins as channels with kernel 1
    (docs/models.md [D]); the FFN uses ReLU as Eq. 4 writes it.

    Shapes: ``(N, F, K)`` → ``(N, F, D)``.
    """

    def __init__(self, n_bins: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, dropout: float):
        super().__init__()
        self.resize = nn.Conv1d(n_bins, d_model, kernel_size=1)
        self.pos = SinusoidalPositionalEncoding(d_model)
        self.transformer = TransformerStack(n_layers, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                                            dropout=dropout, activation="relu")

    def forward(self, spec: Tensor) -> Tensor:
        h = F.gelu(self.resize(spec.transpose(1, 2)))  # (N, D, F): bins as channels
        h = self.pos(h.transpose(1, 2))  # (N, F, D)
        return self.transformer(h)


class ProjectionHead(nn.Module):
    """Eq. 13: ``zz = normalize(W2 · ReLU(W1 · O))`` (architecture docs/models.md [D])."""

    def __init__(self, d_model: int, proj_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, proj_dim), nn.ReLU(), nn.Linear(proj_dim, proj_dim))

    def forward(self, o: Tensor) -> Tensor:
        return F.normalize(self.net(o), dim=-1)


class MC2SleepNet(SleepStagingModel):
    """MC²SleepNet on one EEG channel, with raw-signal and spectrogram views.

    Parameters
    ----------
    modality : str
        The single modality consumed (paper: one EEG channel).
    raw_widths, raw_depths : sequence of int
        SleePyCo block widths and convolutions a block (paper: 64/128/192/256/256, 2/2/3/3/3).
    se_reduction : int
        Squeeze-and-excitation ratio of the CNN (SleePyCo: 16).
    d_model, n_heads, d_ff : int
        Transformer width, heads and FFN width, shared by backbone and sequence level (128, 8, 1024).
    backbone_layers, sequence_layers : int
        Layers of the spectrogram Transformer and of each sequence block (4 and 4).
    dropout : float
        Transformer dropout (0.1).
    proj_dim : int
        Projection width ``d_proj`` (128).
    head_hidden, head_dropout : int, float
        Hidden width and dropout of the classification MLPs (docs/models.md [D]: 128, 0.1).
    temperature : float
        InfoNCE temperature τ (docs/models.md [D]: 0.1).
    infonce_form : {"paper", "conventional"}
        Log after averaging over positions (Eq. 14 as written) or the mean of per-position logs.
    mask_ratio : float
        Probability that a sequence position of a view is masked in pre-training (0.5).
    phase : {"backbone", "pretrain", "finetune"}
        Training phase (see the module docstring).
    epoch_views : {"both", "raw", "spec"}
        Views the ``backbone`` phase trains and predicts from (the single-epoch baselines use one).
    augment : bool
        Augment the inputs in pre-training (training mode only).
    augment_sequence_path : bool
        Whether the sequence level sees the augmented epochs (see the module docstring).
    raw_augmentation : RawAugmentation, optional
        Raw-view augmentation parameters (SleePyCo's defaults in z-scored units).
    spectrogram_noise_std : float
        Noise σ on the normalised spectrogram (docs/models.md [D]: 0.1).
    pooling_reduce : {"sum", "mean"}
        Epoch-wise attention pooling: ``Σ_t α_t z_t`` (Eq. 11 as written, default: the pooled view
        then has the scale of the positional encoding added after it) or that divided by ``T``
        (the former reading of GAP as a mean over tokens).
    ce_reduction : {"sequence_sum", "mean"}
        Eq. 18's reading: cross-entropy summed over the L positions and averaged over sequences
        (default, as written), or the mean over labelled epochs (= Eq. 18 / L, which weighs the
        InfoNCE L times more against the CE).
    loss_weights : mapping of phase to mapping of str to float, optional
        Overrides of :attr:`PHASE_LOSS_WEIGHTS`, per phase.
    """

    #: Stage 0 and the recipe's two phases, set with ``phase=`` (``model.overrides.phase`` in a config).
    phases = PHASES
    paper = ("Na et al., MC²SleepNet: Multi-modal Cross-masking with Contrastive Learning for Sleep "
             "Stage Classification (ACM MM 2024)")
    #: The spectrogram statistics are fitted on training epochs.
    needs_epoch_sample = True
    #: Loss weights per phase (Eq. 19 and 23; ``contrastive`` is the epoch-level InfoNCE).
    PHASE_LOSS_WEIGHTS: ClassVar[dict[str, dict[str, float]]] = {
        "backbone": {"contrastive": 0.0, "raw": 1.0, "spec": 1.0, "concat": 0.0},
        "pretrain": {"contrastive": 1.0, "raw": 1.0, "spec": 0.1, "concat": 0.1},
        "finetune": {"contrastive": 0.0, "raw": 1.0, "spec": 1.0, "concat": 1.0},
    }

    def __init__(self, modality: str = "eeg", *, raw_widths: Sequence[int] = (64, 128, 192, 256, 256),
                 raw_depths: Sequence[int] = (2, 2, 3, 3, 3), se_reduction: int = 16,
                 d_model: int = 128, n_heads: int = 8, d_ff: int = 1024, backbone_layers: int = 4,
                 sequence_layers: int = 4, dropout: float = 0.1, proj_dim: int = 128,
                 head_hidden: int = 128, head_dropout: float = 0.1, temperature: float = 0.1,
                 infonce_form: InfoNCEForm = "paper", mask_ratio: float = 0.5,
                 phase: Phase = "pretrain", augment: bool = True, augment_sequence_path: bool = True,
                 raw_augmentation: RawAugmentation | None = None,
                 spectrogram_noise_std: float = 0.1, pooling_reduce: Literal["mean", "sum"] = "sum",
                 ce_reduction: Literal["sequence_sum", "mean"] = "sequence_sum",
                 epoch_views: Literal["both", "raw", "spec"] = "both",
                 loss_weights: Mapping[str, Mapping[str, float]] | None = None):
        super().__init__((modality,))
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        if infonce_form not in ("paper", "conventional"):
            raise ValueError(f"infonce_form must be 'paper' or 'conventional', got {infonce_form!r}")
        if ce_reduction not in ("sequence_sum", "mean"):
            raise ValueError(f"ce_reduction must be 'sequence_sum' or 'mean', got {ce_reduction!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if epoch_views not in EPOCH_VIEWS:
            raise ValueError(f"epoch_views must be one of {list(EPOCH_VIEWS)}, got {epoch_views!r}")
        self.modality = modality
        self.epoch_views = epoch_views
        self.temperature = temperature
        self.infonce_form = infonce_form
        self.mask_ratio = mask_ratio
        self.augment = augment
        self.augment_sequence_path = augment_sequence_path
        self.raw_augmentation = raw_augmentation or RawAugmentation()
        self.spectrogram_noise_std = spectrogram_noise_std
        self.ce_reduction = ce_reduction
        #: Source of the masking and augmentation draws; None uses torch's global generator.
        self.generator: torch.Generator | None = None
        self._loss_weights = {p: dict(w) for p, w in self.PHASE_LOSS_WEIGHTS.items()}
        if epoch_views != "both":  # a single-epoch baseline learns from its one view
            self._loss_weights["backbone"]["spec" if epoch_views == "raw" else "raw"] = 0.0
        for name, overrides in (loss_weights or {}).items():
            if name not in PHASES:
                raise ValueError(f"loss_weights has unknown phase {name!r}; phases are {list(PHASES)}")
            for key, value in overrides.items():
                if key not in self._loss_weights[name]:
                    raise ValueError(f"unknown loss weight {key!r} for phase {name!r}; known weights "
                                     f"are {sorted(self._loss_weights[name])}")
                self._loss_weights[name][key] = float(value)
        self.phase: Phase = "pretrain"
        self.set_phase(phase)

        # Epoch level (§3.1).
        self.stft = STFTFrontEnd(drop_dc=False)  # (…, 29, 129), per-bin statistics as buffers
        self.raw_backbone = RawSignalEncoder(d_model, raw_widths, raw_depths, se_reduction)
        self.spec_backbone = SpectrogramEncoder(self.stft.n_bins, d_model, n_heads, d_ff,
                                                backbone_layers, dropout)
        self.raw_attention = EpochAttentionPooling(d_model, reduce=pooling_reduce)
        self.spec_attention = EpochAttentionPooling(d_model, reduce=pooling_reduce)
        self.raw_projection = ProjectionHead(d_model, proj_dim)
        self.spec_projection = ProjectionHead(d_model, proj_dim)

        # Sequence level (§3.2).
        self.sequence_pos = SinusoidalPositionalEncoding(d_model)
        self.mask_token_raw = nn.Parameter(torch.empty(d_model))
        self.mask_token_spec = nn.Parameter(torch.empty(d_model))
        nn.init.normal_(self.mask_token_raw, std=0.02)
        nn.init.normal_(self.mask_token_spec, std=0.02)
        layer = dict(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout, activation="gelu",
                     cross_attention=True, cross_query="self")
        self.raw_sequence = TransformerStack(sequence_layers, **layer)
        self.spec_sequence = TransformerStack(sequence_layers, **layer)
        # MLPs of Eq. 20–22: Linear → ReLU → Dropout → Linear to the 5 stages (docs/models.md [D]).
        self.raw_head = MLPHead(d_model, (head_hidden,), N_CLASSES, head_dropout)
        self.spec_head = MLPHead(d_model, (head_hidden,), N_CLASSES, head_dropout)
        self.concat_head = MLPHead(2 * d_model, (head_hidden,), N_CLASSES, head_dropout)

    # -- phases and loss weights ----------------------------------------------------------------
    def set_phase(self, phase: Phase) -> None:
        """Switch between ``"backbone"`` (single epochs), ``"pretrain"`` (masking, augmentation, InfoNCE) and ``"finetune"``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        self.phase = phase

    @property
    def default_loss_weights(self) -> dict[str, float]:  # type: ignore[override]
        """Loss weights of the current phase (keys ``contrastive``, ``raw``, ``spec``, ``concat``)."""
        return dict(self._loss_weights[self.phase])

    @property
    def masking_active(self) -> bool:
        """Whether the next forward pass masks the sequence inputs (pre-training, training mode)."""
        return self.training and self.phase == "pretrain" and self.mask_ratio > 0

    @property
    def augmentation_active(self) -> bool:
        """Whether the next forward pass augments the inputs (pre-training, training mode)."""
        return self.training and self.phase == "pretrain" and self.augment

    # -- parameter groups and freezing ----------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """Named parameter groups: ``raw_backbone``, ``spec_backbone``, ``epoch_attention``,
        ``projection``, ``sequence``, ``heads``, ``mask_tokens``, ``epoch_level`` (the first four
        together, :data:`EPOCH_LEVEL_GROUPS`) and ``all``.

        The fine-tuning phase freezes ``epoch_level`` (§3.2; ``freeze: [epoch_level]``).
        """
        prefixes = {
            "raw_backbone": ("raw_backbone.",),
            "spec_backbone": ("spec_backbone.",),
            "epoch_attention": ("raw_attention.", "spec_attention."),
            "projection": ("raw_projection.", "spec_projection."),
            "sequence": ("raw_sequence.", "spec_sequence."),
            "heads": ("raw_head.", "spec_head.", "concat_head."),
            "mask_tokens": ("mask_token_raw", "mask_token_spec"),
        }
        names = [name for name, _ in self.named_parameters()]
        groups = {g: [n for n in names if n.startswith(p)] for g, p in prefixes.items()}
        groups["epoch_level"] = [n for g in EPOCH_LEVEL_GROUPS for n in groups[g]]
        groups["all"] = names
        return groups

    def freeze(self, groups: Sequence[str]) -> list[str]:
        """Freeze parameter groups and put fully frozen components in eval mode right away."""
        frozen = super().freeze(groups)
        self.train(self.training)
        return frozen

    def train(self, mode: bool = True) -> "MC2SleepNet":
        """Set training mode, keeping frozen components (and frozen BatchNorm layers) in eval.

        A component whose parameters are all frozen (e.g. the epoch level in fine-tuning) runs in
        eval mode, so its BatchNorm running statistics are not updated and its dropout is off:
        frozen means bit-identical parameters *and* buffers, and deterministic frozen features.
        """
        super().train(mode)
        if mode:
            for child in self.children():
                params = list(child.parameters())
                if params and not any(p.requires_grad for p in params):
                    child.eval()
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    params = list(module.parameters())
                    if params and not any(p.requires_grad for p in params):
                        module.eval()
        return self

    # -- spectrogram statistics -----------------------------------------------------------------
    def set_spectrogram_statistics(self, modality: str, mean: Tensor, std: Tensor) -> None:
        """Set the per-bin normalisation of ``modality``'s spectrogram (training-split statistics).

        Parameters
        ----------
        modality : str
            Must be the model's modality.
        mean, std : Tensor
            ``(K,)`` = ``(129,)`` per-bin mean and standard deviation in dB.
        """
        if modality != self.modality:
            raise ValueError(f"MC2SleepNet computes a spectrogram for {self.modality!r} only, "
                             f"got statistics for {modality!r}")
        self.stft.set_statistics(mean, std)

    def fit_training_statistics(self, class_counts: Tensor, epochs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Set the spectrogram normalisation from training epochs of the model's modality.

        Class counts are not used. Returns the ``stft.bin_mean`` and ``stft.bin_std`` buffers
        set; without epochs of the modality nothing is set.
        """
        if self.modality not in epochs:
            return {}
        mean, std = self.spectrogram_statistics({self.modality: epochs[self.modality]})[self.modality]
        self.set_spectrogram_statistics(self.modality, mean, std)
        return {"stft.bin_mean": self.stft.bin_mean.clone(), "stft.bin_std": self.stft.bin_std.clone()}

    @torch.no_grad()
    def spectrogram_statistics(self, signals: Mapping[str, Tensor],
                               present: Tensor | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-bin mean and std of the un-normalised log-spectrogram over the given epochs.

        Same signature as CoRe-Sleep's, so the trainer treats both models alike.

        Parameters
        ----------
        signals : mapping of str to Tensor
            ``(..., 3000)`` epochs of the model's modality (e.g. a sample of the training split).
        present : Tensor, optional
            ``(..., 1)`` availability mask matching ``signals``' leading dims; absent epochs are
            left out of the statistics.

        Returns
        -------
        dict of str to (Tensor, Tensor)
            ``{modality: (mean (K,), std (K,))}``, ready for :meth:`set_spectrogram_statistics`.
        """
        extra = [m for m in signals if m != self.modality]
        if extra:
            raise ValueError(f"signals has modalities {extra} this model does not use; it uses "
                             f"{[self.modality]}")
        if self.modality not in signals:
            raise ValueError(f"no {self.modality!r} epochs to compute spectrogram statistics from")
        x = signals[self.modality]
        if x.shape[-1] != EPOCH_SAMPLES:
            raise ValueError(f"signals[{self.modality!r}] must end in {EPOCH_SAMPLES} samples, got "
                             f"{tuple(x.shape)}")
        epochs = x.reshape(-1, EPOCH_SAMPLES)  # (N, S)
        if present is not None:
            epochs = epochs[present[..., 0].reshape(-1).bool()]
        if epochs.shape[0] == 0:
            raise ValueError(f"no present epoch of {self.modality!r} to compute statistics from")
        return {self.modality: self.stft.statistics_from(epochs.to(self.stft.window.device))}

    # -- forward --------------------------------------------------------------------------------
    def _param_dtype(self) -> torch.dtype:
        return self.mask_token_raw.dtype

    def encode_epochs(self, raw: Tensor, spec: Tensor) -> tuple[Tensor, Tensor]:
        """Epoch level up to the pooled features: ``O^Sg, O^Sp (N, D)`` (Eq. 1–12)."""
        dtype = self._param_dtype()
        o_raw = self.raw_attention(self.raw_backbone(raw.to(dtype)))  # (N, D)
        o_spec = self.spec_attention(self.spec_backbone(spec.to(dtype)))  # (N, D)
        return o_raw, o_spec

    def sample_masks(self, batch: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Independent Bernoulli(``mask_ratio``) masks ``(B, L)`` per view, ≥ 1 visible position.

        When every position of a sequence is drawn masked, the position with the largest draw
        (uniform among them) is made visible: no extra random numbers, so seeded runs stay stable.
        """
        where = self.generator.device if self.generator is not None else device
        draws = torch.rand(2, batch, length, generator=self.generator, device=where).to(device)
        masks = draws < self.mask_ratio  # (2, B, L)
        all_masked = masks.all(dim=-1, keepdim=True)  # (2, B, 1)
        keep = F.one_hot(draws.argmax(dim=-1), length).bool()  # (2, B, L)
        masks = masks & ~(all_masked & keep)
        return masks[0], masks[1]

    def forward_checked(self, signals: dict[str, Tensor], present: Tensor) -> ModelOutput:
        """Run MC²SleepNet on a validated batch.

        Returns
        -------
        ModelOutput
            ``logits (B, L, 5)`` from the concatenation head, and ``aux``:
            ``logits_raw``/``logits_spec`` ``(B, L, 5)``; ``embedding_raw``/``embedding_spec``
            ``(B, L, D)`` (the pooled ``O``); ``projection_raw``/``projection_spec`` ``(B, L, P)``
            (``zz``, on the augmented views when augmenting); ``mask_raw``/``mask_spec`` ``(B, L)``
            bool (all false when not masking).
        """
        if self.modality not in signals:
            raise ValueError(f"the batch has no {self.modality!r} signal; MC2SleepNet scores from "
                             f"{self.modality!r} only (signals given: {sorted(signals)})")
        x = signals[self.modality]
        batch, length, n_samples = x.shape
        raw = x.reshape(batch * length, n_samples).float()  # (N, S)
        spec = self.stft(raw)  # (N, F, K), normalised
        if self.phase == "backbone":
            return self._forward_single_epochs(raw, spec, batch, length)

        if self.augmentation_active:
            raw_aug = augment_raw(raw, self.generator, self.raw_augmentation)
            spec_aug = augment_spectrogram(spec, self.generator, self.spectrogram_noise_std)
            o_raw_aug, o_spec_aug = self.encode_epochs(raw_aug, spec_aug)
            if self.augment_sequence_path:
                o_raw, o_spec = o_raw_aug, o_spec_aug
            else:
                o_raw, o_spec = self.encode_epochs(raw, spec)
        else:
            o_raw, o_spec = self.encode_epochs(raw, spec)
            o_raw_aug, o_spec_aug = o_raw, o_spec
        zz_raw = self.raw_projection(o_raw_aug).view(batch, length, -1)  # (B, L, P)
        zz_spec = self.spec_projection(o_spec_aug).view(batch, length, -1)

        seq_raw = o_raw.view(batch, length, -1)  # (B, L, D)
        seq_spec = o_spec.view(batch, length, -1)
        # Cross-attention keys/values: the other view's *unmasked* input sequence, the same for
        # every layer (docs/models.md §3.2 [C]).
        context_raw, context_spec = self.sequence_pos(seq_raw), self.sequence_pos(seq_spec)
        if self.masking_active:
            mask_raw, mask_spec = self.sample_masks(batch, length, x.device)
            input_raw = self.sequence_pos(torch.where(mask_raw[..., None], self.mask_token_raw, seq_raw))
            input_spec = self.sequence_pos(torch.where(mask_spec[..., None], self.mask_token_spec, seq_spec))
        else:
            mask_raw = mask_spec = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
            input_raw, input_spec = context_raw, context_spec
        t_raw = self.raw_sequence(input_raw, context=context_spec)  # (B, L, D), Eq. 17
        t_spec = self.spec_sequence(input_spec, context=context_raw)  # (B, L, D)

        logits = self.concat_head(torch.cat([t_raw, t_spec], dim=-1))  # (B, L, 5), Eq. 22
        aux = {"logits_raw": self.raw_head(t_raw), "logits_spec": self.spec_head(t_spec),
               "embedding_raw": seq_raw, "embedding_spec": seq_spec,
               "projection_raw": zz_raw, "projection_spec": zz_spec,
               "mask_raw": mask_raw, "mask_spec": mask_spec}
        return ModelOutput(logits=logits, aux=aux)

    def _forward_single_epochs(self, raw: Tensor, spec: Tensor, batch: int, length: int) -> ModelOutput:
        """Stage 0: every epoch classified alone by each view's backbone, attention and head."""
        views = ("raw", "spec") if self.epoch_views == "both" else (self.epoch_views,)
        dtype = self._param_dtype()
        aux: dict[str, Tensor] = {}
        for view in views:
            backbone, pool, head = ((self.raw_backbone, self.raw_attention, self.raw_head) if view == "raw"
                                    else (self.spec_backbone, self.spec_attention, self.spec_head))
            pooled = pool(backbone((raw if view == "raw" else spec).to(dtype)))  # (N, D)
            aux[f"embedding_{view}"] = pooled.view(batch, length, -1)
            aux[f"logits_{view}"] = head(pooled).view(batch, length, -1)  # (B, L, 5)
        logits = sum(aux[f"logits_{v}"] for v in views)
        for view in ("raw", "spec"):  # a view left out predicts nothing: its CE is weighted 0
            aux.setdefault(f"logits_{view}", logits.detach())
        return ModelOutput(logits=logits, aux=aux)

    # -- loss -----------------------------------------------------------------------------------
    def _cross_entropy(self, logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        """Eq. 18: CE over the labelled, valid epochs, summed over L and averaged over B."""
        labels = torch.where(valid, labels.long(), torch.full_like(labels, IGNORE_INDEX, dtype=torch.long))
        flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (N, 5)
        flat_labels = labels.reshape(-1)  # (N,)
        if not bool((flat_labels != IGNORE_INDEX).any()):
            return flat_logits.sum() * 0.0
        if self.ce_reduction == "mean" or self.phase == "backbone":  # single epochs: no sequence to sum over
            return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)
        total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / labels.shape[0]

    def loss(self, output: ModelOutput, batch: SleepBatch,
             weights: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """Loss terms of the current phase and their weighted ``"total"`` (Eq. 16, 19, 23).

        Terms: ``raw``, ``spec``, ``concat`` (cross-entropies of the three heads) and, when its
        weight is non-zero (pre-training), ``contrastive`` (the epoch-level InfoNCE). Epochs whose
        modality is absent count in none of them. Parameters as :meth:`SleepStagingModel.loss`
        (``weights`` are the current phase's).
        """
        if batch.labels is None:
            raise ValueError("MC2SleepNet.loss needs batch.labels, got None")
        resolved = self.resolve_loss_weights(weights)
        valid = self.presence(batch.signals, batch.present)[..., 0].to(output.logits.device)  # (B, L)
        labels = batch.labels.to(output.logits.device)
        terms = {
            "raw": self._cross_entropy(output.aux["logits_raw"], labels, valid),
            "spec": self._cross_entropy(output.aux["logits_spec"], labels, valid),
            "concat": self._cross_entropy(output.logits, labels, valid),
        }
        if resolved["contrastive"] != 0.0:
            terms["contrastive"] = info_nce_per_position(
                output.aux["projection_raw"], output.aux["projection_spec"], self.temperature,
                valid=valid, form=self.infonce_form)
        terms["total"] = sum(resolved[name] * value for name, value in terms.items())
        return terms

    def extra_repr(self) -> str:
        return (f"modality={self.modality!r}, phase={self.phase!r}, mask_ratio={self.mask_ratio}, "
                f"temperature={self.temperature}, infonce_form={self.infonce_form!r}")


@register_model
def mc2sleepnet(**overrides) -> MC2SleepNet:
    """MC²SleepNet as in the paper: one EEG channel, raw + spectrogram views, L = 21 (≈6.2 M)."""
    return MC2SleepNet(**overrides)


@register_model
def mc2sleepnet_tiny(**overrides) -> MC2SleepNet:
    """Same topology at toy width (for tests and smoke runs)."""
    config = dict(raw_widths=(8, 8, 16, 16, 32), se_reduction=4, d_model=16, n_heads=2, d_ff=32,
                  proj_dim=16, head_hidden=16)
    config.update(overrides)
    return MC2SleepNet(**config)


@register_model
def mc2sleepnet_cnn_only(**overrides) -> MC2SleepNet:
    """Table 3 "CNN only (single epoch)": the raw-signal CNN, attention and head classify each epoch.

    The sequence level and the spectrogram backbone are built (one state layout for every phase)
    but never run or trained.
    """
    return MC2SleepNet(**{"phase": "backbone", "epoch_views": "raw", **overrides})


@register_model
def mc2sleepnet_tf_only(**overrides) -> MC2SleepNet:
    """Table 3 "TF only (single epoch)": the spectrogram Transformer, attention and head classify each epoch."""
    return MC2SleepNet(**{"phase": "backbone", "epoch_views": "spec", **overrides})


__all__ = ["EPOCH_LEVEL_GROUPS", "EPOCH_VIEWS", "MC2SleepNet", "PHASES", "mc2sleepnet", "mc2sleepnet_cnn_only",
           "mc2sleepnet_tf_only", "mc2sleepnet_tiny"]
