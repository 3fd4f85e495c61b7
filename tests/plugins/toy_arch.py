"""A fourth architecture that lives outside ``somnray.models``: the subject of the plugin tests.

It is found through ``SOMNRAY_MODEL_MODULES=toy_arch`` (this folder on ``sys.path``) and uses only
the public model interface, so training, evaluation and scoring run it without naming it.

``toy_gru``: each modality's 30-s epoch goes through a small strided CNN; the epoch embeddings of
the modalities present are averaged (a missing modality is dropped) and a GRU runs over the ``L``
epochs of a sequence. It fits two statistics on the training split: each modality's amplitude
scale (the standard deviation of a sample of training epochs) and inverse-frequency class weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from somnray.models import (EPOCH_SAMPLES, N_CLASSES, ModelOutput, SleepBatch, SleepStagingModel,
                            masked_cross_entropy, register_model)


def inverse_frequency_weights(class_counts: Tensor) -> Tensor:
    """``n / (K · n_k)`` per class, 1 for a class without epochs (the toy's class-weight rule)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    weights = counts.sum() / (N_CLASSES * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


class ToyGRU(SleepStagingModel):
    """Per-epoch CNN per modality, mean over the modalities present, GRU over the sequence.

    Parameters
    ----------
    modalities : sequence of str
        Column order of ``present``.
    width : int
        CNN channels (the epoch embedding size).
    hidden : int
        GRU state size.
    """

    default_loss_weights = {"ce": 1.0}
    multimodal_missing_policy = "drop"
    needs_epoch_sample = True

    def __init__(self, modalities: Sequence[str] = ("eeg", "eog"), width: int = 8, hidden: int = 16):
        super().__init__(modalities)
        self.encoders = nn.ModuleDict({
            m: nn.Sequential(nn.Conv1d(1, width, kernel_size=50, stride=25), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten())
            for m in self.modalities})
        self.gru = nn.GRU(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, N_CLASSES)
        self.register_buffer("signal_scale", torch.ones(len(self.modalities)))
        self.register_buffer("class_weights", torch.ones(N_CLASSES))

    def forward_checked(self, signals: dict[str, Tensor], present: Tensor) -> ModelOutput:
        batch, length, _ = present.shape
        dtype = self.head.weight.dtype
        total = torch.zeros(batch, length, self.gru.input_size, device=present.device, dtype=dtype)
        for i, m in enumerate(self.modalities):
            if m not in signals:
                continue
            x = signals[m].reshape(batch * length, 1, EPOCH_SAMPLES).to(dtype) / self.signal_scale[i].to(dtype)
            emb = self.encoders[m](x).view(batch, length, -1)  # (B, L, width)
            total = total + emb * present[..., i, None].to(dtype)
        count = present.sum(-1, keepdim=True).clamp_min(1).to(dtype)  # (B, L, 1)
        states, _ = self.gru(total / count)
        return ModelOutput(self.head(states))

    def loss(self, output: ModelOutput, batch: SleepBatch,
             weights: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        w = self.resolve_loss_weights(weights)
        valid = self.presence(batch.signals, batch.present).any(-1).to(output.logits.device)
        ce = masked_cross_entropy(output.logits, batch.labels.to(output.logits.device), valid,
                                  weight=self.class_weights.float())
        return {"ce": ce, "total": w["ce"] * ce}

    def fit_training_statistics(self, class_counts: Tensor, epochs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each sampled modality's amplitude scale and the inverse-frequency class weights."""
        with torch.no_grad():
            for i, m in enumerate(self.modalities):
                if m in epochs:
                    self.signal_scale[i] = epochs[m].float().std().clamp_min(1e-6)
            self.class_weights.copy_(inverse_frequency_weights(class_counts))
        return {"signal_scale": self.signal_scale.clone(), "class_weights": self.class_weights.clone()}

    def parameter_groups(self) -> dict[str, list[str]]:
        """``encoders`` (the per-epoch CNNs), ``sequence`` (GRU and head) and ``all``."""
        names = [n for n, _ in self.named_parameters()]
        return {"encoders": [n for n in names if n.startswith("encoders.")],
                "sequence": [n for n in names if n.startswith(("gru.", "head."))],
                "all": names}


@register_model
def toy_gru(**overrides) -> ToyGRU:
    """The toy plugin architecture (a few thousand parameters)."""
    return ToyGRU(**overrides)
