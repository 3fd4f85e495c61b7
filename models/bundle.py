"""Model bundles: a trained model as two plain files that load without the platform.

A bundle is a folder with

* ``model.pt`` — the model's ``state_dict`` (fp32 tensors only), loaded with
  ``torch.load(weights_only=True)`` so opening a bundle from elsewhere never runs pickled code;
* ``model.json`` — what is needed to rebuild the module and feed it: the registry name, the
  constructor overrides, the modalities in ``present``-column order, the sequence length it was
  trained with, and free-form provenance (run URI, metrics, cohort profile, somnray version).

Training exports one per run; scoring and evaluation load it.  Normalisation statistics
(spectrogram per-bin mean/std, class weights) are module buffers, so they travel in ``model.pt``.
This module works on local folders only; the platform copies remote bundles to a temp folder first.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .base import SleepStagingModel
from .registry import create_model

BUNDLE_FORMAT = "somnray-model/1"
WEIGHTS_FILE = "model.pt"
INFO_FILE = "model.json"


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
        Provenance: run URI, phase, metrics, cohort profile, somnray version, ...
    """

    model: str
    overrides: dict[str, Any]
    modalities: tuple[str, ...]
    sequence_length: int
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT

    def to_json(self) -> str:
        """The JSON text of ``model.json``."""
        doc = asdict(self)
        doc["modalities"] = list(self.modalities)
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
        return cls(model=str(doc["model"]), overrides=dict(doc["overrides"]),
                   modalities=tuple(doc["modalities"]), sequence_length=int(doc["sequence_length"]),
                   extra=dict(doc.get("extra") or {}))


def save_bundle(model: SleepStagingModel, directory: str | os.PathLike, *, name: str,
                overrides: Mapping[str, Any] | None = None, sequence_length: int,
                extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a bundle into ``directory`` (created if needed); returns the folder.

    The weights are written to a temporary name and renamed, so a reader never sees half a file.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
             for k, v in model.state_dict().items()}
    info = BundleInfo(model=name, overrides=dict(overrides or {}), modalities=tuple(model.modalities),
                      sequence_length=int(sequence_length), extra=dict(extra or {}))
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / WEIGHTS_FILE)
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
        ``model.json`` is malformed, names an unknown model, or the weights do not fit it.
    """
    folder = Path(directory)
    for f in (WEIGHTS_FILE, INFO_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder}: not a somnray model bundle (no {f})")
    info = BundleInfo.from_json((folder / INFO_FILE).read_text(), str(folder / INFO_FILE))
    model = create_model(info.model, **info.overrides)
    if tuple(model.modalities) != info.modalities:
        raise ValueError(f"{folder / INFO_FILE}: modalities {list(info.modalities)} do not match the "
                         f"model built from it ({list(model.modalities)})")
    state = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not fit model {info.model!r}: {exc}") from None
    return model.eval(), info


__all__ = ["BUNDLE_FORMAT", "BundleInfo", "INFO_FILE", "WEIGHTS_FILE", "load_bundle", "save_bundle"]
