"""Calibrated uncertainty: temperature scaling of per-epoch probabilities, and what it measures.

A model's softmax is usually over-confident.  Temperature scaling (Guo et al., "On Calibration of
Modern Neural Networks", ICML 2017) divides the logits by one scalar ``T`` fitted on held-out
labelled epochs; the scorer's outputs are a softmax, so ``softmax(log p / T)`` is the same thing
computed from probabilities (:func:`apply_temperature`).  ``T > 1`` softens over-confident
probabilities, ``T < 1`` sharpens timid ones; the argmax, and so every stage, never changes.

This module is the maths, in numpy only (the per-night output writers import it):

=====================================  ==========================================================
:func:`fit_temperature`                ``T`` minimising the validation negative log-likelihood
:func:`expected_calibration_error`     ECE over equal-width bins of the top probability
:func:`reliability_bins`               the reliability diagram's data (count, confidence, accuracy)
:func:`apply_temperature`              ``softmax(log p / T)``
:func:`low_confidence_threshold`       the flag threshold derived from calibrated validation epochs
:func:`epoch_uncertainty`              per-epoch confidence, margin and normalised entropy
:func:`calibrate`                      all of the above on a validation set: a :class:`Calibration`
=====================================  ==========================================================

:class:`Calibration` is what a bundle's ``model.json`` ``calibration`` holds.  The temperature is
applied in one place, :meth:`somnray.scoring.scorer.Scorer.calibrate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ``method`` of a fitted calibration.
METHOD = "temperature"
#: Equal-width confidence bins of the ECE and the reliability diagram.
DEFAULT_BINS = 15
#: The flag rule's default: a low-confidence epoch is, on validation, wrong at least this often.
DEFAULT_FLAG_ERROR_RATE = 0.5
#: Labelled validation epochs below which no temperature is fitted (too few to estimate one).
DEFAULT_MIN_EPOCHS = 100
#: The range the derived threshold is clipped to: below 0.3 almost nothing of five classes can be
#: flagged, above 0.9 almost every epoch would be.
THRESHOLD_RANGE = (0.3, 0.9)
#: Search interval of the temperature.
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: The ``low_confidence`` threshold of a model without a fitted calibration (the historical constant).
UNCALIBRATED_THRESHOLD = 0.5
#: Probabilities are clipped to this before the log: a float32 softmax can underflow to exactly 0.
PROBABILITY_FLOOR = 1e-12
#: The flag rule, in words (recorded in the bundle beside its target).
FLAG_RULE = ("the largest calibrated top probability t such that the validation epochs with calibrated "
             "top probability below t are wrong at least a target fraction of the time (midway between "
             "two observed confidences), clipped to [{lo}, {hi}]")
_N_CLASSES = 5


# -- per-epoch quantities -----------------------------------------------------------------------
def apply_temperature(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """``softmax(log p / T)`` row by row (float32); ``T`` None or 1 returns the input unchanged.

    Rows that are not finite (an epoch without model output) stay as they are.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if temperature is None or temperature == 1.0:
        return p
    z = np.log(np.clip(p.astype(np.float64), PROBABILITY_FLOOR, 1.0)) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    finite = np.isfinite(p).all(axis=-1)
    return np.where(finite[..., None], out, p)


def epoch_uncertainty(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Per-epoch ``confidence`` (top probability), ``margin`` (top minus second) and ``entropy``.

    ``entropy`` is the Shannon entropy divided by ``ln 5``: 0 for a one-hot row, 1 for the uniform
    one, so it reads the same for any model.  Rows that are not finite give NaN.

    Returns
    -------
    dict of str to ndarray
        Three ``(n,)`` float32 arrays.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, _N_CLASSES)
    finite = np.isfinite(p).all(axis=1)
    q = np.where(finite[:, None], p, 1.0 / _N_CLASSES)
    top2 = np.sort(q, axis=1)[:, -2:]
    safe = np.clip(q, PROBABILITY_FLOOR, 1.0)
    entropy = -(q * np.log(safe)).sum(axis=1) / math.log(_N_CLASSES)
    nan = np.float64("nan")
    return {"confidence": np.where(finite, top2[:, 1], nan).astype(np.float32),
            "margin": np.where(finite, top2[:, 1] - top2[:, 0], nan).astype(np.float32),
            "entropy": np.where(finite, np.clip(entropy, 0.0, 1.0), nan).astype(np.float32)}


