"""Model bundles: a trained model as two plain files that load without the platform.

A bundle is a folder with

* ``model.pt`` — the model's ``state_dict`` (fp32 tensors only), loaded with
  ``torch.load(weights_only=True)`` so opening a bundle from elsewhere never runs pickled code;
* ``model.json`` — what is needed to rebuild the module and feed it: the registry name, the
  constructor overrides, the modalities in ``present``-column order, the sequence length it was
  trained with, and free-form provenance (run URI, metrics, cohort profile name, somnray version).
  A bundle is self-contained: ``model.json`` also carries the full cohort profile the training
  data was prepared with (channels, derivations, filters, rates, normalisation), the window rule,
  the class names, summary statistics of the training signals per modality (for domain-shift
  checks), the calibration fitted on the validation split and the SHA-256 of ``model.pt``.  Bundles written before these
  fields existed load with them empty.

Training exports one per run; scoring and evaluation load it.  Normalisation statistics
(spectrogram per-bin mean/std, class weights) are module buffers, so they travel in ``model.pt``.
This module works on local folders only; the platform copies remote bundles to a temp folder first.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from somnray.core.constants import EPOCH_SECONDS, SAMPLING_RATE_HZ, STAGES

from .base import SleepStagingModel
from .registry import create_model

BUNDLE_FORMAT = "somnray-model/1"
WEIGHTS_FILE = "model.pt"
INFO_FILE = "model.json"
#: How scoring cuts a night into windows (``somnray.models.inference.window_starts``), in words.
STRIDE_RULE = ("windows of sequence_length epochs every stride epochs (default stride: "
               "sequence_length), plus one window ending at the last epoch; an epoch covered by "
               "several windows gets the mean of their probabilities")


def window_rule(sequence_length: int, eval_stride: int | None = None) -> dict[str, Any]:
    """The ``window`` section of ``model.json``: epoch, rate, window length and stride rule.

    ``eval_stride`` is the stride the model was validated with (default: the window length).
    """
    return {"epoch_seconds": EPOCH_SECONDS, "sampling_rate_hz": SAMPLING_RATE_HZ,
            "sequence_length": int(sequence_length), "default_stride": int(sequence_length),
            "validation_stride": int(eval_stride or sequence_length), "stride_rule": STRIDE_RULE}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1-MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleInfo:
    """The ``model.json`` of a bundle.

    Parameters
    ----------
    model : str
        Registry name (``somnray.models.list_models()``).
    overrides : dict
        Keyword overrides given to ``create_model``.
    modalities : tuple of str
        The model's modalities, in the column order of ``present``.
    sequence_length : int
        Epochs per input sequence used in training (scoring cuts windows of this length).
    extra : dict
        Provenance: run URI, phase, metrics, cohort profile name, somnray version, ...
    profile : dict, optional
        The full cohort profile the training data was prepared with (``CohortProfile`` as JSON);
        scoring prepares new nights with it when no other profile is named. None: not recorded
        (bundles from before it was).
    window : dict
        Epoch length, sampling rate, window length and stride rule (:func:`window_rule`).
    class_names : tuple of str
        Output classes in logit order.
    data_summary : dict
        Per modality, summary statistics of the training signals as the model saw them
        (``somnray.data.signal_summary``): epoch-RMS quantiles and relative band powers, and how
        the training recordings were read (``reading``: native rates, signals, band-pass) with the
        range of their physical amplitude (``amplitude``), for scoring's domain-shift check.
    calibration : dict
        The temperature fitted on the validation split at export and what it measured
        (``somnray.scoring.calibration.Calibration``: ``temperature``, ``method``, ``n_epochs``,
        ``ece_before``, ``ece_after``, ``low_confidence_threshold``, ``threshold_rule``,
        ``reliability``, ``reason``); ``{"temperature": None}`` when none was fitted (bundles from
        before calibration, or too little validation data: ``reason`` says which).
    weights_sha256 : str, optional
        SHA-256 of ``model.pt`` (set by :func:`save_bundle`).
    """

    model: str
    overrides: dict[str, Any]
    modalities: tuple[str, ...]
    sequence_length: int
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    profile: dict[str, Any] | None = None
    window: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = STAGES
    data_summary: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=lambda: {"temperature": None})
    weights_sha256: str | None = None

    def to_json(self) -> str:
        """The JSON text of ``model.json``."""
        doc = asdict(self)
        doc["modalities"] = list(self.modalities)
        doc["class_names"] = list(self.class_names)
        return json.dumps(doc, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, source: str = INFO_FILE) -> "BundleInfo":
        """Parse ``model.json``; a clear ``ValueError`` names what is missing or wrong."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{source}: format {doc.get('format')!r} is not {BUNDLE_FORMAT!r}")
        missing = [k for k in ("model", "overrides", "modalities", "sequence_length") if k not in doc]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        optional = {k: doc[k] for k in ("profile", "weights_sha256") if doc.get(k) is not None}
        optional.update({k: dict(doc[k]) for k in ("window", "data_summary", "calibration") if doc.get(k)})
        if doc.get("class_names"):
            optional["class_names"] = tuple(doc["class_names"])
        return cls(model=str(doc["model"]), overrides=dict(doc["overrides"]),
                   modalities=tuple(doc["modalities"]), sequence_length=int(doc["sequence_length"]),
                   extra=dict(doc.get("extra") or {}), **optional)


