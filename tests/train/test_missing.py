"""Tests of the missing-modality simulation and curricula (somnray.train.missing)."""

from __future__ import annotations

import numpy as np
import pytest

from somnray.core.errors import ConfigError
from somnray.train.config import CurriculumConfig, MissingConfig
from somnray.train.missing import (Curriculum, MissingSimulator, corrupt_signals, drop_complete, drop_keys,
                                   drop_modality, drop_partial_chunks, drop_partial_iid,
                                   incomplete_training_plan, mask_at,
                                   recording_drop_keys, recording_rng)

N_EPOCHS = 1000  # 40 chunks of 25


def _all_present(n: int = N_EPOCHS, m: int = 2) -> np.ndarray:
    return np.ones((n, m), dtype=bool)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.4, 0.5])
def test_chunk_protocol_hits_the_rate_exactly(rate: float) -> None:
    """round(r·L·M) slots are removed, and no epoch loses both modalities."""
    out = drop_partial_chunks(_all_present(), rate, recording_rng(2024, 3))
    assert (~out).sum() == round(rate * N_EPOCHS * 2)
    assert out.any(axis=1).all()


def test_chunk_protocol_rate_is_capped_at_one_modality_per_epoch() -> None:
    """With two modalities at most half the slots can go (CIMSleepNet's maximum rate 0.5)."""
    out = drop_partial_chunks(_all_present(), 0.9, np.random.default_rng(0))
    assert (~out).sum() == N_EPOCHS and out.any(axis=1).all()


def test_chunk_protocol_removes_whole_chunks_of_one_modality() -> None:
    """Missing slots come in 25-epoch grid chunks, each missing exactly one modality."""
    out = drop_partial_chunks(_all_present(), 0.3, np.random.default_rng(1))
    chunks = (~out).reshape(-1, 25, 2)  # (chunk, epoch in chunk, modality)
    per_chunk = chunks.sum(axis=1)  # missing epochs per chunk and modality
    assert set(np.unique(per_chunk)) <= {0, 25}
    assert ((per_chunk > 0).sum(axis=1) <= 1).all()
    assert (per_chunk[:, 0] > 0).any() and (per_chunk[:, 1] > 0).any()


