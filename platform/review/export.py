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
from somnray.data.splits import Split
from somnray.serve import review_files as rf
from somnray.serve.outputs import OUTPUT_SUFFIXES, read_epochs

from .queue import write_prepared

#: What an unreviewed epoch is labelled with.
UNREVIEWED = ("ignore", "model")
#: Name of the split the export writes with the dataset (``data.split: {name: review}``).
REVIEW_SPLIT = "review"


@dataclass
class ExportResult:
    """Outcome of :func:`export_dataset`: the dataset URI, nights written, labelled epochs, and
    the queued nights left out because nobody corrected them."""

    dataset_uri: str
    nights: int
    labelled_epochs: int
    reviewed_epochs: int
    uncorrected: list[str] = field(default_factory=list)
    split: Split | None = None


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
    split = review_split({rid: rec.subject_id for rid, rec in recordings.items()})
    if split is not None:
        PreparedDataset.at(uri, storage_options).write_splits([split])
    return ExportResult(uri, len(recordings), int(sum((v >= 0).sum() for v in labels.values())), reviewed,
                        uncorrected, split)


def review_split(subjects: Mapping[str, str]) -> Split | None:
    """The subject-wise split written with a review's dataset, so that fine-tuning on it works as is.

    A review usually covers a handful of subjects, too few for the k-fold recipes (which also
    keep test subjects).  Subjects in id order: with three or more, the first validates, the
    second tests and the rest train; with two, one trains and one validates (no test: evaluate
    on other nights a person scored); with one, there is nothing to validate on without putting
    the same person on both sides, so no split is written (None).

    Parameters
    ----------
    subjects : mapping of str to str
        recording id → subject id of the exported nights.
    """
    by_subject: dict[str, list[str]] = {}
    for rid, subject in subjects.items():
        by_subject.setdefault(subject, []).append(rid)
    order = sorted(by_subject)
    if len(order) < 2:
        return None
    val, test = order[:1], order[1:2] if len(order) >= 3 else []
    train = [s for s in order if s not in val and s not in test]

    def recs(part: list[str]) -> tuple[str, ...]:
        return tuple(sorted(r for s in part for r in by_subject[s]))

    return Split(name=REVIEW_SPLIT, protocol="review", seed=None, train=recs(train), val=recs(val),
                 test=recs(test), train_subjects=tuple(train), val_subjects=tuple(val), test_subjects=tuple(test))


def _recording(dataset: PreparedDataset, recording_id: str, profile: CohortProfile) -> PreparedRecording:
    """A recording of a prepared dataset back as a :class:`PreparedRecording` (signals float32)."""
    row = dataset.read(recording_id)
    mods = profile.modalities
    return PreparedRecording(
        recording_id=recording_id, subject_id=row["subject_id"], cohort=row["cohort"],
        signals={m: None if row.get(m) is None else row[m].astype(np.float32) for m in mods},
        available={m: np.asarray(row.get(f"available_{m}", np.zeros(row["n_epochs"], bool)), bool) for m in mods},
        labels=row["labels"], epoch_index=row["epoch_index"], info=dataset.summary(recording_id).get("info") or {})


__all__ = ["ExportResult", "REVIEW_SPLIT", "UNREVIEWED", "export_dataset", "review_labels", "review_split"]
