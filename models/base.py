"""The one interface every somnray sleep-staging model implements.

All architectures take the same batch and return the same output, so the trainer, the evaluator
and the scoring service never branch on the model:

* ``signals``: ``dict[modality -> Tensor (B, L, 3000)]``: 30-s epochs at 100 Hz. A modality the
  batch has no signal for may be left out of the dict entirely; the model must then never read it.
* ``present``: ``Tensor (B, L, M)`` bool, columns ordered as ``model.modalities``: whether each
  modality is usable at each epoch (false for a missing, flat or detached channel).
* ``labels``: ``Tensor (B, L)`` int64, 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 ignored.

A model returns a :class:`ModelOutput` (per-epoch logits ``(B, L, 5)`` plus named auxiliary
tensors) and owns its loss: ``model.loss(output, batch, weights)`` returns a dict of named terms
whose ``"total"`` entry is what the trainer back-propagates.

Everything else the platform needs to know about an architecture is declared here too, so that
training, evaluation and scoring never name a concrete class (``docs/extending.md``):

* :attr:`SleepStagingModel.missing_policy`: what the model does when a night lacks a modality;
* :attr:`SleepStagingModel.needs_epoch_sample` and :meth:`SleepStagingModel.fit_training_statistics`:
  what it fits on the training split (normalisation statistics, class weights);
* :meth:`SleepStagingModel.parameter_groups`: the names a recipe's ``freeze`` may use;
* :attr:`SleepStagingModel.phases`: the values of its ``phase=`` constructor keyword, if it has one.

Notation used in the model files: ``B`` sequences in a batch, ``L`` epochs a sequence,
``N = B * L`` flattened epochs, ``M`` modalities, ``T`` tokens an epoch, ``D`` model width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Mapping, Sequence, get_args

import torch
from torch import Tensor, nn

# The data contract's facts (100-Hz, 30-s epochs; five classes; -1 ignored; the modality names) are
# the platform's own, shared with data preparation and scoring.
from somnray.core.constants import EPOCH_SAMPLES, IGNORE_INDEX, KNOWN_MODALITIES, N_CLASSES, SAMPLING_RATE_HZ


#: What a model does with a modality a night (or an epoch) lacks: ``"drop"`` scores from the
#: modalities present, ``"impute"`` imagines the missing one, ``"require"`` needs them all.
MissingPolicy = Literal["drop", "impute", "require"]
MISSING_POLICIES: tuple[str, ...] = get_args(MissingPolicy)


@dataclass
class SleepBatch:
    """A batch in the shared contract (see the module docstring).

    Parameters
    ----------
    signals : dict of str to Tensor
        ``(B, L, 3000)`` float tensor per modality; absent modalities may be omitted.
    present : Tensor
        ``(B, L, M)`` bool availability mask, columns ordered as ``modalities``.
    labels : Tensor or None
        ``(B, L)`` int64 stage labels with -1 ignored; None at inference.
    modalities : tuple of str
        Column order of ``present``.
    """

    signals: dict[str, Tensor]
    present: Tensor
    labels: Tensor | None = None
    modalities: tuple[str, ...] = ()

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SleepBatch":
        """Return a copy on ``device`` (signals optionally cast to ``dtype``)."""
        signals = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in self.signals.items()}
        labels = None if self.labels is None else self.labels.to(device)
        return SleepBatch(signals, self.present.to(device), labels, self.modalities)


@dataclass
class ModelOutput:
    """What every model's ``forward`` returns.

    Parameters
    ----------
    logits : Tensor
        ``(B, L, 5)`` per-epoch class scores used for prediction.
    aux : dict of str to Tensor
        Named auxiliary outputs (unimodal logits ``logits_<modality>``, embeddings,
        reconstructions, ...). Which keys exist is documented by each model.
    """

    logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)


def masked_cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor | None = None,
                         weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the epochs that carry a label (and are ``valid``).

    Parameters
    ----------
    logits : Tensor
        ``(..., C)`` class scores.
    labels : Tensor
        ``(...)`` int labels, :data:`IGNORE_INDEX` ignored.
    valid : Tensor, optional
        ``(...)`` bool; epochs where it is false are ignored too (e.g. a missing modality).
    weight : Tensor, optional
        ``(C,)`` class weights.

    Returns
    -------
    Tensor
        Scalar loss; exactly zero (with a graph to ``logits``) when no epoch counts, so a batch
        in which a modality is entirely absent still back-propagates cleanly.
    """
    labels = labels.long()
    if valid is not None:
        labels = torch.where(valid.bool(), labels, torch.full_like(labels, IGNORE_INDEX))
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return flat_logits.sum() * 0.0
    return nn.functional.cross_entropy(flat_logits.float(), flat_labels, weight=weight,
                                       ignore_index=IGNORE_INDEX)


