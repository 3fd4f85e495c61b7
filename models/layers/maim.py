"""MAIM: the modal-awareness imagination module of CIMSleepNet (a multimodal VAE).

Shen et al., "Robust Sleep Staging over Incomplete Multimodal Physiological Signals via Contrastive
Imagination", NeurIPS 2024 (CIMSleepNet), Fig. 2 "missing modality imputation"; docs/models.md
§1.2(a) (layer table read from the official code) and §1.3.2 (imagination loss).

One separable-conv encoder per modality maps an epoch ``(1, 3000)`` to a ``(W, 5)`` map; the maps of
the modalities *observed* at that epoch are averaged (modality-aware fusion); a Gaussian latent is
drawn from the fused map; one transposed-conv decoder per modality imagines every modality's epoch
from the shared latent. Missing epochs are then completed with the imagined signal.

Shape legend: ``N`` flattened epochs (``B * L``), ``M`` modalities, ``S = 3000`` samples an epoch,
``W`` encoder width (128 in the paper), ``Z`` latent size (128).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

#: Samples in one 30-s epoch at 100 Hz; the conv arithmetic below is built for it.
_SAMPLES = 3000

ImaginationTarget = Literal["random_observed", "oracle", "zeros"]
IMAGINATION_TARGETS: tuple[str, ...] = ("random_observed", "oracle", "zeros")


def _conv_len(length: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a ``Conv1d`` / ``MaxPool1d`` (dilation 1)."""
    return (length + 2 * padding - kernel) // stride + 1


def _conv_transpose_len(length: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a ``ConvTranspose1d`` (dilation 1, no output padding)."""
    return (length - 1) * stride - 2 * padding + kernel


class SeparableConv1d(nn.Sequential):
    """Depthwise conv (channel multiplier ``out/in``) + 1x1 conv, then BatchNorm + GELU.

    The "sep" block of §1.2(a); padding ``kernel // 2`` keeps the length for odd kernels and adds
    one sample for even ones (k8: 100 -> 101), as in the released code.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel, padding=kernel // 2, groups=in_channels),
            nn.Conv1d(out_channels, out_channels, 1),
            nn.BatchNorm1d(out_channels),
            nn.GELU(),
        )


class SeparableConvTranspose1d(nn.Sequential):
    """Grouped transposed conv (groups = ``out``) + 1x1 transposed conv, then BatchNorm + GELU.

    The "sepT" block of §1.2(a).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int):
        super().__init__(
            nn.ConvTranspose1d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                               groups=out_channels),
            nn.ConvTranspose1d(out_channels, out_channels, 1),
            nn.BatchNorm1d(out_channels),
            nn.GELU(),
        )


class MAIMEncoder(nn.Sequential):
    """Per-modality encoder E1..E4 of §1.2(a): ``(N, 1, 3000) -> (N, W, 5)``.

    Parameters
    ----------
    widths : sequence of 3 int
        Channels after E1, E2 and E3/E4 (paper: 32, 64, 128).
    dropout : float
        Dropout after the first two pools (paper: 0.5).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), dropout: float = 0.5):
        w1, w2, w3 = widths
        super().__init__(
            nn.Sequential(nn.Conv1d(1, w1, 50, stride=6, padding=24), nn.BatchNorm1d(w1), nn.GELU()),
            SeparableConv1d(w1, w2, 25),
            nn.MaxPool1d(25, stride=5, padding=12),
            nn.Dropout(dropout),
            SeparableConv1d(w2, w3, 8),
            nn.MaxPool1d(8, stride=5, padding=3),
            nn.Dropout(dropout),
            SeparableConv1d(w3, w3, 3),
            nn.MaxPool1d(3, stride=4, padding=1),
        )

    @staticmethod
    def output_length(samples: int = _SAMPLES) -> int:
        """Time steps of the encoder output for an epoch of ``samples`` (5 for 3000)."""
        n = _conv_len(samples, 50, 6, 24)          # E1: 500
        n = _conv_len(n, 25, 5, 12)                # pool: 100
        n = _conv_len(n + 1, 8, 5, 3)              # E3 (k8, pad 4) adds one: 101 -> pool: 20
        return _conv_len(n, 3, 4, 1)               # pool: 5


