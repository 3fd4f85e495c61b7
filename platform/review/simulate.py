"""What a review is worth: a simulated technician on nights whose true stages are known.

The technician corrects exactly the epochs shown, and is always right: the errors a review fixes
are the model's errors among the reviewed epochs.  :func:`review_gain` compares reviewing the
epochs the queue picks (:func:`somnray.review.queue.select_epochs`, the least certain) with
reviewing as many epochs drawn at random, averaged over several draws.  ``somnray bench review``
(``jobs/bench_review.py``) runs it on synthetic nights scored by a trained model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from somnray.data.hypnograms import hypnogram_to_epochs, read_hypnogram
from somnray.data.profiles import CohortProfile

from .queue import NightScores, queue_budget, select_epochs


@dataclass(frozen=True)
class ReviewGain:
    """Errors fixed by reviewing the least certain epochs vs random ones.

    Attributes
    ----------
    epochs, errors : int
        Scored epochs with a true stage, and the model's errors among them.
    reviewed : int
        Epochs reviewed by either strategy.
    fixed_uncertain : int
        Errors among the least certain ``reviewed`` epochs.
    fixed_random : float
        Mean errors among ``reviewed`` random epochs over ``draws`` draws.
    ratio : float
        ``fixed_uncertain / fixed_random`` (inf when random fixes none).
    accuracy_before, accuracy_uncertain, accuracy_random : float
        Accuracy of the hypnograms before review and after each review.
    draws : int
    """

    epochs: int
    errors: int
    reviewed: int
    fixed_uncertain: int
    fixed_random: float
    ratio: float
    accuracy_before: float
    accuracy_uncertain: float
    accuracy_random: float
    draws: int

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return asdict(self)


def true_stages(hypnogram: str, profile: CohortProfile, n_epochs: int) -> np.ndarray:
    """The true stage of each of a night's first ``n_epochs`` epochs, from its scoring file
    (read with the profile's annotation settings, as ``somnray prepare`` reads it)."""
    spec = profile.annotations
    hyp = read_hypnogram(hypnogram, spec)
    labels, _ = hypnogram_to_epochs(hyp, n_epochs, spec.label_map, hypnogram, label_period=spec.label_period,
                                    min_purity=spec.min_purity, max_overrun_s=None)
    return labels.astype(np.int64)


def review_gain(nights: Sequence[NightScores], truths: Mapping[str, np.ndarray], *, fraction: float = 0.1,
                draws: int = 20, seed: int = 0) -> ReviewGain:
    """Simulate a technician reviewing ``fraction`` of the scored epochs (module docstring).

    ``truths`` maps a recording id to the true stage of each epoch position (-1 unknown); epochs
    without a true stage are left out of both strategies.
    """
    known = []
    for n in nights:
        truth = np.asarray(truths[n.recording_id])
        t = np.where(n.epoch < truth.size, truth[np.minimum(n.epoch, truth.size - 1)], -1)
        # Keep only epochs with a true stage: the queue must not pick what cannot be judged.
        known.append((NightScores(n.recording_id, n.epoch, n.onset_s, np.where(t >= 0, n.stage, -1), n.confidence,
                                  n.margin, n.entropy, n.available, n.domain_shift, n.domain_reasons,
                                  n.low_confidence_threshold), t))
    wrong = [(n.stage != t) & n.scored for n, t in known]
    scored = np.concatenate([n.scored for n, _ in known])
    errors_flat = np.concatenate(wrong)[scored]
    n_epochs, n_errors = int(scored.sum()), int(errors_flat.sum())
    budget = queue_budget(n_epochs, fraction=fraction)
    fixed = sum(int(wrong[i][r]) for i, r in select_epochs([n for n, _ in known], budget))
    rng = np.random.default_rng(seed)
    random_fixed = float(np.mean([errors_flat[rng.choice(n_epochs, budget, replace=False)].sum()
                                  for _ in range(draws)])) if n_epochs else 0.0
    acc = lambda e: 1.0 - e / n_epochs if n_epochs else float("nan")  # noqa: E731
    return ReviewGain(n_epochs, n_errors, budget, fixed, random_fixed,
                      fixed / random_fixed if random_fixed else float("inf"),
                      acc(n_errors), acc(n_errors - fixed), acc(n_errors - random_fixed), draws)


__all__ = ["ReviewGain", "review_gain", "true_stages"]
