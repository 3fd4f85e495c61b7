"""Tests of the staging metrics (somnray.train.metrics) against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from somnray.train.metrics import (aggregate_folds, compute_metrics, confusion_matrix, format_report,
                                   plot_confusion_matrix)

# Worked example (10 scored epochs, one ignored):
#   confusion rows (true) W:[1,1,0,0,0] N1:[0,2,0,0,0] N2:[1,0,2,0,0] N3:[0,0,0,1,0] REM:[0,0,1,0,1]
#   accuracy 7/10; F1 W 2/4, N1 4/5, N2 4/6, N3 1, REM 2/3; p_e = (2·2+2·3+3·3+1·1+2·1)/100 = 0.22
#   κ = (0.7 − 0.22) / (1 − 0.22)
LABELS = np.array([0, 0, 1, 1, 2, 2, 2, 3, 4, 4, -1])
PREDS = np.array([0, 1, 1, 1, 2, 2, 0, 3, 4, 2, 3])


def test_hand_computed_example() -> None:
    """Accuracy, per-class F1, macro-F1 and κ equal the hand-computed values; -1 is ignored."""
    m = compute_metrics(LABELS, PREDS)
    assert m.n_epochs == 10
    assert m.accuracy == pytest.approx(0.7)
    assert m.f1 == pytest.approx((0.5, 0.8, 2 / 3, 1.0, 2 / 3))
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3 + 1.0 + 2 / 3) / 5)
    assert m.kappa == pytest.approx(0.48 / 0.78)
    assert m.confusion[2] == (1, 0, 2, 0, 0)


def test_shapes_are_flattened_and_perfect_prediction() -> None:
    """(B, L) arrays work; perfect predictions give accuracy, MF1 and κ of 1."""
    y = np.tile(np.arange(5), (3, 4))
    m = compute_metrics(y, y)
    assert (m.accuracy, m.macro_f1, m.kappa) == (1.0, 1.0, 1.0)


def test_absent_class_counts_as_zero_f1_and_constant_prediction_kappa_zero() -> None:
    """A class never present nor predicted has F1 0 (macro-F1 over all five); chance κ is 0."""
    y = np.array([0, 0, 2, 2])
    m = compute_metrics(y, y)
    assert m.f1 == (1.0, 0.0, 1.0, 0.0, 0.0) and m.macro_f1 == pytest.approx(0.4)
    assert compute_metrics(np.array([0, 2, 2, 2]), np.array([2, 2, 2, 2])).kappa == 0.0


def test_invalid_inputs_raise() -> None:
    """Mismatched shapes and out-of-range classes raise ValueError with the bad values."""
    with pytest.raises(ValueError, match="same number"):
        confusion_matrix(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]))


def test_pooled_equals_concatenated_and_fold_mean_std() -> None:
    """Pooled metrics equal those of the concatenated folds; mean/std are over fold metrics."""
    rng = np.random.default_rng(0)
    folds_y = [rng.integers(0, 5, 200) for _ in range(3)]
    folds_p = [np.where(rng.random(200) < 0.7, y, rng.integers(0, 5, 200)) for y in folds_y]
    per_fold = [compute_metrics(y, p) for y, p in zip(folds_y, folds_p)]
    summary = aggregate_folds(per_fold)
    whole = compute_metrics(np.concatenate(folds_y), np.concatenate(folds_p))
    assert summary.pooled == whole
    accs = [f.accuracy for f in per_fold]
    assert summary.mean["accuracy"] == pytest.approx(np.mean(accs))
    assert summary.std["accuracy"] == pytest.approx(np.std(accs))
    assert "f1_N1" in summary.mean and "n_epochs" not in summary.mean


def test_confusion_plot_writes_png(tmp_path: Path) -> None:
    """The plot is a PNG file written headless."""
    out = plot_confusion_matrix(np.asarray(compute_metrics(LABELS, PREDS).confusion),
                                tmp_path / "plots" / "cm.png", title="fold 0")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_report_mentions_every_stage() -> None:
    """The log line carries accuracy, MF1, κ and each stage's F1."""
    line = format_report(compute_metrics(LABELS, PREDS))
    assert line.startswith("acc 0.700") and all(s in line for s in ("W", "N1", "N2", "N3", "REM"))
