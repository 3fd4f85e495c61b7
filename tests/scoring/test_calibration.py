"""Calibrated uncertainty (somnray.scoring.calibration) and the scorer applying a bundle's temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from somnray.models import create_model
from somnray.models.bundle import load_bundle, save_bundle
from somnray.scoring import calibration as cal
from somnray.scoring.scorer import Scorer


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their own softmax (so softmax(z) is perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, 5))
    p = _softmax(z)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, labels


def test_overconfident_model_gets_t_above_one_and_a_smaller_ece() -> None:
    """Probabilities sharpened by T=2 (over-confident): the fit recovers T≈2 and ECE falls to ≈0."""
    z, labels = _sample()
    over = _softmax(2.0 * z)
    result = cal.calibrate(over, labels)
    assert result.fitted and result.method == "temperature" and result.n_epochs == len(labels)
    assert result.temperature == pytest.approx(2.0, rel=0.05)
    assert result.ece_before > 0.1 and result.ece_after < 0.02
    assert result.ece_before == pytest.approx(cal.expected_calibration_error(over, labels))
    assert sum(b["count"] for b in result.reliability["after"]) == len(labels)


def test_underconfident_model_gets_t_below_one() -> None:
    """Probabilities flattened by T=0.5: the fit recovers T≈0.5."""
    z, labels = _sample(seed=1)
    assert cal.fit_temperature(_softmax(0.5 * z), labels) == pytest.approx(0.5, rel=0.05)


def test_perfectly_calibrated_sample_has_ece_near_zero_and_t_near_one() -> None:
    """Labels drawn from the probabilities themselves: ECE ≈ 0 and the fitted T ≈ 1."""
    z, labels = _sample(seed=2)
    p = _softmax(z)
    assert cal.expected_calibration_error(p, labels) < 0.015
    assert cal.fit_temperature(p, labels) == pytest.approx(1.0, abs=0.05)


def test_fit_is_deterministic_and_ignores_unlabelled_epochs() -> None:
    """The same data gives the same T; epochs labelled -1 (and NaN rows) change nothing."""
    z, labels = _sample(n=3000, seed=3)
    p = _softmax(2.0 * z)
    t = cal.fit_temperature(p, labels)
    assert cal.fit_temperature(p, labels) == t
    noisy_p = np.concatenate([p, np.full((5, 5), np.nan), _softmax(np.ones((7, 5)))])
    noisy_labels = np.concatenate([labels, [0] * 5, [-1] * 7])
    assert cal.fit_temperature(noisy_p, noisy_labels) == pytest.approx(t, rel=1e-9)


def test_ece_and_bins_by_hand() -> None:
    """Two epochs at 0.9 (one right) and one at 0.5 (right): ECE = 2/3·0.4 + 1/3·0.5."""
    p = np.array([[0.9, 0.1, 0, 0, 0], [0.9, 0.1, 0, 0, 0], [0.5, 0.5, 0, 0, 0]])
    labels = np.array([0, 1, 0])
    bins = cal.reliability_bins(p, labels, n_bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 1, 0, 0, 0, 2, 0]
    assert bins[8]["accuracy"] == 0.5 and bins[8]["confidence"] == pytest.approx(0.9)
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert cal.expected_calibration_error(p, labels, n_bins=10) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.5)


def test_temperature_keeps_the_argmax_and_unscored_rows() -> None:
    """softmax(log p / T) keeps each row's argmax, sums to 1, leaves NaN rows and T=1 alone."""
    z, _ = _sample(n=500, seed=4)
    p = _softmax(z).astype(np.float32)
    p[3] = np.nan
    for t in (0.3, 2.5):
        q = cal.apply_temperature(p, t)
        finite = np.isfinite(p).all(axis=1)
        assert (q[finite].argmax(axis=1) == p[finite].argmax(axis=1)).all()
        np.testing.assert_allclose(q[finite].sum(axis=1), 1.0, atol=1e-5)
        assert np.isnan(q[3]).all()
    softer = cal.apply_temperature(p, 2.5)
    assert (softer[~np.isnan(p[:, 0])].max(axis=1) <= p[~np.isnan(p[:, 0])].max(axis=1) + 1e-6).all()
    assert np.array_equal(cal.apply_temperature(p, None), p, equal_nan=True)
    assert np.array_equal(cal.apply_temperature(p, 1.0), p, equal_nan=True)


def test_epoch_uncertainty_extremes() -> None:
    """One-hot: confidence 1, margin 1, entropy 0; uniform: 0.2, 0, 1; a NaN row gives NaN."""
    p = np.array([[0, 0, 1, 0, 0], [0.2] * 5, [0.5, 0.3, 0.2, 0, 0], [np.nan] * 5])
    u = cal.epoch_uncertainty(p)
    np.testing.assert_allclose(u["confidence"][:3], [1.0, 0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(u["margin"][:3], [1.0, 0.0, 0.2], atol=1e-6)
    expected = -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)) / np.log(5)
    np.testing.assert_allclose(u["entropy"][:3], [0.0, 1.0, expected], atol=1e-6)
    assert all(np.isnan(u[k][3]) for k in ("confidence", "margin", "entropy"))


