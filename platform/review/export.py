"""The corrected nights of a review as a labelled prepared dataset (``somnray review dataset``).

The review's ``prepared/`` dataset holds the queued nights' signals, prepared through the model's
profile; the export copies the nights that have corrections, with labels

* ``ignore`` (default): the technician's stage on every reviewed epoch, -1 (ignored by every loss
  and metric) elsewhere;
* ``model``: the technician's stage where reviewed, the model's own stage elsewhere.  This trains
  on the model's unchecked guesses as if they were true: it gives a fine-tuning run whole nights
  to learn context from, but reinforces every error nobody looked at.  Use it only when the
  reviewed epochs are too few to train on alone.

The result is a :class:`~somnray.data.dataset.PreparedDataset` (``<out>/<profile>-<version>``)
that ``somnray finetune --data`` and ``somnray train`` read like any prepared dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from somnray.core.constants import IGNORE_INDEX
from somnray.core.errors import ConfigError
from somnray.core.storage import resolve
from somnray.data.dataset import PreparedDataset
from somnray.data.prepared import PreparedRecording
from somnray.data.profiles import CohortProfile
from somnray.serve import review_files as rf
from somnray.serve.outputs import OUTPUT_SUFFIXES, read_epochs

from .queue import write_prepared

#: What an unreviewed epoch is labelled with.
UNREVIEWED = ("ignore", "model")


@dataclass
class ExportResult:
    """Outcome of :func:`export_dataset`: the dataset URI, nights written, labelled epochs, and
    the queued nights left out because nobody corrected them."""

    dataset_uri: str
    nights: int
    labelled_epochs: int
    reviewed_epochs: int
    uncorrected: list[str] = field(default_factory=list)


def review_labels(epoch_index: np.ndarray, corrections: Mapping[int, int],
                  model: Mapping[int, int] | None = None) -> np.ndarray:
    """Labels of a prepared night: the technician's stage where reviewed, else the model's stage
    (``model`` given) or -1."""
    out = np.full(len(epoch_index), IGNORE_INDEX, np.int8)
    for i, e in enumerate(np.asarray(epoch_index).tolist()):
        if e in corrections:
            out[i] = corrections[e]
        elif model is not None:
            out[i] = model.get(e, IGNORE_INDEX)
    return out


def export_dataset(scored: str, out_uri: str, *, unreviewed: str = "ignore",
                   storage_options: Mapping[str, Any] | None = None) -> ExportResult:
    """Write the corrected nights of a review as a labelled prepared dataset under ``out_uri``.

    Raises
    ------
    ConfigError
        No review, an unknown ``unreviewed`` mode, or no queued night has corrections.
    """
    if unreviewed not in UNREVIEWED:
        raise ConfigError("--unreviewed", [f"must be one of {list(UNREVIEWED)}, got {unreviewed!r}"])
    root = resolve(scored, storage_options)
    summary = rf.read_summary(root)
    if not summary.get("prepared"):
        raise ConfigError(root.uri, ["the review queued no night: nothing to export"])
    source = PreparedDataset.open(rf.review_root(root).join(summary["prepared"]))
    profile = CohortProfile.model_validate(source.manifest["profile"])
    recordings, labels, uncorrected = {}, {}, []
    reviewed = 0
    for entry in source.entries():
        rid = entry.recording_id
        corrections = rf.read_corrections(root, rid)
        if not corrections:
            uncorrected.append(rid)
            continue
        model = None
        if unreviewed == "model":
            table, _ = read_epochs(root.join(rid, rid + OUTPUT_SUFFIXES["epochs"]))
            model = dict(zip(np.asarray(table["epoch"].to_numpy(zero_copy_only=False)).tolist(),
                             np.asarray(table["stage"].to_numpy(zero_copy_only=False)).tolist()))
        rec = _recording(source, rid, profile)
        labels[rid] = review_labels(rec.epoch_index, corrections, model)
        reviewed += sum(e in corrections for e in rec.epoch_index.tolist())
        recordings[rid] = rec
    if not recordings:
        raise ConfigError(root.uri, ["no queued night has corrections yet: correct epochs on the review page "
                                     "or `somnray review import` a corrected hypnogram first"])
    entries = [e for e in source.entries() if e.recording_id in recordings]
    uri = write_prepared(resolve(out_uri, storage_options), profile, entries, recordings, labels=labels)
    return ExportResult(uri, len(recordings), int(sum((v >= 0).sum() for v in labels.values())), reviewed,
                        uncorrected)


def _recording(dataset: PreparedDataset, recording_id: str, profile: CohortProfile) -> PreparedRecording:
    """A recording of a prepared dataset back as a :class:`PreparedRecording` (signals float32)."""
    row = dataset.read(recording_id)
    mods = profile.modalities
    return PreparedRecording(
        recording_id=recording_id, subject_id=row["subject_id"], cohort=row["cohort"],
        signals={m: None if row.get(m) is None else row[m].astype(np.float32) for m in mods},
        available={m: np.asarray(row.get(f"available_{m}", np.zeros(row["n_epochs"], bool)), bool) for m in mods},
        labels=row["labels"], epoch_index=row["epoch_index"], info=dataset.summary(recording_id).get("info") or {})


__all__ = ["ExportResult", "UNREVIEWED", "export_dataset", "review_labels"]
