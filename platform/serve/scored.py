"""The result of scoring one night: what every output writer and picture is made from.

Both scoring paths (the Serve app for one upload, Ray Data batch inference for a cohort) end by
building a :class:`ScoredNight`; from there on everything is pure Python and numpy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from somnray.core.constants import EPOCH_SECONDS, STAGES
from somnray.core.errors import RecordingError
from somnray.core.version import somnray_version
from somnray.scoring.calibration import UNCALIBRATED_THRESHOLD, Calibration, epoch_uncertainty
from somnray.scoring.domain import DomainCheck

from .stats import UNSCORED, SleepStats, compute_sleep_stats, timeline

#: Number of stage classes (W, N1, N2, N3, REM).
N_CLASSES = len(STAGES)
#: Below this maximum probability an epoch is flagged ``low_confidence`` when the model has no
#: calibrated threshold (a fitted bundle records its own: ``somnray.scoring.calibration``).
LOW_CONFIDENCE = UNCALIBRATED_THRESHOLD
#: Per-epoch uncertainty of the (calibrated) probabilities (``epoch_uncertainty``).
UNCERTAINTY_COLUMNS = ("confidence", "margin", "entropy")
#: The per-epoch quality flags every night carries (more may be added by the scorer).
STANDARD_FLAGS = ("unscored", "missing_modality", "low_confidence")
#: ``modalities_used`` of an epoch that could not be scored.
NOT_SCORED = "none"

# An id becomes a folder and file-name prefix: keep it to one safe, visible path component.
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-+=@]*$")


@dataclass(frozen=True)
class ModelInfo:
    """Which model produced a scoring.

    Parameters
    ----------
    name : str
        Registry name of the architecture (``coresleep``, ``mc2sleepnet``, ...).
    checkpoint_uri : str
        Where the weights came from (``models:/NAME/VERSION`` for a registered model).  Must not
        embed credentials (it is written to every output).
    somnray_version : str
        Version of the code that scored; defaults to the installed version.
    weights_sha256 : str, optional
        Hex SHA-256 of the bundle's ``model.pt``: which weights scored, wherever they were loaded
        from (a resumed cohort run compares it to decide whether a night needs scoring again).
    registered_model : dict, optional
        ``name``, ``version`` and ``uri`` of the registered model version, when there is one.
    """

    name: str
    checkpoint_uri: str
    somnray_version: str = field(default_factory=somnray_version)
    weights_sha256: str | None = None
    registered_model: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "checkpoint_uri": self.checkpoint_uri,
                "somnray_version": self.somnray_version, "weights_sha256": self.weights_sha256,
                "registered_model": dict(self.registered_model) if self.registered_model else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelInfo":
        """Inverse of :meth:`to_dict`."""
        registered = data.get("registered_model")
        return cls(name=str(data["name"]), checkpoint_uri=str(data["checkpoint_uri"]),
                   somnray_version=str(data.get("somnray_version", "unknown")),
                   weights_sha256=data.get("weights_sha256"),
                   registered_model=dict(registered) if registered else None)


def uncalibrated() -> dict[str, Any]:
    """The ``calibration`` record of a night whose probabilities had no temperature applied."""
    return Calibration().output_metadata()


def check_recording_id(recording_id: str) -> str:
    """Validate a manifest id for use as a folder and file-name prefix; returns it.

    Raises
    ------
    RecordingError
        Empty ids, path separators, ``.``/``..``, a leading dot (hidden files are skipped by
        listings) or characters outside ``A-Z a-z 0-9 . _ - + = @``.
    """
    if not isinstance(recording_id, str) or not _ID_RE.fullmatch(recording_id) or recording_id in (".", ".."):
        raise RecordingError(
            "scored night", f"recording_id {recording_id!r} cannot name output files: use letters, "
            f"digits and . _ - + = @ only, not starting with '.' or '-' (no path separators)",
            recording_id=recording_id if isinstance(recording_id, str) else None)
    return recording_id


def modalities_used_from_available(modalities: Sequence[str], available: np.ndarray) -> np.ndarray:
    """Per-epoch ``"eeg+eog"``-style labels naming the modalities present in each epoch.

    This is the right label for models that simply drop missing inputs; a scorer that imputes a
    missing modality should pass its own labels (e.g. ``"eeg+eog(imputed)"``) to
    :class:`ScoredNight`.  Epochs with no modality at all get ``"none"``.
    """
    avail = np.asarray(available, dtype=bool)
    labels = ["+".join(m for m, ok in zip(modalities, row) if ok) or NOT_SCORED for row in avail]
    return np.asarray(labels, dtype=object)


@dataclass
class ScoredNight:
    """Per-epoch scoring of one recording.

    Parameters
    ----------
    recording_id : str
        Manifest id; the only name any output uses (never EDF header fields).
    epoch_index : ndarray
        ``(n,)`` int: position of each scored epoch in the recording (strictly increasing, from
        :attr:`somnray.data.prepared.PreparedRecording.epoch_index`).
    probabilities : ndarray
        ``(n, 5)`` float32 class probabilities (W, N1, N2, N3, REM); rows of unscored epochs may
        be NaN.
    stages : ndarray, optional
        ``(n,)`` int8 stage codes; default: the argmax of each row, -1 where the row is not finite
        or no modality was available.
    modalities : tuple of str
        Canonical modality names, the column order of ``available``.
    available : ndarray
        ``(n, M)`` bool: modality ``m`` was usable in epoch ``i``.
    model : ModelInfo
        Model name, checkpoint URI and somnray version.
    modalities_used : ndarray, optional
        ``(n,)`` str: which inputs/branch produced each stage (``"eeg+eog"``, ``"eeg"``,
        ``"eeg+eog(imputed)"``, ``"none"``); default :func:`modalities_used_from_available`.
    quality : dict of str to ndarray, optional
        Extra ``(n,)`` bool flags from the scorer; the standard flags (``unscored``,
        ``missing_modality``, ``low_confidence``) are always added.
    epoch_s : float
        Epoch length in seconds (30 by the data contract).
    start_offset_s : float
        Seconds from the recording start to the onset of epoch index 0.
    low_confidence_threshold : float
        Maximum probability below which an epoch is flagged ``low_confidence`` (the bundle's
        calibrated threshold, or :data:`LOW_CONFIDENCE`).
    calibration : dict
        How the probabilities were calibrated: ``fitted``, ``temperature`` (1 when not fitted),
        ``threshold_source`` (``calibration`` or ``default``) and ``reason`` (why not fitted), as
        :meth:`somnray.scoring.calibration.Calibration.output_metadata` gives it.
    channels : dict of str to str
        Modality → the EDF signal it was read from (``C4-A1``, ``E1 - E2`` for a derivation),
        as :func:`somnray.data.recording.channels_used` names it.
    lineage : dict, optional
        Where this night's scoring came from besides the model (:class:`ModelInfo`): the input
        file's ``input_sha256``, the window ``stride``, the ``profile_sha256`` of the cohort profile
        it was prepared with and the model's ``training_dataset`` (``docs/outputs.md``).
    domain_shift : DomainCheck, optional
        How the night compares with the model's training data
        (:func:`somnray.serve.inference.domain_check`): its ``flag``, ``reasons`` and every check.
        None: not checked (a night built by hand); the outputs then leave it out.

    Raises
    ------
    RecordingError
        Inconsistent shapes, probabilities outside [0, 1], unknown stage codes, epoch indices
        that are not strictly increasing, or an id unusable as a file name.
    """

    recording_id: str
    epoch_index: np.ndarray
    probabilities: np.ndarray
    modalities: tuple[str, ...]
    available: np.ndarray
    model: ModelInfo
    stages: np.ndarray | None = None
    modalities_used: np.ndarray | None = None
    quality: dict[str, np.ndarray] = field(default_factory=dict)
    epoch_s: float = EPOCH_SECONDS
    start_offset_s: float = 0.0
    low_confidence_threshold: float = LOW_CONFIDENCE
    channels: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=uncalibrated)
    domain_shift: DomainCheck | None = None

    def __post_init__(self) -> None:
        check_recording_id(self.recording_id)
        errors: list[str] = []
        self.modalities = tuple(self.modalities)
        self.epoch_index = np.asarray(self.epoch_index, dtype=np.int64)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32)
        self.available = np.asarray(self.available, dtype=bool)
        n = self.epoch_index.shape[0] if self.epoch_index.ndim == 1 else -1
        if n < 0:
            errors.append(f"epoch_index must be 1-D, got shape {self.epoch_index.shape}")
        elif n and (self.epoch_index[0] < 0 or np.any(np.diff(self.epoch_index) <= 0)):
            errors.append("epoch_index must be non-negative and strictly increasing")
        if self.probabilities.shape != (max(n, 0), N_CLASSES):
            errors.append(f"probabilities must have shape (n_epochs={n}, {N_CLASSES}), "
                          f"got {self.probabilities.shape}")
        if len(set(self.modalities)) != len(self.modalities) or not all(self.modalities):
            errors.append(f"modalities must be distinct non-empty names, got {self.modalities}")
        if self.available.shape != (max(n, 0), len(self.modalities)):
            errors.append(f"available must have shape (n_epochs={n}, n_modalities="
                          f"{len(self.modalities)}), got {self.available.shape}")
        if not (self.epoch_s > 0):
            errors.append(f"epoch_s must be positive, got {self.epoch_s}")
        if errors:
            raise RecordingError("scored night", "; ".join(errors), self.recording_id)

        finite = np.isfinite(self.probabilities).all(axis=1)
        probs = self.probabilities[finite]
        if probs.size and (probs.min() < -1e-4 or probs.max() > 1 + 1e-4):
            errors.append(f"probabilities must lie in [0, 1]; found range "
                          f"[{probs.min():.3g}, {probs.max():.3g}] (pass softmax outputs, not logits)")
        elif probs.size and np.abs(probs.sum(axis=1) - 1.0).max() > 1e-2:
            sums = probs.sum(axis=1)
            worst = sums[np.argmax(np.abs(sums - 1.0))]
            errors.append(f"each row of probabilities must sum to 1; found a row summing to "
                          f"{worst:.4g} (pass softmax outputs)")
        if self.stages is None:
            stages = np.argmax(np.nan_to_num(self.probabilities, nan=-1.0), axis=1).astype(np.int8)
            # Nothing to score from: no usable modality, or the scorer produced no probabilities.
            stages[~finite | ~self.available.any(axis=1)] = UNSCORED
            self.stages = stages
        else:
            self.stages = np.asarray(self.stages)
            if self.stages.shape != (n,):
                errors.append(f"stages must have shape ({n},), got {self.stages.shape}")
            elif n and (self.stages.min() < UNSCORED or self.stages.max() >= N_CLASSES):
                errors.append(f"stage codes must be in -1..4, found {sorted(set(self.stages.tolist()))}")
            else:
                self.stages = self.stages.astype(np.int8)
        if errors:  # the defaults below need consistent stages
            raise RecordingError("scored night", "; ".join(errors), self.recording_id)
        if self.modalities_used is None:
            used = modalities_used_from_available(self.modalities, self.available)
            used[self.stages == UNSCORED] = NOT_SCORED
            self.modalities_used = used
        else:
            self.modalities_used = np.asarray([str(u) for u in self.modalities_used], dtype=object)
            if self.modalities_used.shape != (n,):
                errors.append(f"modalities_used must have shape ({n},), got {self.modalities_used.shape}")
        quality = {}
        for name, flags in self.quality.items():
            arr = np.asarray(flags, dtype=bool)
            if arr.shape != (n,):
                errors.append(f"quality flag {name!r} must have shape ({n},), got {arr.shape}")
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in STANDARD_FLAGS:
                errors.append(f"quality flag name {name!r} must be snake_case and not one of "
                              f"the standard flags {STANDARD_FLAGS}")
            quality[name] = arr
        if errors:
            raise RecordingError("scored night", "; ".join(errors), self.recording_id)

        maxp = np.where(finite, np.nan_to_num(self.probabilities).max(axis=1), 0.0)
        scored = self.stages != UNSCORED
        self.quality = {
            "unscored": ~scored,
            "missing_modality": ~self.available.all(axis=1),
            # Judged only where a stage was given: an unscored epoch has its own flag.
            "low_confidence": scored & (maxp < self.low_confidence_threshold),
            **quality,
        }

    # -- derived views --------------------------------------------------------------------------
    @property
    def n_epochs(self) -> int:
        """Number of scored epochs (rows)."""
        return int(self.epoch_index.shape[0])

    @property
    def onset_s(self) -> np.ndarray:
        """``(n,)`` float64 onset of each epoch in seconds from the recording start."""
        return self.start_offset_s + self.epoch_index.astype(np.float64) * self.epoch_s

    @property
    def stage_names(self) -> list[str]:
        """Short stage name of each epoch (W N1 N2 N3 REM, UNS for unscored)."""
        names = (*STAGES, "UNS")  # index -1 picks the last entry
        return [names[int(s)] for s in self.stages]

    def uncertainty(self) -> dict[str, np.ndarray]:
        """Per-epoch ``confidence``, ``margin`` and ``entropy`` (normalised) of the probabilities.

        See :func:`somnray.scoring.calibration.epoch_uncertainty`; NaN where a row has no
        probabilities.
        """
        return epoch_uncertainty(self.probabilities)

    def confidence_summary(self) -> dict[str, Any]:
        """The night's confidence over its scored epochs (the statistics JSON's ``confidence``).

        ``mean_confidence`` (mean top probability), ``low_confidence_fraction`` (share flagged
        ``low_confidence``), ``expected_errors`` (Σ 1 − top probability: the number of wrong
        stages to expect when the probabilities are calibrated), ``n_scored_epochs``, the
        threshold and the ``calibration`` record.  Null values when no epoch was scored.
        """
        confidence = self.uncertainty()["confidence"].astype(np.float64)
        scored = (self.stages != UNSCORED) & np.isfinite(confidence)
        n = int(scored.sum())
        return {"n_scored_epochs": n,
                "mean_confidence": round(float(confidence[scored].mean()), 6) if n else None,
                "low_confidence_fraction": round(float(self.quality["low_confidence"][scored].mean()), 6) if n else None,
                "expected_errors": round(float((1.0 - confidence[scored]).sum()), 3) if n else None,
                "low_confidence_threshold": self.low_confidence_threshold,
                "calibration": dict(self.calibration)}

    def available_fraction(self) -> dict[str, float]:
        """Fraction of epochs in which each modality was usable."""
        if self.n_epochs == 0:
            return {m: 0.0 for m in self.modalities}
        return {m: float(self.available[:, j].mean()) for j, m in enumerate(self.modalities)}

    def modalities_used_counts(self) -> dict[str, int]:
        """Epochs per ``modalities_used`` label, most frequent first."""
        labels, counts = np.unique(self.modalities_used.astype(str), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return {str(labels[i]): int(counts[i]) for i in order}

    def hypnogram(self) -> np.ndarray:
        """Stages on the contiguous epoch grid from epoch 0 (gaps in ``epoch_index`` are -1)."""
        return timeline(self.epoch_index, self.stages)

    def sleep_stats(self, *, lights_off_s: float | None = None, lights_on_s: float | None = None,
                    **kwargs: Any) -> SleepStats:
        """AASM statistics of this night (see :func:`somnray.serve.stats.compute_sleep_stats`).

        ``lights_off_s``/``lights_on_s`` are seconds from the recording start, like ``onset_s``.
        """
        shift = self.start_offset_s
        return compute_sleep_stats(
            self.hypnogram(), epoch_s=self.epoch_s,
            lights_off_s=None if lights_off_s is None else lights_off_s - shift,
            lights_on_s=None if lights_on_s is None else lights_on_s - shift,
            **kwargs)
