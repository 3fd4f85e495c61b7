"""``somnray bench review``: what reviewing the least certain epochs is worth, with a simulated technician.

1. A ``coresleep_tiny`` model trained with its tiny recipe on synthetic Sleep-EDF-like nights
   (``somnray train``'s path: Ray Train, DeepSpeed on CPU).
2. Two unseen cohorts scored with ``somnray score``'s code: more nights of the same site, and nights
   of a second site (``--site b``, a domain shift, where the model errs more).
3. On each, a technician who corrects exactly the epochs shown and is always right (the synthetic
   truth): reviewing the 10 % least certain epochs (the ``somnray review`` queue) against reviewing
   10 % drawn at random (mean of 20 draws) — :func:`somnray.review.simulate.review_gain`.

Target: the queue fixes at least twice as many errors as random review on the training site.  Site B
shows where that ends: a model confidently wrong under a domain shift (docs/review.md).
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

from .benchreport import BenchResult, stopwatch

#: Share of the scored epochs a technician reviews.
FRACTION = 0.1


def measure_cohort(run_uri: str, cohort: Path, out: Path, *, fraction: float = FRACTION, draws: int = 20):
    """Score a synthetic cohort with ``run_uri`` and simulate its review; returns the ReviewGain."""
    from somnray.data.manifest import parse_manifest_csv
    from somnray.data.profiles import load_profile
    from somnray.review.queue import night_scores, read_scored_nights
    from somnray.review.simulate import review_gain, true_stages
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    manifest = cohort / "manifest.csv"
    score_cohort(run_uri, str(manifest), str(out), CohortScoringOptions(workers=1, progress=False))
    profile = load_profile("sleep-edf")
    hypnograms = {e.recording_id: e.hypnogram for e in parse_manifest_csv(manifest.read_text(), source=str(manifest))}
    nights, _ = read_scored_nights(str(out))
    scores = [night_scores(n.table, n.meta, n.stats) for n in nights]
    truths = {s.recording_id: true_stages(str(cohort / hypnograms[s.recording_id]), profile,
                                          int(s.epoch.max()) + 1) for s in scores}
    return review_gain(scores, truths, fraction=fraction, draws=draws)


def run(quick: bool = False, workdir: str | None = None) -> BenchResult:
    """Train, score two cohorts, simulate the review; the table is errors fixed per strategy."""
    from somnray.core.session import ensure_ray
    from somnray.data import prepare_cohort
    from somnray.data.profiles import load_profile
    from somnray.data.synth import SiteConfig, synthesize_cohort
    from somnray.train.config import load_experiment
    from somnray.train.driver import run_experiment

    train_nights, test_nights, hours, steps = (8, 4, 1.5, 80) if quick else (12, 8, 2.0, 150)
    ensure_ray()
    root = Path(workdir or tempfile.mkdtemp(prefix="somnray-bench-review-"))
    rows = []
    with stopwatch() as took:
        synthesize_cohort("sleep-edf", root / "train", train_nights, seed=0, hours=hours)
        prepared = prepare_cohort(str(root / "train" / "manifest.csv"), load_profile("sleep-edf"),
                                  f"file://{root / 'store'}", num_workers=2, progress=False)
        recipe = str(resources.files("somnray.jobs").joinpath("configs", "coresleep_tiny.yaml"))
        cfg = load_experiment(recipe, [f"data.dataset={prepared.dataset_uri}", f"optim.max_steps={steps}",
                                       f"storage.uri={root / 'runs'}", "storage.name=coresleep-tiny"])
        run_experiment(cfg)
        for name, site, seed in (("same site", "a", 11), ("site B (domain shift)", "b", 7)):
            folder = root / f"test-{site}"
            synthesize_cohort("sleep-edf", folder, test_nights, seed=seed, hours=hours, site=SiteConfig.preset(site))
            g = measure_cohort(cfg.run_uri, folder, root / f"scored-{site}")
            rows.append({"cohort": name, "epochs": g.epochs, "model errors": g.errors,
                         "reviewed": g.reviewed, "fixed: least certain": g.fixed_uncertain,
                         "fixed: random (mean)": f"{g.fixed_random:.1f}", "ratio": f"{g.ratio:.2f}",
                         "accuracy before → after": f"{100 * g.accuracy_before:.1f} → "
                                                    f"{100 * g.accuracy_uncertain:.1f} "
                                                    f"(random {100 * g.accuracy_random:.1f})"})
    notes = [f"coresleep_tiny trained {steps} steps on {train_nights} synthetic Sleep-EDF-like nights of {hours:g} h; "
             f"each test cohort: {test_nights} unseen nights; the technician reviews {FRACTION:.0%} of the scored "
             f"epochs and corrects every error shown; random = mean of 20 draws; {took['s']:.0f} s in all."]
    return BenchResult(name="review", title="Review: least certain vs random epochs (simulated technician)",
                       table=rows, notes=notes)