# -- fitting and measuring ----------------------------------------------------------------------
def _labelled(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a label in 0..4 and finite probabilities, as float64, and their labels."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, _N_CLASSES)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{p.shape[0]} probability rows but {y.shape[0]} labels")
    keep = (y >= 0) & (y < _N_CLASSES) & np.isfinite(p).all(axis=1)
    return p[keep], y[keep]


def _nll(log_p: np.ndarray, labels: np.ndarray, inverse_t: float) -> float:
    """Mean negative log-likelihood of ``softmax(inverse_t · log p)``."""
    z = inverse_t * log_p
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS, tol: float = 1e-7) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(log p / T)`` on labelled epochs.

    The NLL is convex in ``1/T`` (a log-sum-exp of functions linear in it, minus a linear term), so
    it has one minimum over the bounded interval, found by a golden-section search on ``log T``:
    deterministic, no gradient, no random start.

    Parameters
    ----------
    probabilities : ndarray
        ``(n, 5)`` softmax outputs (uncalibrated).
    labels : ndarray
        ``(n,)`` stage codes; -1 (and rows without finite probabilities) are ignored.
    bounds : (float, float)
        Search interval of ``T``.
    tol : float
        Width of the final bracket on ``log T``.

    Raises
    ------
    ValueError
        No labelled epoch.
    """
    p, y = _labelled(probabilities, labels)
    if len(y) == 0:
        raise ValueError("no labelled epoch to fit a temperature on")
    log_p = np.log(np.clip(p, PROBABILITY_FLOOR, 1.0))
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)

    def f(log_t: float) -> float:
        return _nll(log_p, y, math.exp(-log_t))

    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float(math.exp((lo + hi) / 2.0))


def confidence_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS
                    ) -> list[dict[str, Any]]:
    """The reliability diagram: epochs binned by top probability in ``n_bins`` equal-width bins.

    Bin ``k`` holds confidences in ``(k/B, (k+1)/B]`` (the first also holds 0).

    Parameters
    ----------
    confidence : ndarray
        ``(n,)`` top probability of each labelled epoch.
    correct : ndarray
        ``(n,)`` bool: its argmax is its label.
    n_bins : int
        Number of bins.

    Returns
    -------
    list of dict
        Per bin ``lower``, ``upper``, ``count``, ``confidence`` (mean top probability) and
        ``accuracy`` (fraction right); the last two are None for an empty bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    bins = []
    for k in range(n_bins):
        inside = index == k
        count = int(inside.sum())
        bins.append({"lower": k / n_bins, "upper": (k + 1) / n_bins, "count": count,
                     "confidence": float(conf[inside].mean()) if count else None,
                     "accuracy": float(ok[inside].mean()) if count else None})
    return bins


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS
                     ) -> list[dict[str, Any]]:
    """:func:`confidence_bins` of ``(n, 5)`` probabilities against labels (-1 ignored)."""
    p, y = _labelled(probabilities, labels)
    return confidence_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def ece_of_bins(bins: list[Mapping[str, Any]]) -> float | None:
    """Expected calibration error of :func:`reliability_bins`: ``Σ n_k/N · |acc_k − conf_k|``."""
    total = sum(int(b["count"]) for b in bins)
    if total == 0:
        return None
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               n_bins: int = DEFAULT_BINS) -> float | None:
    """ECE (a fraction, 0 = calibrated) over equal-width bins of the top probability; None: no label.

    The average, weighted by the epochs in each bin, of the gap between the bin's accuracy and its
    mean top probability: how far "the model says 80 %" is from "right 80 % of the time".
    """
    return ece_of_bins(reliability_bins(probabilities, labels, n_bins))