def save_bundle(model: SleepStagingModel, directory: str | os.PathLike, *, name: str,
                overrides: Mapping[str, Any] | None = None, sequence_length: int,
                extra: Mapping[str, Any] | None = None, profile: Mapping[str, Any] | None = None,
                eval_stride: int | None = None, data_summary: Mapping[str, Any] | None = None,
                calibration: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a bundle into ``directory`` (created if needed); returns the folder.

    The weights are written to a temporary name and renamed, so a reader never sees half a file;
    ``model.json`` records their SHA-256 and is written last.

    Parameters
    ----------
    profile : mapping, optional
        The cohort profile of the training data, as JSON data.
    eval_stride : int, optional
        The window stride the model was validated with (recorded in ``window``).
    data_summary : mapping, optional
        Summary statistics of the training signals per modality.
    calibration : mapping, optional
        The fitted calibration (see :class:`BundleInfo`); default ``{"temperature": None}``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
             for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / WEIGHTS_FILE)
    info = BundleInfo(model=name, overrides=dict(overrides or {}), modalities=tuple(model.modalities),
                      sequence_length=int(sequence_length), extra=dict(extra or {}),
                      profile=dict(profile) if profile else None,
                      window=window_rule(sequence_length, eval_stride),
                      data_summary=dict(data_summary or {}),
                      calibration=dict(calibration) if calibration else {"temperature": None},
                      weights_sha256=file_sha256(out / WEIGHTS_FILE))
    tmp_info = out / f".{INFO_FILE}.tmp"
    tmp_info.write_text(info.to_json())
    os.replace(tmp_info, out / INFO_FILE)
    return out


def load_bundle(directory: str | os.PathLike, map_location: str | torch.device = "cpu"
                ) -> tuple[SleepStagingModel, BundleInfo]:
    """Rebuild the model of a bundle folder, in eval mode, with its weights.

    Raises
    ------
    FileNotFoundError
        The folder lacks ``model.pt`` or ``model.json``.
    ValueError
        ``model.json`` is malformed, names an unknown model, the weights' SHA-256 differs from the
        recorded one, or the weights do not fit the model.
    """
    folder = Path(directory)
    for f in (WEIGHTS_FILE, INFO_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder}: not a somnray model bundle (no {f})")
    info = BundleInfo.from_json((folder / INFO_FILE).read_text(), str(folder / INFO_FILE))
    changed = info.weights_sha256 is not None and file_sha256(folder / WEIGHTS_FILE) != info.weights_sha256
    hash_problem = f"its SHA-256 differs from the one {INFO_FILE} records ({info.weights_sha256})"
    model = create_model(info.model, **info.overrides)
    if tuple(model.modalities) != info.modalities:
        raise ValueError(f"{folder / INFO_FILE}: modalities {list(info.modalities)} do not match the "
                         f"model built from it ({list(model.modalities)})")
    state = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        also = f" ({hash_problem}: the file was replaced or damaged)" if changed else ""
        raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not fit model {info.model!r}{also}: {exc}") from None
    if changed:
        raise ValueError(f"{folder / WEIGHTS_FILE}: {hash_problem}; the weights were changed or damaged")
    return model.eval(), info


__all__ = ["BUNDLE_FORMAT", "BundleInfo", "INFO_FILE", "STRIDE_RULE", "WEIGHTS_FILE", "file_sha256", "load_bundle",
           "save_bundle", "window_rule"]