def test_chunk_protocol_is_deterministic_per_recording_seed() -> None:
    """Same base seed + recording index gives the same mask; another index another mask."""
    a = drop_partial_chunks(_all_present(), 0.3, recording_rng(2024, 5))
    b = drop_partial_chunks(_all_present(), 0.3, recording_rng(2024, 5))
    c = drop_partial_chunks(_all_present(), 0.3, recording_rng(2024, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_truly_absent_slots_stay_absent_and_are_never_the_last_modality() -> None:
    """A False input stays False, and epochs with only one true modality keep it."""
    present = _all_present()
    present[:300, 1] = False  # EOG disconnected for the first 300 epochs
    present[500:520, 0] = False  # EEG flat for 20 epochs
    for fn in (lambda p, r: drop_partial_chunks(p, 0.5, r), lambda p, r: drop_partial_iid(p, 0.5, r),
               lambda p, r: drop_complete(p, 1.0, r)):
        out = fn(present, np.random.default_rng(7))
        assert not (out & ~present).any()
        assert out[:300, 0].all() and out[500:520, 1].all()
        assert out.any(axis=1).all()


def test_iid_rate_matches_the_guarded_probability() -> None:
    """Each slot drops with prob r unless it was drawn last in its epoch: achieved rate r − r²/2 for two modalities."""
    rate = 0.3
    out = drop_partial_iid(_all_present(20000), rate, np.random.default_rng(0))
    assert out.any(axis=1).all()
    assert abs((~out).mean() - (rate - rate ** 2 / 2)) < 0.01


def test_iid_respects_columns() -> None:
    """Only the named columns are ever dropped."""
    out = drop_partial_iid(_all_present(2000, 3), 0.5, np.random.default_rng(0), columns=[2])
    assert out[:, :2].all() and 0.4 < (~out[:, 2]).mean() < 0.6


def test_complete_drops_one_modality_of_a_sequence() -> None:
    """At rate 1 each window loses one whole modality; at rate 0 none."""
    batch = np.ones((64, 21, 2), dtype=bool)
    out = drop_complete(batch, 1.0, np.random.default_rng(0))
    lost = (~out).all(axis=1)  # (B, M)
    assert (lost.sum(axis=1) == 1).all() and lost[:, 0].any() and lost[:, 1].any()
    assert drop_complete(batch, 0.0, np.random.default_rng(0)).all()


def test_batches_are_simulated_sequence_by_sequence() -> None:
    """A (B, L, M) batch gets independent masks per sequence, each at the requested rate."""
    batch = np.ones((8, 50, 2), dtype=bool)
    out = drop_partial_chunks(batch, 0.5, np.random.default_rng(3), chunk_epochs=25)
    assert out.shape == batch.shape
    assert ((~out).sum(axis=(1, 2)) == 50).all()
    assert len({out[i].tobytes() for i in range(8)}) > 1


def test_drop_modality_keeps_last_modality() -> None:
    """drop_modality removes a column except where it is the only one left."""
    present = _all_present(10)
    present[:3, 1] = False
    out = drop_modality(present, 0)
    assert out[:3, 0].all() and not out[3:, 0].any()


def test_noise_at_snr_and_flatline_keep_the_mask() -> None:
    """SNR noise has the requested power ratio, flat lines are constant, the mask stays on."""
    rng = np.random.default_rng(0)
    sig = {"eeg": rng.standard_normal((4, 3000)).astype(np.float32),
           "eog": rng.standard_normal((4, 3000)).astype(np.float32)}
    slots = np.zeros((4, 2), dtype=bool)
    slots[:2, 0] = True
    out = corrupt_signals(sig, slots, ("eeg", "eog"), np.random.default_rng(1), snr_db=0.0)
    noise = out["eeg"][:2] - sig["eeg"][:2]
    ratio = (sig["eeg"][:2] ** 2).mean() / (noise ** 2).mean()
    assert abs(10 * np.log10(ratio)) < 0.2
    assert np.array_equal(out["eeg"][2:], sig["eeg"][2:]) and out["eog"] is sig["eog"]
    flat = corrupt_signals(sig, slots, ("eeg", "eog"), np.random.default_rng(1), flatline_prob=1.0)
    assert np.ptp(flat["eeg"][0]) == 0 and np.ptp(flat["eeg"][2]) > 0

    sim = MissingSimulator(MissingConfig(kind="noisy", rate=0.5, noise_sigma=2.0), ("eeg", "eog"))
    present = np.ones((3, 50, 2), dtype=bool)
    signals = {"eeg": np.zeros((3, 50, 3000), np.float32), "eog": np.zeros((3, 50, 3000), np.float32)}
    keys = drop_keys(present, "noisy", np.random.default_rng(2))
    mask, noisy = sim(present, keys, signals, rate=0.5, rng=np.random.default_rng(2))
    assert mask.all()
    corrupted = np.concatenate([(noisy[m] != 0).any(axis=-1) for m in ("eeg", "eog")], axis=-1)
    assert corrupted.mean() == pytest.approx(0.5)


@pytest.mark.parametrize("kind, start, end, ramp, milestones, expected", [
    ("constant", None, None, 0, (), {0: 0.5, 10_000: 0.5}),
    ("linear", 0.0, 0.5, 100, (), {0: 0.0, 50: 0.25, 100: 0.5, 1000: 0.5}),
    ("cosine", 0.0, 0.4, 100, (), {0: 0.0, 50: 0.2, 100: 0.4, 500: 0.4}),
    ("step", 0.1, 0.5, 0, (10, 20), {0: 0.1, 9: 0.1, 10: 0.3, 19: 0.3, 20: 0.5, 99: 0.5}),
])
def test_curriculum_values_at_key_steps(kind, start, end, ramp, milestones, expected) -> None:
    """Each curriculum gives the documented rate at the start, midway, the end and after."""
    cfg = MissingConfig(kind="partial_chunks", rate=0.5,
                        curriculum=CurriculumConfig(kind=kind, start_rate=start, end_rate=end,
                                                    ramp_steps=ramp, milestones=milestones))
    cur = Curriculum.from_config(cfg)
    for step, rate in expected.items():
        assert cur.rate_at(step) == pytest.approx(rate), step
    assert Curriculum("cosine", 0.0, 0.4, 100).rate_at(25) < 0.1  # eases in, below linear's 0.1


def test_simulator_uses_curriculum_and_columns() -> None:
    """The simulator applies the step's rate to the configured modalities only."""
    cfg = MissingConfig(kind="partial_iid", rate=0.5, modalities=("eog",),
                        curriculum=CurriculumConfig(kind="linear", start_rate=0.0, ramp_steps=10))
    sim = MissingSimulator(cfg, ("eeg", "eog"))
    present = np.ones((16, 25, 2), dtype=bool)
    keys = sim.recording_keys(present.reshape(-1, 2), "rec").reshape(present.shape)
    at0, _ = sim(present, keys, {}, rate=sim.curriculum.rate_at(0), rng=np.random.default_rng(0))
    late, _ = sim(present, keys, {}, rate=sim.curriculum.rate_at(10), rng=np.random.default_rng(0))
    assert at0.all() and late[..., 0].all()
    assert 0.3 < (~late[..., 1]).mean() < 0.7


def test_bad_rate_is_refused() -> None:
    """Rates outside [0, 1] raise ValueError naming the value."""
    with pytest.raises(ValueError, match="1.5"):
        drop_partial_iid(_all_present(5), 1.5, np.random.default_rng(0))


def test_incomplete_training_plan_counts_and_is_seeded() -> None:
    """The plan keeps N recordings multimodal, gives the next ones one modality each, leaves the rest out, reproducibly."""
    ids = [f"r{i:03d}" for i in range(40)]
    plan = incomplete_training_plan(ids, 10, 20, ("eeg", "eog"), seed=2024)
    assert len(plan) == 30 and sum(v is None for v in plan.values()) == 10
    assert {v for v in plan.values() if v is not None} == {"eeg", "eog"}
    assert plan == incomplete_training_plan(list(reversed(ids)), 10, 20, ("eeg", "eog"), seed=2024)
    assert plan != incomplete_training_plan(ids, 10, 20, ("eeg", "eog"), seed=1)
    assert len(incomplete_training_plan(ids, 10, None, ("eog",), seed=0)) == 40
    with pytest.raises(ConfigError, match="multimodal: 41 multimodal recordings asked for, the training split has 40"):
        incomplete_training_plan(ids, 41, None, ("eeg",), seed=0)