def low_confidence_threshold(confidence: np.ndarray, correct: np.ndarray, *,
                             error_rate: float = DEFAULT_FLAG_ERROR_RATE,
                             clip: tuple[float, float] = THRESHOLD_RANGE) -> float:
    """The ``low_confidence`` threshold: flagged epochs are wrong at least ``error_rate`` of the time.

    Sort the (calibrated) validation epochs by top probability; the threshold ``t`` is the largest
    cut such that the epochs below it are wrong at least ``error_rate`` of the time, placed midway
    between the last epoch below and the first above, then clipped to ``clip``.  With the default
    0.5 a flagged epoch is, on validation, more likely wrong than right as a group, which is what
    the constant 0.5 meant for a calibrated model.  No cut qualifies (the model is right even on
    its least confident epochs): the lower end of ``clip``; every cut qualifies: the upper end.

    Parameters
    ----------
    confidence : ndarray
        ``(n,)`` calibrated top probability of each labelled validation epoch.
    correct : ndarray
        ``(n,)`` bool: its argmax is its label.
    error_rate : float
        In (0, 1): the target error rate of the flagged epochs.
    clip : (float, float)
        Range of the threshold.
    """
    if not 0.0 < error_rate < 1.0:
        raise ValueError(f"error_rate must be in (0, 1), got {error_rate}")
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    wrong = ~np.asarray(correct, dtype=bool).reshape(-1)
    if conf.size == 0:
        return float(clip[0])
    order = np.argsort(conf, kind="stable")
    c, w = conf[order], wrong[order]
    rate = np.cumsum(w) / np.arange(1, c.size + 1)
    # A cut after position k only exists where the next epoch is strictly more confident.
    ok = rate >= error_rate
    ok[:-1] &= c[:-1] < c[1:]
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return float(clip[0])
    k = int(hits[-1])
    t = 1.0 if k == c.size - 1 else (c[k] + c[k + 1]) / 2.0
    return float(np.clip(t, clip[0], clip[1]))


# -- the bundle's calibration -------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """A bundle's ``calibration``: the fitted temperature, its measurements and the flag threshold.

    Attributes
    ----------
    temperature : float or None
        None: not fitted (``reason`` says why); scoring then uses ``T = 1`` and the threshold
        :data:`UNCALIBRATED_THRESHOLD`.
    method : str or None
        ``temperature`` when fitted.
    n_epochs : int
        Labelled validation epochs it was fitted on.
    ece_before, ece_after : float or None
        ECE of the validation epochs before and after scaling.
    low_confidence_threshold : float or None
        The flag threshold on calibrated top probabilities (:func:`low_confidence_threshold`).
    threshold_rule : dict
        ``rule`` in words, ``flag_error_rate`` (the target), ``range``.
    reliability : dict
        ``before`` and ``after``: :func:`reliability_bins` of the validation epochs.
    n_bins : int
        Bins of the ECE and the diagram.
    reason : str or None
        Why there is no temperature.
    """

    temperature: float | None = None
    method: str | None = None
    n_epochs: int = 0
    ece_before: float | None = None
    ece_after: float | None = None
    low_confidence_threshold: float | None = None
    threshold_rule: dict[str, Any] = field(default_factory=dict)
    reliability: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    n_bins: int = DEFAULT_BINS
    reason: str | None = None

    @property
    def fitted(self) -> bool:
        """A temperature was fitted."""
        return self.temperature is not None

    @property
    def applied_temperature(self) -> float:
        """The temperature scoring divides by (1 when none was fitted)."""
        return float(self.temperature) if self.temperature is not None else 1.0

    @property
    def threshold(self) -> float:
        """The ``low_confidence`` threshold scoring uses (the fallback constant when not fitted)."""
        if self.low_confidence_threshold is None:
            return UNCALIBRATED_THRESHOLD
        return float(self.low_confidence_threshold)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``model.json``."""
        return {"temperature": self.temperature, "method": self.method, "n_epochs": self.n_epochs,
                "ece_before": self.ece_before, "ece_after": self.ece_after,
                "low_confidence_threshold": self.low_confidence_threshold,
                "threshold_rule": dict(self.threshold_rule), "n_bins": self.n_bins,
                "reliability": {k: [dict(b) for b in v] for k, v in self.reliability.items()},
                "reason": self.reason}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> "Calibration":
        """Parse ``model.json``'s ``calibration``; ``{"temperature": null}`` and None (older bundles) too."""
        doc = dict(doc or {})
        temperature = doc.get("temperature")
        threshold = doc.get("low_confidence_threshold")
        reason = doc.get("reason")
        if temperature is None and reason is None:
            reason = "no calibration recorded (bundle exported before calibration was fitted)"
        return cls(temperature=None if temperature is None else float(temperature), method=doc.get("method"),
                   n_epochs=int(doc.get("n_epochs") or 0), ece_before=doc.get("ece_before"),
                   ece_after=doc.get("ece_after"),
                   low_confidence_threshold=None if threshold is None else float(threshold),
                   threshold_rule=dict(doc.get("threshold_rule") or {}),
                   reliability={k: [dict(b) for b in v] for k, v in (doc.get("reliability") or {}).items()},
                   n_bins=int(doc.get("n_bins") or DEFAULT_BINS), reason=reason)

    def output_metadata(self) -> dict[str, Any]:
        """What every scored night records about it (``calibration`` in the outputs' metadata).

        ``fitted``, the ``temperature`` applied (1 when none was fitted), where the
        ``low_confidence`` threshold (:attr:`threshold`, recorded beside it) came from
        (``calibration`` or ``default``), and why there is no temperature (``reason``).
        """
        return {"fitted": self.fitted, "temperature": self.applied_temperature,
                "threshold_source": "calibration" if self.low_confidence_threshold is not None else "default",
                "reason": self.reason}