class SleepStagingModel(nn.Module):
    """Base class: the batch contract, checked in one place, and the loss interface.

    Subclasses implement :meth:`forward_checked` and :meth:`loss`, and set
    :attr:`default_loss_weights`. What the platform asks of an architecture besides the forward
    pass has a default here that a subclass overrides when it differs:
    :attr:`multimodal_missing_policy`, :attr:`needs_epoch_sample` with
    :meth:`fit_training_statistics`, :meth:`parameter_groups` and :attr:`phases`.

    Parameters
    ----------
    modalities : sequence of str
        Modalities the model consumes, in the column order of the ``present`` mask.
    """

    #: Loss-term weights used when ``loss`` is called without ``weights``.
    default_loss_weights: ClassVar[dict[str, float]] = {}
    #: What the architecture does with a missing modality when it has several (see
    #: :data:`MissingPolicy`); read it through :attr:`missing_policy`.
    multimodal_missing_policy: ClassVar[MissingPolicy] = "require"
    #: Whether :meth:`fit_training_statistics` needs a sample of training epochs per modality.
    #: False: it uses the class counts only, and the trainer reads no signal for it.
    needs_epoch_sample: ClassVar[bool] = False
    #: Values the constructor's ``phase=`` keyword takes (a recipe sets one per training phase
    #: with ``model.overrides.phase``); empty: the model has no phases and no such keyword.
    phases: ClassVar[tuple[str, ...]] = ()
    #: The publication the architecture implements (model cards cite it); empty: none.
    paper: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A typo in a declaration fails when the architecture module is imported, not mid-scoring.
        if cls.multimodal_missing_policy not in MISSING_POLICIES:
            raise TypeError(f"{cls.__name__}.multimodal_missing_policy must be one of "
                            f"{list(MISSING_POLICIES)}, got {cls.multimodal_missing_policy!r}")

    def __init__(self, modalities: Sequence[str]):
        super().__init__()
        modalities = tuple(modalities)
        if not modalities:
            raise ValueError("modalities must name at least one modality, got an empty list")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct, got {list(modalities)}")
        unknown = [m for m in modalities if m not in KNOWN_MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known modalities are {list(KNOWN_MODALITIES)}")
        self.modalities = modalities

    # -- what the platform asks of an architecture ----------------------------------------------
    @property
    def missing_policy(self) -> MissingPolicy:
        """What this model does with a modality a night lacks.

        :attr:`multimodal_missing_policy`, except that a one-modality model is ``"require"``
        whatever its class declares: with its only input missing there is nothing to score from.
        """
        return "require" if len(self.modalities) == 1 else self.multimodal_missing_policy

    def fit_training_statistics(self, class_counts: Tensor, epochs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fit what the model takes from the training split, install it, and return what was set.

        The trainer calls it once, on the driver, with statistics of the training recordings
        only; each training worker then installs the returned tensors in its own copy with
        :meth:`load_training_statistics`. They must be buffers, so that checkpoints and bundles
        carry them. The default fits nothing.

        Parameters
        ----------
        class_counts : Tensor
            ``(5,)`` int64 labelled training epochs per stage (W, N1, N2, N3, REM).
        epochs : mapping of str to Tensor
            ``(n_m, 3000)`` float32 present training epochs per modality, a uniform sample of a
            few thousand; empty unless :attr:`needs_epoch_sample`, and a modality without any
            present training epoch is left out.

        Returns
        -------
        dict of str to Tensor
            The buffers set, by ``state_dict`` name, with their new values (for the workers and
            the run log); empty when nothing was fitted.
        """
        return {}

    def load_training_statistics(self, fitted: Mapping[str, Tensor]) -> list[str]:
        """Install what :meth:`fit_training_statistics` returned on another copy of this model.

        Returns
        -------
        list of str
            The buffer names set, sorted.

        Raises
        ------
        ValueError
            A name that is not a buffer of this model, or a value of another shape.
        """
        buffers = dict(self.named_buffers())
        unknown = sorted(set(fitted) - set(buffers))
        if unknown:
            raise ValueError(f"training statistics {unknown} are not buffers of {type(self).__name__}")
        with torch.no_grad():
            for name, value in fitted.items():
                target = buffers[name]
                value = torch.as_tensor(value, dtype=target.dtype, device=target.device)
                if value.shape != target.shape:
                    # copy_ would broadcast a wrong shape silently.
                    raise ValueError(f"training statistic {name!r} has shape {tuple(value.shape)}, "
                                     f"the buffer {tuple(target.shape)}")
                target.copy_(value)
        return sorted(fitted)

    # -- the contract -------------------------------------------------------------------------
    def check_inputs(self, signals: Mapping[str, Tensor], present: Tensor) -> tuple[int, int]:
        """Validate a batch against the contract and return ``(B, L)``.

        Raises
        ------
        ValueError
            With the offending modality, the expected and the received shape.
        """
        if present.dim() != 3 or present.shape[-1] != len(self.modalities):
            raise ValueError(f"present must have shape (B, L, {len(self.modalities)}) for modalities "
                             f"{list(self.modalities)}, got {tuple(present.shape)}")
        batch, length = present.shape[:2]
        extra = [m for m in signals if m not in self.modalities]
        if extra:
            raise ValueError(f"signals has modalities {extra} this model does not use; it uses "
                             f"{list(self.modalities)}")
        for name, x in signals.items():
            if tuple(x.shape) != (batch, length, EPOCH_SAMPLES):
                raise ValueError(f"signals[{name!r}] must have shape ({batch}, {length}, {EPOCH_SAMPLES}) "
                                 f"(30-s epochs at {SAMPLING_RATE_HZ} Hz), got {tuple(x.shape)}")
        return batch, length

    def presence(self, signals: Mapping[str, Tensor], present: Tensor) -> Tensor:
        """The effective ``(B, L, M)`` mask: a modality with no signal is absent everywhere."""
        present = present.bool()
        keep = torch.tensor([m in signals for m in self.modalities], device=present.device)
        return present & keep

    def forward(self, signals: Mapping[str, Tensor], present: Tensor) -> ModelOutput:
        """Check the batch, then run the architecture.

        Parameters
        ----------
        signals : mapping of str to Tensor
            ``(B, L, 3000)`` per modality.
        present : Tensor
            ``(B, L, M)`` availability mask.

        Returns
        -------
        ModelOutput
        """
        self.check_inputs(signals, present)
        return self.forward_checked(dict(signals), self.presence(signals, present))

    def forward_checked(self, signals: dict[str, Tensor], present: Tensor) -> ModelOutput:
        """Architecture-specific forward on a validated batch (``present`` already effective)."""
        raise NotImplementedError

    def loss(self, output: ModelOutput, batch: SleepBatch,
             weights: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """Named loss terms and their weighted ``"total"``.

        Parameters
        ----------
        output : ModelOutput
            What :meth:`forward` returned for ``batch``.
        batch : SleepBatch
            The batch, with labels.
        weights : mapping of str to float, optional
            Overrides of :attr:`default_loss_weights`; unknown keys raise ``ValueError``.
        """
        raise NotImplementedError

    def resolve_loss_weights(self, weights: Mapping[str, float] | None) -> dict[str, float]:
        """Merge ``weights`` into the defaults, refusing names the model does not know."""
        merged = dict(self.default_loss_weights)
        for key, value in (weights or {}).items():
            if key not in merged:
                raise ValueError(f"unknown loss weight {key!r} for {type(self).__name__}; "
                                 f"known weights are {sorted(merged)}")
            merged[key] = float(value)
        return merged

    def training_warnings(self, micro_batch: int, sequence_length: int) -> list[str]:
        """What differs from the model's paper when trained on micro-batches of ``micro_batch`` × ``sequence_length``.

        The trainer logs each message as a warning before a phase starts; the default has none.
        """
        return []

    def parameter_groups(self) -> dict[str, list[str]]:
        """Named groups of parameter names: what a recipe's ``freeze`` may name.

        The config validator checks ``freeze`` against these names before training starts. The
        default puts every parameter in ``"all"``; each architecture documents its groups.
        """
        return {"all": [name for name, _ in self.named_parameters()]}

    def freeze(self, groups: Sequence[str]) -> list[str]:
        """Stop gradients for the named parameter groups; return the frozen parameter names."""
        available = self.parameter_groups()
        unknown = [g for g in groups if g not in available]
        if unknown:
            raise ValueError(f"unknown parameter groups {unknown}; {type(self).__name__} has "
                             f"{sorted(available)}")
        names = {n for g in groups for n in available[g]}
        for name, param in self.named_parameters():
            if name in names:
                param.requires_grad_(False)
        return sorted(names)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (optionally only those that require a gradient)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
