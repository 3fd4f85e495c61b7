"""Tests of the window input pipeline (somnray.train.inputs) on a tiny hand-written dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from prepared_factory import write_dataset  # tests/train is on sys.path (no package)

from somnray.core.errors import ConfigError
from somnray.data import schema
from somnray.train.config import DataConfig, MissingConfig
from somnray.train.inputs import (
    WindowSpec,
    average_window_probabilities,
    cut_windows,
    evaluation_starts,
    iter_window_batches,
    pass_rng,
    read_windows,
    resolve_split,
    to_sleep_batch,
    training_starts,
    window_dataset,
)
from somnray.train.missing import MissingSimulator

MODS = ("eeg", "eog")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("prepared")
    return root, write_dataset(root)


def test_training_starts_are_random_grids_inside_the_recording() -> None:
    """Training windows are non-overlapping, inside the recording, offset in [0, L), varying by pass."""
    offsets = set()
    for p in range(20):
        starts = training_starts(100, 21, pass_rng(0, 3, p))
        assert (np.diff(starts) == 21).all() and starts[0] < 21 and starts[-1] + 21 <= 100
        offsets.add(int(starts[0]))
    assert len(offsets) > 3
    assert np.array_equal(training_starts(100, 21, pass_rng(0, 3, 1)), training_starts(100, 21, pass_rng(0, 3, 1)))
    assert training_starts(10, 21, pass_rng(0, 0, 0)).tolist() == [0]


def test_evaluation_starts_cover_every_epoch() -> None:
    """Evaluation windows cover all epochs, with a last window ending at the end."""
    assert evaluation_starts(50, 21).tolist() == [0, 21, 29]
    assert evaluation_starts(42, 21).tolist() == [0, 21]
    assert evaluation_starts(25, 21, stride=1).tolist() == [0, 1, 2, 3, 4]
    assert evaluation_starts(5, 21).tolist() == [0]


def test_cut_windows_aligns_signals_labels_and_masks(dataset) -> None:
    """Window w, position j holds epoch start+j: signal, label and availability line up; padding is -1/False."""
    _, recs = dataset
    rec = recs["r00"]
    arrays = schema.row_to_arrays(schema.record_to_row(rec, MODS))
    out = cut_windows(arrays, MODS, np.array([0, 29]), 21, recording_index=4)
    assert out["eeg"].shape == (2, 21, 3000) and out["present"].shape == (2, 21, 2)
    assert np.allclose(out["eeg"][1, :, 0], (np.arange(29, 50) / 64.0 + 0.0), atol=2e-3)
    assert np.array_equal(out["labels"][1], rec.labels[29:50])
    assert not out["present"][0, 3, 0] and out["present"][0, 4, 0]
    assert out["recording_index"].tolist() == [4, 4] and out["start"].tolist() == [0, 29]
    assert out["scored"].all()  # non-overlapping windows score every epoch they hold
    overlap = cut_windows(arrays, MODS, evaluation_starts(50, 21, stride=5), 21, recording_index=0)
    covered = np.zeros(50, int)
    for s, sc in zip(overlap["start"], overlap["scored"]):
        covered[s:s + 21] += sc
    assert (covered == 1).all()  # each epoch scored exactly once whatever the stride
    short = schema.row_to_arrays(schema.record_to_row(recs["r02"], MODS))
    padded = cut_windows(short, MODS, np.array([0]), 21, recording_index=2)
    assert (padded["labels"][0, 10:] == -1).all() and not padded["present"][0, 10:].any()
    assert (padded["eeg"][0, 10:] == 0).all()
    no_eog = schema.row_to_arrays(schema.record_to_row(recs["r03"], MODS))
    assert not cut_windows(no_eog, MODS, np.array([0]), 21, recording_index=3)["present"][..., 1].any()


def test_read_windows_reads_files_and_tolerates_missing_modality_columns(dataset) -> None:
    """read_windows reads the recording files; a modality with no column (emg) is absent."""
    root, recs = dataset
    spec = WindowSpec(str(root), ("eeg", "eog", "emg"), 21, mode="eval", stride=21)
    items = {"recording_id": np.array(["r00", "r04"]), "recording_index": np.array([0, 4]),
             "pass_index": np.array([0, 0])}
    out = read_windows(items, spec)
    assert out["present"].shape == (3 + 2, 21, 3)
    assert not out["present"][..., 2].any() and out["present"][..., 0].any()
    assert out["recording_index"].tolist() == [0, 0, 0, 4, 4]


def _training_windows(root: Path, missing: MissingConfig, passes: int = 4) -> dict[str, np.ndarray]:
    spec = WindowSpec(str(root), MODS, 10, mode="train", seed=3, missing=missing)
    items = {"recording_id": np.array(["r00", "r01"] * passes), "recording_index": np.array([0, 1] * passes),
             "pass_index": np.repeat(np.arange(passes), 2)}
    return read_windows(items, spec)


def test_training_masks_are_the_recordings_evaluation_masks(dataset) -> None:
    """Training windows at rate r carry the slice of their recording's missing_<r> evaluation mask, in every pass."""
    from somnray.train.evaluate import recording_inputs
    from somnray.train.scenarios import apply_scenario, missing

    root, recs = dataset
    cfg = MissingConfig(kind="partial_chunks", rate=0.2, chunk_epochs=25, seed=2024)
    windows = _training_windows(root, cfg)
    sim = MissingSimulator(cfg, MODS)
    batch = to_sleep_batch(windows, MODS, simulator=sim, rate=0.2, rng=np.random.default_rng(0))
    full, recorded = {}, {}
    for rid in ("r00", "r01"):
        arrays = schema.row_to_arrays(schema.record_to_row(recs[rid], MODS))
        signals, recorded[rid] = recording_inputs(arrays, MODS)
        full[rid] = apply_scenario(missing(0.2), signals, recorded[rid], MODS, rid)[1]
    for w, (index, start) in enumerate(zip(windows["recording_index"], windows["start"])):
        expected = full[("r00", "r01")[index]][start:start + 10]
        assert np.array_equal(batch.present[w].numpy(), expected), (index, start)
    # Whole 25-epoch chunks of one modality go, not the first round(10·2·0.2) epochs of every window.
    lost = recorded["r00"] & ~full["r00"]
    assert lost.sum() == round(0.2 * 50 * 2) and lost.any(0).sum() == 1
    assert len({int(e) // 25 for e in np.flatnonzero(lost.any(1))}) == 1
    assert not (~batch.present[:, :4]).any(-1).all()


def test_curriculum_rates_nest_the_same_per_recording_draw(dataset) -> None:
    """A higher rate only adds missing slots to the same draw; another missing.seed draws another mask."""
    root, _ = dataset
    cfg = MissingConfig(kind="partial_chunks", rate=0.4)
    windows = _training_windows(root, cfg, passes=1)
    sim = MissingSimulator(cfg, MODS)
    low = to_sleep_batch(windows, MODS, simulator=sim, rate=0.1, rng=np.random.default_rng(0)).present
    high = to_sleep_batch(windows, MODS, simulator=sim, rate=0.4, rng=np.random.default_rng(0)).present
    assert (low | ~high).all() and (~high).sum() > (~low).sum() > 0
    other = _training_windows(root, MissingConfig(kind="partial_chunks", rate=0.4, seed=7), passes=1)
    assert not np.array_equal(other["drop_key"], windows["drop_key"])


def test_unimodal_training_recordings_read_one_modality(dataset) -> None:
    """A recording the incomplete-training plan makes unimodal is read without its other modalities."""
    root, _ = dataset
    spec = WindowSpec(str(root), MODS, 21, mode="eval", stride=21, keep_only={"r00": "eog"})
    items = {"recording_id": np.array(["r00", "r01"]), "recording_index": np.array([0, 1]),
             "pass_index": np.array([0, 0])}
    out = read_windows(items, spec)
    first = out["recording_index"] == 0
    assert not out["present"][first][..., 0].any() and out["present"][first][..., 1].all()
    assert (out["eeg"][first] == 0).all() and out["present"][~first][..., 0].any()


def test_resolve_split_variants(dataset) -> None:
    """The manifest split, a generated k-fold split and a missing split file resolve or fail clearly."""
    root, _ = dataset
    manifest = resolve_split(DataConfig(dataset=str(root), split="manifest"))
    assert manifest.train == ("r00", "r01", "r02", "r03") and manifest.test == ("r05",)
    fold = resolve_split(DataConfig(dataset=str(root), split={"kind": "kfold", "n_folds": 2, "fold": 1,
                                                              "n_val_subjects": 1}))
    subjects = set(fold.train_subjects) | set(fold.val_subjects) | set(fold.test_subjects)
    assert subjects == {"s0", "s1", "s2", "s3"} and not set(fold.train_subjects) & set(fold.test_subjects)
    with pytest.raises(ConfigError, match="no split file 'nope'"):
        resolve_split(DataConfig(dataset=str(root), split="nope"))


def test_to_sleep_batch_applies_simulation_and_drops_absent_modalities() -> None:
    """The batch converts to the model contract; simulation only turns masks off; all-absent modalities are left out."""
    rng = np.random.default_rng(0)
    present = np.ones((4, 25, 3), bool)
    present[..., 2] = False
    sim = MissingSimulator(MissingConfig(kind="partial_chunks", rate=0.25), ("eeg", "eog", "emg"))
    # Four one-window recordings, each with its own keys (drawn per recording, as read_windows does).
    keys = np.stack([sim.recording_keys(p, f"r{i}") for i, p in enumerate(present)])
    batch = {"eeg": torch.randn(4, 25, 3000).half(), "eog": torch.randn(4, 25, 3000).half(),
             "emg": torch.zeros(4, 25, 3000).half(), "present": torch.from_numpy(present),
             "drop_key": torch.from_numpy(keys), "labels": torch.zeros(4, 25, dtype=torch.int64)}
    out = to_sleep_batch(batch, ("eeg", "eog", "emg"), simulator=sim, rate=0.25, rng=rng)
    assert set(out.signals) == {"eeg", "eog"} and out.signals["eeg"].dtype == torch.float32
    assert out.present.shape == (4, 25, 3) and not out.present[..., 2].any()
    assert (~out.present[..., :2]).sum().item() == 4 * round(0.25 * 25 * 2)  # rate over the 2 recorded modalities
    assert out.present.any(-1).all() and out.labels.dtype == torch.int64


def test_average_window_probabilities() -> None:
    """Overlapping windows' probabilities are averaged per epoch."""
    probs = np.zeros((2, 3, 2))
    probs[0, :, 0] = 1.0  # window at 0 says class 0
    probs[1, :, 1] = 1.0  # window at 1 says class 1
    avg = average_window_probabilities(probs, np.array([7, 7]), np.array([0, 1]), {7: 4})[7]
    assert avg[0].tolist() == [1.0, 0.0] and avg[1].tolist() == [0.5, 0.5] and avg[3].tolist() == [0.0, 1.0]


@pytest.mark.integration
def test_window_dataset_on_ray_covers_each_recording(dataset, ray_local) -> None:
    """Ray Data yields every evaluation window; training passes re-draw offsets reproducibly."""
    root, recs = dataset
    ids = ["r00", "r01", "r02", "r03"]
    spec = WindowSpec(str(root), MODS, 21, mode="eval")
    batches = list(iter_window_batches(window_dataset(spec, ids), batch_size=4))
    rec_idx = torch.cat([b["recording_index"] for b in batches]).numpy()
    expected = [len(evaluation_starts(recs[r].n_epochs, 21)) for r in ids]
    assert np.bincount(rec_idx, minlength=4).tolist() == expected
    assert batches[0]["eeg"].shape[1:] == (21, 3000) and batches[0]["present"].dtype == torch.bool

    train = WindowSpec(str(root), MODS, 21, mode="train", seed=5)
    first = window_dataset(train, ids, passes=2, shuffle_seed=1).take_all()
    again = window_dataset(train, ids, passes=2, shuffle_seed=1).take_all()
    key = lambda rows: sorted((int(r["pass_index"]), int(r["recording_index"]), int(r["start"])) for r in rows)
    assert key(first) == key(again)
    passes = {p: sorted((int(r["recording_index"]), int(r["start"])) for r in first if r["pass_index"] == p)
              for p in (0, 1)}
    assert passes[0] != passes[1]


@pytest.mark.parametrize("name", ["coresleep_tiny", "cimsleepnet_tiny"])
def test_training_statistics_come_from_the_training_split(dataset, name) -> None:
    """Class counts cover only training recordings; models get spectrogram stats / class weights."""
    from somnray.models import create_model
    from somnray.train.inputs import apply_training_statistics, compute_training_statistics

    root, recs = dataset
    model = create_model(name)
    train_ids = ["r00", "r01", "r02", "r03"]
    stats = compute_training_statistics(model, str(root), train_ids, MODS, max_epochs=64, seed=0)
    labels = np.concatenate([recs[r].labels for r in train_ids])
    assert stats.class_counts.tolist() == np.bincount(labels[labels >= 0], minlength=5).tolist()
    worker = create_model(name)  # a training worker's copy gets what the driver's model fitted
    done = apply_training_statistics(worker, stats)
    if name == "coresleep_tiny":
        assert {k.split(".")[1] for k in stats.fitted} == {"eeg", "eog"}
        mean, std = stats.fitted["front_end.eeg.bin_mean"], stats.fitted["front_end.eeg.bin_std"]
        assert mean.ndim == 1 and np.isfinite(mean).all() and (std > 0).all()
        assert "front_end.eeg.bin_mean" in done
        assert torch.equal(worker.front_end["eeg"].bin_mean, model.front_end["eeg"].bin_mean)
    if name == "cimsleepnet_tiny":
        assert "class_weights" in done and not torch.equal(worker.class_weights, torch.ones(5))
        assert torch.equal(worker.class_weights, model.class_weights)