def not_fitted(reason: str, n_epochs: int = 0) -> Calibration:
    """A :class:`Calibration` without a temperature, saying why."""
    return Calibration(n_epochs=int(n_epochs), reason=reason)


def calibrate(probabilities: np.ndarray, labels: np.ndarray, *, n_bins: int = DEFAULT_BINS,
              flag_error_rate: float = DEFAULT_FLAG_ERROR_RATE, min_epochs: int = DEFAULT_MIN_EPOCHS
              ) -> Calibration:
    """Fit the temperature on labelled (validation) epochs and measure it.

    Parameters
    ----------
    probabilities : ndarray
        ``(n, 5)`` uncalibrated softmax outputs.
    labels : ndarray
        ``(n,)`` stage codes, -1 ignored.
    n_bins : int
        Bins of the ECE and the reliability diagram.
    flag_error_rate : float
        Target of the ``low_confidence`` rule (:func:`low_confidence_threshold`).
    min_epochs : int
        Fewer labelled epochs than this: no temperature (the result says why).

    Returns
    -------
    Calibration
    """
    p, y = _labelled(probabilities, labels)
    if len(y) < max(int(min_epochs), 1):
        return not_fitted(f"{len(y)} labelled validation epoch(s), fewer than the {int(min_epochs)} "
                          f"needed to fit a temperature", len(y))
    temperature = fit_temperature(p, y)
    scaled = apply_temperature(p, temperature).astype(np.float64)
    before, after = reliability_bins(p, y, n_bins), reliability_bins(scaled, y, n_bins)
    threshold = low_confidence_threshold(scaled.max(axis=1), scaled.argmax(axis=1) == y,
                                         error_rate=flag_error_rate)
    rule = {"rule": FLAG_RULE.format(lo=THRESHOLD_RANGE[0], hi=THRESHOLD_RANGE[1]),
            "flag_error_rate": float(flag_error_rate), "range": list(THRESHOLD_RANGE)}
    return Calibration(temperature=temperature, method=METHOD, n_epochs=int(len(y)),
                       ece_before=ece_of_bins(before), ece_after=ece_of_bins(after),
                       low_confidence_threshold=threshold, threshold_rule=rule,
                       reliability={"before": before, "after": after}, n_bins=int(n_bins))


__all__ = ["Calibration", "DEFAULT_BINS", "DEFAULT_FLAG_ERROR_RATE", "DEFAULT_MIN_EPOCHS", "FLAG_RULE", "METHOD",
           "TEMPERATURE_BOUNDS", "THRESHOLD_RANGE", "UNCALIBRATED_THRESHOLD", "apply_temperature", "calibrate",
           "confidence_bins", "ece_of_bins", "epoch_uncertainty", "expected_calibration_error",
           "fit_temperature", "low_confidence_threshold", "not_fitted", "reliability_bins"]
