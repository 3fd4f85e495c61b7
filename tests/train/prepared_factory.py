"""A tiny prepared dataset of hand-made recordings, written as production writes one, for the
input-pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from somnray.data import schema
from somnray.data.dataset import DATA_FORMAT_VERSION, PreparedDataset
from somnray.data.manifest import ManifestEntry
from somnray.data.prepared import PreparedRecording

#: Cohort name and modality columns of the dataset.
COHORT, MODALITIES = "synthetic", ("eeg", "eog")
#: recording id → (subject, n_epochs, has EOG, manifest split)
RECORDINGS = {
    "r00": ("s0", 50, True, "train"),
    "r01": ("s0", 47, True, "train"),
    "r02": ("s1", 10, True, "train"),  # shorter than a window
    "r03": ("s1", 30, False, "train"),  # no EOG at all
    "r04": ("s2", 40, True, "val"),
    "r05": ("s3", 33, True, "test"),
}


def make_recording(rid: str, subject: str, n: int, has_eog: bool, seed: int) -> PreparedRecording:
    """A recording whose EEG sample values encode (recording, epoch) so windows can be checked."""
    rng = np.random.default_rng(seed)
    base = np.arange(n, dtype=np.float32)[:, None] + np.zeros((1, 3000), np.float32)
    eeg = base / 64.0 + int(rid[1:]) * 0.001  # epoch e has EEG value ≈ e/64
    labels = rng.integers(0, 5, n).astype(np.int8)
    labels[::9] = -1
    avail_eeg = np.ones(n, bool)
    avail_eeg[3] = False
    signals = {"eeg": eeg, "eog": rng.standard_normal((n, 3000)).astype(np.float32) if has_eog else None}
    available = {"eeg": avail_eeg, "eog": np.ones(n, bool) if has_eog else np.zeros(n, bool)}
    return PreparedRecording(rid, subject, COHORT, signals, available, labels,
                             np.arange(n, dtype=np.int32) + 7)


def write_dataset(root: Path) -> dict[str, PreparedRecording]:
    """Write the dataset under ``root`` through PreparedDataset's writers (recordings with their
    footer summary, entries.csv, manifest.json); return its recordings."""
    dataset = PreparedDataset.at(str(root))
    recs, entries = {}, []
    for i, (rid, (subject, n, has_eog, split)) in enumerate(RECORDINGS.items()):
        rec = make_recording(rid, subject, n, has_eog, seed=i)
        dataset.write_recording(rec, MODALITIES)
        recs[rid] = rec
        entries.append(ManifestEntry(rid, subject, f"{rid}.edf", split=split))
    dataset.write_entries(entries)
    # The identity part of a manifest (no profile YAML made these recordings, so no counts).
    dataset.write_manifest({"dataset": root.name, "version": None, "uri": dataset.uri,
                            "format": DATA_FORMAT_VERSION, "schema": schema.schema_metadata(MODALITIES),
                            "profile": {"name": COHORT}, "complete": True})
    return recs
