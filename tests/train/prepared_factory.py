"""A tiny hand-written prepared dataset in the Parquet contract, for the input-pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from somnray.data import schema
from somnray.data.manifest import ManifestEntry, format_manifest_csv
from somnray.data.prepared import PreparedRecording

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
    return PreparedRecording(rid, subject, "synthetic", signals, available, labels,
                             np.arange(n, dtype=np.int32) + 7)


def write_dataset(root: Path) -> dict[str, PreparedRecording]:
    """Write the dataset under ``root`` (recordings/*.parquet + entries.csv); return its recordings."""
    (root / "recordings").mkdir(parents=True, exist_ok=True)
    recs, entries = {}, []
    for i, (rid, (subject, n, has_eog, split)) in enumerate(RECORDINGS.items()):
        rec = make_recording(rid, subject, n, has_eog, seed=i)
        table = schema.to_table([rec], ["eeg", "eog"])
        (root / "recordings" / f"{rid}.parquet").write_bytes(schema.to_parquet_bytes(table))
        recs[rid] = rec
        entries.append(ManifestEntry(rid, subject, f"{rid}.edf", split=split))
    (root / "entries.csv").write_text(format_manifest_csv(entries))
    return recs
