"""The review's arithmetic without files: uncertainty, ranking, budget, agreement, labels, the simulated technician."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from somnray.core.errors import ConfigError
from somnray.review.agreement import agreement
from somnray.review.export import review_labels
from somnray.review.queue import NightScores, epoch_reasons, night_row, queue_budget, rank_nights, select_epochs
from somnray.review.simulate import review_gain
from somnray.review.uncertainty import epoch_uncertainty


def _night(rid: str, confidence, *, stage=None, margin=None, domain_shift=False, available=None) -> NightScores:
    c = np.asarray(confidence, float)
    n = c.size
    return NightScores(rid, np.arange(n), np.arange(n) * 30.0, np.zeros(n, int) if stage is None else np.asarray(stage),
                       c, np.full(n, 0.5) if margin is None else np.asarray(margin, float), np.full(n, 0.5),
                       available or {"eeg": np.ones(n, bool)}, domain_shift)


def test_uncertainty_is_computed_from_probabilities_or_taken_from_columns() -> None:
    """Without calibration columns, confidence/margin/normalised entropy come from prob_*; with them, they are used."""
    probs = {"prob_W": [0.7, 0.2, None], "prob_N1": [0.1, 0.2, None], "prob_N2": [0.1, 0.2, None],
             "prob_N3": [0.05, 0.2, None], "prob_REM": [0.05, 0.2, None]}
    got = epoch_uncertainty(pa.table({k: pa.array(v, pa.float32()) for k, v in probs.items()}))
    assert got["confidence"][:2] == pytest.approx([0.7, 0.2], abs=1e-6)
    assert got["margin"][:2] == pytest.approx([0.6, 0.0], abs=1e-6)
    h = -(0.7 * math.log(0.7) + 2 * 0.1 * math.log(0.1) + 2 * 0.05 * math.log(0.05)) / math.log(5)
    assert got["entropy"][:2] == pytest.approx([h, 1.0], abs=1e-5)
    assert np.isnan(got["confidence"][2]) and np.isnan(got["entropy"][2])
    calibrated = pa.table({**{k: pa.array(v, pa.float32()) for k, v in probs.items()},
                           "confidence": [0.9, 0.3, None], "margin": [0.8, 0.1, None], "entropy": [0.1, 0.9, None]})
    assert epoch_uncertainty(calibrated)["confidence"][:2] == pytest.approx([0.9, 0.3])


def test_nights_rank_by_expected_errors_and_epochs_by_uncertainty_across_nights() -> None:
    """Expected errors = Σ(1 − confidence) over scored epochs; the queue takes the least certain epochs of any night."""
    a = _night("a", [0.9, 0.4, 0.95], stage=[0, 2, -1])          # expected errors 0.7 (the unscored epoch is out)
    b = _night("b", [0.5, 0.5, 0.35, 0.99], margin=[0.3, 0.05, 0.2, 0.9])
    assert a.expected_errors == pytest.approx(0.7) and b.expected_errors == pytest.approx(1.66)
    ranked = rank_nights([a, b])
    assert [n.recording_id for n in ranked] == ["b", "a"]
    picks = select_epochs(ranked, 4)
    # b:2 (0.65), a:1 (0.6), then b's two ties at 0.5 by smaller margin: b:1 before b:0.
    assert [(ranked[i].recording_id, r) for i, r in picks] == [("b", 2), ("a", 1), ("b", 1), ("b", 0)]
    row = night_row(1, b, n_queued=3)
    assert row["n_scored"] == 4 and row["expected_error_rate"] == pytest.approx(1.66 / 4, abs=1e-6)
    assert row["low_confidence_fraction"] == pytest.approx(0.25)


def test_budget_and_reasons() -> None:
    """The budget is a rounded fraction (≥ 1) or an explicit count; reasons name confidence, close calls, modalities, shift."""
    assert queue_budget(1000) == 100 and queue_budget(3) == 1 and queue_budget(0) == 0
    assert queue_budget(1000, max_epochs=7) == 7 and queue_budget(5, max_epochs=70) == 5
    with pytest.raises(ConfigError, match="fraction"):
        queue_budget(10, fraction=1.5)
    n = _night("n", [0.3, 0.9], margin=[0.05, 0.8], domain_shift=True,
               available={"eeg": np.array([True, True]), "eog": np.array([False, True])})
    assert epoch_reasons(n, 0) == "low_confidence;close_call;missing_eog;domain_shift"
    assert epoch_reasons(_night("m", [0.9]), 0) == "uncertain"


def test_agreement_kappa_matches_a_hand_computation() -> None:
    """κ, accuracy and the confusion matrix (technician rows, model columns) equal a hand computation."""
    tech = np.array([0, 0, 2, 2, 2, 4, 4, 1])
    model = np.array([0, 2, 2, 2, 4, 4, 4, -1])
    doc = agreement({"n1": (np.arange(8), tech, model)})
    # 7 epochs the model staged: agreements 5 → p_o = 5/7.  Technician marginals W 2, N2 3, REM 2;
    # model marginals W 1, N2 3, REM 3 → p_e = (2·1 + 3·3 + 2·3) / 49 = 17/49.
    p_o, p_e = 5 / 7, 17 / 49
    assert doc["accuracy"] == pytest.approx(p_o)
    assert doc["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert doc["confusion"]["counts"][2] == [0, 0, 2, 0, 1] and doc["model_unscored"] == 1
    assert doc["n_reviewed"] == 8 and doc["n_changed"] == 3
    assert doc["f1"]["W"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


def test_dataset_labels_take_the_technician_then_ignore_or_the_model() -> None:
    """Reviewed epochs get the technician's stage; others -1, or the model's with unreviewed=model."""
    idx = np.array([10, 11, 12, 13])
    assert review_labels(idx, {11: 3, 13: 0}).tolist() == [-1, 3, -1, 0]
    assert review_labels(idx, {11: 3}, {10: 2, 11: 2, 12: 4, 13: -1}).tolist() == [2, 3, 4, -1]


def test_simulated_technician_fixes_more_errors_among_uncertain_epochs() -> None:
    """On calibrated probabilities (errors happen with probability 1 − confidence) the queue fixes ≥ 2× random."""
    rng = np.random.default_rng(0)
    nights, truths = [], {}
    for k in range(4):
        conf = rng.beta(5, 1.2, 500).clip(0.2, 1.0)
        stage = rng.integers(0, 5, 500)
        wrong = rng.uniform(size=500) > conf
        truths[f"n{k}"] = np.where(wrong, (stage + 1) % 5, stage)
        nights.append(_night(f"n{k}", conf, stage=stage))
    gain = review_gain(nights, truths, fraction=0.1, draws=50)
    assert gain.reviewed == 200 and gain.errors == sum(int((n.stage != truths[n.recording_id]).sum()) for n in nights)
    assert gain.ratio >= 2, gain
    assert gain.accuracy_uncertain > gain.accuracy_random > gain.accuracy_before


def test_review_split_keeps_subjects_apart_and_leaves_one_subject_unsplit() -> None:
    """The export's split: 3+ subjects → validate, test, train; 2 → train and validate; 1 → no split."""
    from somnray.review.export import review_split

    three = review_split({"a1": "A", "a2": "A", "b1": "B", "c1": "C", "d1": "D"})
    assert (three.val_subjects, three.test_subjects, three.train_subjects) == (("A",), ("B",), ("C", "D"))
    assert three.val == ("a1", "a2") and three.test == ("b1",) and three.train == ("c1", "d1")
    two = review_split({"x": "S2", "y": "S1"})
    assert (two.val_subjects, two.test_subjects, two.train_subjects) == (("S1",), (), ("S2",))
    assert review_split({"n1": "solo", "n2": "solo"}) is None