def test_threshold_rule_flags_epochs_wrong_at_the_target_rate() -> None:
    """The threshold is the largest cut whose lower epochs are wrong ≥ the target rate, clipped."""
    conf = np.array([0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    right = np.array([False, False, True, False, True, True, True])
    # Cumulative error rates: 1, 1, 2/3, 3/4, 3/5, 1/2, 3/7 → the last cut at ≥ 0.5 is after 0.85.
    assert cal.low_confidence_threshold(conf, right, error_rate=0.5) == pytest.approx(0.9)
    # A stricter target (flagged epochs wrong ≥ 70 %): the cut after 0.65.
    assert cal.low_confidence_threshold(conf, right, error_rate=0.7) == pytest.approx(0.7)
    # Never wrong: nothing qualifies → the lower end of the range; always wrong → the upper end.
    assert cal.low_confidence_threshold(conf, np.ones(7, bool)) == cal.THRESHOLD_RANGE[0]
    assert cal.low_confidence_threshold(conf, np.zeros(7, bool)) == cal.THRESHOLD_RANGE[1]
    # Ties: no cut inside a run of equal confidences.
    tied = np.array([0.6, 0.6, 0.6, 0.8])
    assert cal.low_confidence_threshold(tied, np.array([False, True, True, True]), error_rate=0.5) == cal.THRESHOLD_RANGE[0]
    with pytest.raises(ValueError):
        cal.low_confidence_threshold(conf, right, error_rate=1.0)


def test_too_few_epochs_are_not_fitted_and_say_why() -> None:
    """Below min_epochs labelled epochs: no temperature, the reason, T=1 and the 0.5 fallback threshold."""
    z, labels = _sample(n=50, seed=5)
    result = cal.calibrate(_softmax(z), labels, min_epochs=100)
    assert not result.fitted and result.n_epochs == 50 and "fewer than the 100" in result.reason
    assert result.applied_temperature == 1.0 and result.threshold == cal.UNCALIBRATED_THRESHOLD
    assert result.output_metadata() == {"fitted": False, "temperature": 1.0, "threshold_source": "default",
                                        "reason": result.reason}


def test_calibration_round_trips_through_json_and_reads_old_bundles() -> None:
    """to_dict → JSON → from_dict is lossless; {"temperature": null} and None read as unfitted."""
    z, labels = _sample(n=2000, seed=6)
    fitted = cal.calibrate(_softmax(3.0 * z), labels, flag_error_rate=0.6)
    again = cal.Calibration.from_dict(json.loads(json.dumps(fitted.to_dict(), allow_nan=False)))
    assert again == fitted and again.threshold_rule["flag_error_rate"] == 0.6
    assert again.output_metadata()["threshold_source"] == "calibration"
    for old in ({"temperature": None}, None):
        parsed = cal.Calibration.from_dict(old)
        assert not parsed.fitted and parsed.threshold == 0.5 and "exported before calibration" in parsed.reason


# -- a bundle with a temperature, loaded by the scorer -------------------------------------------
def test_bundle_round_trip_and_the_scorer_applies_the_temperature(tmp_path: Path, one_torch_thread) -> None:
    """save_bundle(calibration=) is kept by model.json; the scorer's predictions are softmax(log p / T)
    of the uncalibrated ones, and an older bundle without a temperature scores as before."""
    torch.manual_seed(0)
    model = create_model("coresleep_tiny")
    z, labels = _sample(n=500, seed=7)
    fitted = cal.calibrate(_softmax(2.0 * z), labels)
    save_bundle(model, tmp_path / "calibrated", name="coresleep_tiny", sequence_length=5,
                calibration=fitted.to_dict())
    save_bundle(model, tmp_path / "old", name="coresleep_tiny", sequence_length=5)
    _, info = load_bundle(tmp_path / "calibrated")
    assert cal.Calibration.from_dict(info.calibration) == fitted
    assert json.loads((tmp_path / "old" / "model.json").read_text())["calibration"] == {"temperature": None}

    rng = np.random.default_rng(0)
    signals = {m: rng.standard_normal((12, 3000)).astype(np.float32) for m in ("eeg", "eog")}
    present = np.ones((12, 2), bool)
    scorer = Scorer.load(str(tmp_path / "calibrated"), device="cpu", precision="fp32")
    old = Scorer.load(str(tmp_path / "old"), device="cpu", precision="fp32")
    assert scorer.calibration.temperature == pytest.approx(fitted.temperature)
    raw = scorer.predict(signals, present, calibrated=False)
    np.testing.assert_allclose(scorer.predict(signals, present),
                               cal.apply_temperature(raw, fitted.temperature), atol=1e-6)
    np.testing.assert_array_equal(old.predict(signals, present), raw)
    assert old.calibration.threshold == 0.5 and not old.calibration.fitted
    # The actors' copy (ScorerWeights → from_weights) keeps the calibration.
    rebuilt = Scorer.from_weights(scorer.weights(), device="cpu", precision="fp32")
    assert rebuilt.calibration == scorer.calibration
