"""A fourth architecture from outside somnray.models (tests/plugins/toy_arch.py), through the public
CLI: ``somnray train``, ``evaluate`` and ``score``, with no platform file naming it.

Each command is its own driver process attached to the session cluster, the way a user runs them
against a cluster: the plugin is named by ``SOMNRAY_MODEL_MODULES`` in the driver's environment
only, so the Ray Train workers and the Ray Data actors that build the model find it because the
session passes the variable on (and import it from the driver's working directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prepared_factory import RECORDINGS, write_dataset  # tests/train is on sys.path (no package)
from run_factory import write_config

from somnray.core.constants import MODEL_MODULES_ENV

#: The toy plugin's folder; this process never imports it (its registry stays the built-ins').
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def _somnray(args: list[str], ray_local) -> subprocess.CompletedProcess:
    """``python -m somnray.jobs ARGS`` in tests/plugins, attached to the session cluster, with the plugin."""
    env = {**os.environ, "RAY_ADDRESS": ray_local.address, "DS_ACCELERATOR": "cpu", MODEL_MODULES_ENV: "toy_arch"}
    return subprocess.run([sys.executable, "-m", "somnray.jobs", *args], cwd=PLUGINS, capture_output=True,
                          text=True, env=env, timeout=900)


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def _without_eog(src: Path, dst: Path) -> Path:
    """A copy of a Sleep-EDF PSG file with its EOG channel removed."""
    import edfio

    edf = edfio.read_edf(src)
    edf.drop_signals(["EOG horizontal"])
    edf.write(dst)
    return dst


@pytest.mark.integration
def test_toy_architecture_trains_evaluates_exports_and_scores(tmp_path: Path, ray_local, synth_cohort,
                                                            tmp_path_factory) -> None:
    """toy_gru, registered only by SOMNRAY_MODEL_MODULES: train writes metrics and a bundle holding
    the statistics the toy fitted on the training split; evaluate prints and writes the scenario
    table; score writes hypnograms, and scores a night without EOG because the toy drops it."""
    from run_factory import prepared_cohort

    data = tmp_path / "prepared"
    recs = write_dataset(data)
    cfg = write_config(tmp_path / "toy.yaml", dataset=str(data), storage_uri=str(tmp_path / "runs"), name="toy",
                       model="toy_gru", data={"dataset": str(data), "split": "manifest", "sequence_length": 5,
                                              "shuffle_buffer": 8},
                       optim={"batch_size": 4, "max_steps": 4, "validate_every": 2})
    run = tmp_path / "runs" / "toy"

    # train (the toy's statistics are fitted on the driver and installed in each worker's copy)
    proc = _somnray(["train", str(cfg)], ray_local)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert _last_line(proc.stdout) == f"file://{run}"
    assert "[train] fitted on the training split: class_weights, signal_scale" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_phase"] == "train" and metrics["phases"]["train"]["metrics"]

    # export: the run's bundle is the toy, with its fitted buffers among the weights
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["model"] == "toy_gru" and info["modalities"] == ["eeg", "eog"]
    weights = torch.load(run / "model" / "model.pt", weights_only=True)
    train_ids = [rid for rid, (*_, split) in RECORDINGS.items() if split == "train"]
    labels = np.concatenate([recs[r].labels for r in train_ids])
    counts = np.bincount(labels[labels >= 0].astype(np.int64), minlength=5)
    assert (counts > 0).all()  # so the toy's rule is n / (5 n_k) for every class
    expected = torch.tensor(counts.sum() / (5 * counts), dtype=torch.float32)
    torch.testing.assert_close(weights["class_weights"], expected)
    assert not torch.equal(weights["class_weights"], torch.ones(5))
    scale = weights["signal_scale"]
    assert torch.isfinite(scale).all() and (scale > 0).all() and scale[0] != 1.0

    # evaluate, on Ray actors (--workers 2), on every night of a cohort prepared by `somnray prepare`
    cohort = prepared_cohort(tmp_path_factory, synth_cohort, n_nights=4, hours=1.0)
    out_eval = tmp_path / "evaluation"
    proc = _somnray(["evaluate", str(run), "--data", cohort, "--split", "all", "--workers", "2",
                     "--out", str(out_eval)], ray_local)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert "toy_gru on" in proc.stdout
    table = proc.stdout[proc.stdout.index("toy_gru on"):]
    assert all(f"| {scenario} " in table for scenario in ("all", "eeg_only", "eog_only")), table
    report = json.loads((out_eval / "report.json").read_text())
    assert report["model"] == "toy_gru" and (out_eval / "report.md").is_file()

    # score a synthetic night as recorded, and the same night without its EOG channel
    edfs = synth_cohort("sleep-edf", n_nights=4, hours=1.0)
    entry = edfs.entries[0]
    nights = tmp_path / "nights"
    nights.mkdir()
    full = nights / Path(entry.psg).name
    full.write_bytes((edfs.path / entry.psg).read_bytes())
    no_eog = _without_eog(full, nights / "SC4991E0-PSG.edf")
    out = tmp_path / "scored"
    proc = _somnray(["score", str(run), str(full), str(no_eog), "--out", str(out), "--profile", "sleep-edf",
                     "--workers", "1", "--no-progress"], ray_local)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert _last_line(proc.stdout) == f"file://{out}"
    used = {}
    for night in sorted(p.name for p in out.iterdir() if p.is_dir()):
        hypnogram = pd.read_csv(out / night / f"{night}_hypnogram.csv")
        assert len(hypnogram) >= 100  # one hour of 30-s epochs, every one staged
        stats = json.loads((out / night / f"{night}_sleep_stats.json").read_text())
        assert stats["status"] == "ok"
        epochs = pd.read_parquet(out / night / f"{night}_epochs.parquet")
        used[night] = set(epochs["modalities_used"])
    assert len(used) == 2 and used["SC4991E0"] == {"eeg"}
    assert "eeg+eog" in used[next(n for n in used if n != "SC4991E0")]
