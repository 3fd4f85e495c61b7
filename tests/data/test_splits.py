"""Subject-wise splits: disjointness, determinism, protocol counts, clear errors, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from somnray.data.manifest import ManifestEntry
from somnray.data.splits import (
    Split,
    SplitError,
    assign,
    check_disjoint,
    kfold_split,
    manifest_split,
    ratio_split,
    splits_from_json,
    splits_to_json,
)


def cohort(n_subjects: int, seed: int = 0) -> dict[str, str]:
    """recording id → subject id, one or two nights per subject (Sleep-EDF-like)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in range(n_subjects):
        for night in range(1 + int(rng.random() < 0.8)):
            out[f"SC4{s:02d}{night + 1}E0-{seed}"] = f"{s:02d}"
    return out


def assert_subject_wise(split: Split, recs: dict[str, str]) -> None:
    """Every recording is in exactly one part, with all the nights of its subject."""
    check_disjoint(split)
    parts = split.assignment()
    assert sorted(parts) == sorted(recs)
    for part in ("train", "val", "test"):
        subjects = {recs[r] for r in split.part(part)}
        assert subjects == set(getattr(split, f"{part}_subjects"))


def test_ratio_split_is_subject_wise_over_many_seeds():
    """Over 30 seeded cohorts and seeds, no subject's nights straddle train/val/test."""
    for seed in range(30):
        recs = cohort(40 + seed, seed)
        split = ratio_split(recs, test_fraction=0.3, n_val_subjects=5, seed=seed)
        assert_subject_wise(split, recs)


def test_ratio_split_counts_follow_the_shhs_protocol():
    """100 validation subjects first, then 70:30 of the remaining subjects."""
    recs = {f"shhs1-{200000 + i}": str(200000 + i) for i in range(1100)}
    split = ratio_split(recs, test_fraction=0.3, n_val_subjects=100, seed=0)
    assert len(split.val_subjects) == 100
    assert len(split.test_subjects) == 300 and len(split.train_subjects) == 700
    assert_subject_wise(split, recs)


def test_ratio_split_is_deterministic_by_seed_and_order_free():
    """Same seed → same split whatever the input order; different seeds → different splits."""
    recs = cohort(30)
    a = ratio_split(recs, n_val_subjects=3, seed=1)
    b = ratio_split(dict(reversed(list(recs.items()))), n_val_subjects=3, seed=1)
    c = ratio_split(recs, n_val_subjects=3, seed=2)
    assert a == b
    assert a.test != c.test


def test_kfold_covers_each_subject_once_in_test():
    """k-fold: each subject is tested in exactly one fold; validation comes from the train side."""
    recs = cohort(20)
    folds = kfold_split(recs, 20, seed=0, n_val_subjects=2)
    assert len(folds) == 20
    tested = [s for f in folds for s in f.test_subjects]
    assert sorted(tested) == sorted(set(recs.values()))
    for f in folds:
        assert len(f.test_subjects) == 1 and len(f.val_subjects) == 2
        assert_subject_wise(f, recs)
    ten = kfold_split(cohort(78, 1), 10, seed=3)
    assert sorted(len(f.test_subjects) for f in ten) == [7, 7] + [8] * 8


def test_kfold_deterministic_by_seed():
    """The same seed gives the same folds; another seed permutes subjects differently."""
    recs = cohort(12)
    assert kfold_split(recs, 4, seed=5) == kfold_split(recs, 4, seed=5)
    assert [f.test for f in kfold_split(recs, 4, seed=5)] != [f.test for f in kfold_split(recs, 4, seed=6)]


def test_small_cohorts_get_clear_errors():
    """Too few subjects for the folds or validation subjects: the message says asked vs existing."""
    recs = cohort(5)
    with pytest.raises(SplitError, match="asked for 20 folds but the cohort has only 5 subject"):
        kfold_split(recs, 20)
    with pytest.raises(SplitError, match=r"asked for 100 validation subject\(s\).*the cohort has 5"):
        ratio_split(recs, n_val_subjects=100)
    with pytest.raises(SplitError, match=r"asked for 4 validation subject\(s\) per fold"):
        kfold_split(recs, 5, n_val_subjects=4)
    with pytest.raises(SplitError, match="k >= 2"):
        kfold_split(recs, 1)
    with pytest.raises(SplitError, match="test_fraction"):
        ratio_split(recs, test_fraction=1.5, n_val_subjects=0)


def test_entries_and_assign_and_manifest_split():
    """Splits accept manifest entries; assign maps entries to parts; a fixed split is checked."""
    entries = [ManifestEntry(f"r{i}", f"s{i // 2}", f"/x/r{i}.edf", split=("train", "test")[i // 2 % 2])
               for i in range(8)]
    split = ratio_split(entries, n_val_subjects=1, seed=0)
    parts = assign(entries, split)
    assert set(parts.values()) == {"train", "val", "test"}
    fixed = manifest_split(entries)
    assert fixed.test == ("r2", "r3", "r6", "r7") and fixed.val == ()
    bad = entries[:1] + [ManifestEntry("r1", "s0", "/x/r1.edf", split="test")]
    with pytest.raises(SplitError, match="nights of one subject in different parts"):
        manifest_split(bad)


def test_json_roundtrip():
    """A k-fold split set survives JSON serialisation unchanged."""
    folds = kfold_split(cohort(10), 5, seed=0, n_val_subjects=1, name="cv5")
    back = splits_from_json(splits_to_json(folds))
    assert back == folds and back[0].name == "cv5" and back[0].n_folds == 5