class MAIMDecoder(nn.Sequential):
    """Per-modality decoder D1..D4 of §1.2(a): ``(N, W, 5) -> (N, 1, 3000)``.

    Parameters
    ----------
    widths : sequence of 3 int
        The encoder widths, mirrored (paper: 128 -> 128 -> 64 -> 32 -> 1).
    output : {"linear", "sigmoid"}
        ``"sigmoid"`` ends in the released code's sigmoid (output in [0, 1]); ``"linear"`` drops it
        so the decoder reconstructs the z-scored signal directly (see :class:`ModalityAwareImagination`).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), output: str = "linear"):
        w1, w2, w3 = widths
        layers: list[nn.Module] = [
            SeparableConvTranspose1d(w3, w3, 3, stride=4, padding=0),    # (N, W, 19)
            SeparableConvTranspose1d(w3, w2, 8, stride=5, padding=0),    # (N, w2, 98)
            SeparableConvTranspose1d(w2, w1, 25, stride=5, padding=5),   # (N, w1, 500)
            nn.ConvTranspose1d(w1, 1, 50, stride=6, padding=22),         # (N, 1, 3000)
        ]
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        super().__init__(*layers)

    @staticmethod
    def output_length(steps: int) -> int:
        """Samples produced from ``steps`` latent time steps (3000 from 5)."""
        n = _conv_transpose_len(steps, 3, 4, 0)
        n = _conv_transpose_len(n, 8, 5, 0)
        n = _conv_transpose_len(n, 25, 5, 5)
        return _conv_transpose_len(n, 50, 6, 22)


@dataclass
class ImaginationOutput:
    """What :class:`ModalityAwareImagination` returns.

    Attributes
    ----------
    recon : dict of str to Tensor
        ``(N, S)`` decoder output per modality (every epoch, observed or not).
    mu, logvar : Tensor
        ``(N, Z)`` posterior mean and log-variance.
    """

    recon: dict[str, Tensor]
    mu: Tensor
    logvar: Tensor


class ModalityAwareImagination(nn.Module):
    """MAIM (§1.2(a)): per-modality encoders, fusion over observed modalities, VAE latent, decoders.

    Fusion (§1.2(a)): ``h = sum_m p_m h_m / sum_m p_m`` over the modalities present at that epoch,
    generalised from the released EEG+EOG pair to ``M`` modalities. An epoch with no modality present
    gets ``h = 0`` (the released code divides by zero there), so its latent is imagined from the
    biases alone and stays finite.

    Encoder input (docs/models.md §1.6.3, [D] "zero it"): each encoder runs only on the epochs where its
    modality is observed and the result is scattered into zeros. In eval mode this equals feeding
    ``m * x`` (the masked slots are multiplied out by the fusion anyway); in training it also keeps
    the zero placeholders out of the BatchNorm statistics. A modality absent from ``signals`` has its
    encoder skipped, so its tensor is never read.

    Latent (§1.2(a), §1.6.6): ``z = mu + sigma * eps`` in training, ``z = mu`` in eval mode (the
    released code samples at inference too).

    Parameters
    ----------
    modalities : sequence of str
        Modality names; one encoder and one decoder each (weights not shared).
    widths : sequence of 3 int
        Encoder widths (paper: 32, 64, 128).
    latent_dim : int
        Size ``Z`` of the latent (paper: 128).
    hidden_dim : int
        Width of the layer before ``mu``/``logvar`` (paper: 128).
    dropout : float
        Encoder dropout (paper: 0.5).
    decoder_output : {"linear", "sigmoid"}
        Decoder head, see :class:`MAIMDecoder`.
    """

    def __init__(self, modalities: Sequence[str], widths: Sequence[int] = (32, 64, 128),
                 latent_dim: int = 128, hidden_dim: int = 128, dropout: float = 0.5,
                 decoder_output: str = "linear"):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"MAIM widths must list 3 channel counts (E1, E2, E3), got {list(widths)}")
        w1, w2, w3 = widths
        if w3 % w2 or w2 % w1:
            raise ValueError(f"MAIM widths must each divide the next (grouped transposed convs), "
                             f"got {list(widths)}")
        self.modalities = tuple(modalities)
        self.steps = MAIMEncoder.output_length()
        if MAIMDecoder.output_length(self.steps) != _SAMPLES:  # guards edits to the layer tables
            raise RuntimeError("MAIM decoder does not map back to 3000 samples")
        self.width = w3
        self.encoders = nn.ModuleDict({m: MAIMEncoder(widths, dropout) for m in self.modalities})
        flat = w3 * self.steps
        self.to_hidden = nn.Sequential(nn.Linear(flat, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU())
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.BatchNorm1d(flat), nn.GELU())
        self.decoders = nn.ModuleDict({m: MAIMDecoder(widths, decoder_output) for m in self.modalities})

    def forward(self, signals: Mapping[str, Tensor], present: Tensor) -> ImaginationOutput:
        """Encode the observed epochs, fuse, sample the latent and imagine every modality.

        Parameters
        ----------
        signals : mapping of str to Tensor
            ``(N, S)`` per modality; modalities missing from the mapping are never read.
        present : Tensor
            ``(N, M)`` bool, columns ordered as ``modalities``.

        Returns
        -------
        ImaginationOutput
        """
        n = present.shape[0]
        fused = torch.zeros(n, self.width, self.steps, device=present.device,
                            dtype=self.to_mu.weight.dtype)
        for i, name in enumerate(self.modalities):
            if name not in signals:
                continue
            observed = present[:, i]
            if not bool(observed.any()):
                continue
            x = signals[name][observed].unsqueeze(1)                # (N_obs, 1, S)
            h = self.encoders[name](x)                              # (N_obs, W, 5)
            fused = fused.index_put((observed.nonzero(as_tuple=True)[0],), h.to(fused.dtype),
                                    accumulate=True)
        count = present.sum(dim=1).clamp(min=1).to(fused.dtype)     # (N,) modalities observed
        fused = fused / count[:, None, None]
        hidden = self.to_hidden(fused.flatten(1))                   # (N, W*5) -> (N, hidden)
        mu, logvar = self.to_mu(hidden), self.to_logvar(hidden)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        h = self.from_latent(z).view(n, self.width, self.steps)     # (N, W*5) -> (N, W, 5)
        recon = {name: dec(h).squeeze(1) for name, dec in self.decoders.items()}  # (N, S) each
        return ImaginationOutput(recon=recon, mu=mu, logvar=logvar)


def imagination_target(signal: Tensor | None, present: Tensor,
                       mode: ImaginationTarget = "random_observed") -> tuple[Tensor | None, Tensor]:
    """The imagination (reconstruction) target of one modality, docs/models.md §1.1.1 and §1.6.2.

    Observed epochs are their own target. A missing epoch's target depends on ``mode``:

    * ``"random_observed"`` ([D], released code rev. (b)): a randomly drawn *observed* epoch of the
      same modality from the same sequence; if the sequence has none, from anywhere in the batch; if
      the batch has none, the epoch has no target.
    * ``"oracle"``: the signal actually stored at that epoch (meaningful when missingness is
      simulated and the true signal is still in the batch).
    * ``"zeros"`` (rev. (a)): a zero epoch.

    Draws use the global torch generator, so they are reproducible under ``torch.manual_seed``.

    Parameters
    ----------
    signal : Tensor or None
        ``(B, L, S)``; None when the modality is absent from the batch (then nothing has a target).
    present : Tensor
        ``(B, L)`` bool availability of this modality.
    mode : {"random_observed", "oracle", "zeros"}

    Returns
    -------
    target : Tensor or None
        ``(B, L, S)`` target (None when ``signal`` is None).
    valid : Tensor
        ``(B, L)`` bool, epochs that have a target.
    """
    if mode not in IMAGINATION_TARGETS:
        raise ValueError(f"imagination_target must be one of {list(IMAGINATION_TARGETS)}, got {mode!r}")
    present = present.bool()
    if signal is None:
        return None, torch.zeros_like(present)
    if mode == "oracle":
        return signal, torch.ones_like(present)
    if mode == "zeros":
        target = torch.where(present[..., None], signal, torch.zeros_like(signal))
        return target, torch.ones_like(present)

    batch, length = present.shape
    # Observed positions first (stable), so the first count_b entries of row b are its observed epochs.
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)           # (B, L)
    count = present.sum(dim=1, keepdim=True)                                        # (B, 1)
    draw = torch.rand(batch, length, device=present.device)
    row_pick = (draw * count).long().clamp(max=length - 1)                         # (B, L) rank
    row_source = torch.gather(order, 1, row_pick)                                  # (B, L) epoch index
    flat_present = present.reshape(-1)
    total = int(flat_present.sum())
    flat_signal = signal.reshape(batch * length, -1)                                # (B*L, S)
    source = torch.arange(batch, device=present.device)[:, None] * length + row_source  # flat index
    if total > 0:
        pool = flat_present.nonzero(as_tuple=True)[0]                               # observed anywhere
        batch_pick = pool[(torch.rand(batch, length, device=present.device) * total).long()
                          .clamp(max=total - 1)]
        source = torch.where(count > 0, source, batch_pick)
    flat_index = torch.arange(batch * length, device=present.device).view(batch, length)
    source = torch.where(present, flat_index, source)                               # observed: itself
    target = flat_signal[source.reshape(-1)].view_as(signal)                        # (B, L, S)
    valid = torch.full_like(present, total > 0)
    return target, valid


def gaussian_kl(mu: Tensor, logvar: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """KL divergence of ``N(mu, sigma^2)`` from ``N(0, I)``, docs/models.md §1.3.2.

    ``"sum"`` sums over epochs and latent dimensions, as the released code does (so the term grows
    with the batch); ``"mean"`` sums over latent dimensions and averages over epochs (§1.6.5).

    Parameters
    ----------
    mu, logvar : Tensor
        ``(..., Z)``.
    reduction : {"sum", "mean"}
    """
    per_dim = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    if reduction == "sum":
        return per_dim.sum()
    if reduction == "mean":
        return per_dim.sum(dim=-1).mean()
    raise ValueError(f"kl_reduction must be 'sum' or 'mean', got {reduction!r}")
