"""A real review for the review page's tests: synthetic nights scored by a tiny model, then
``somnray.review.queue.build_review`` over them (about 10 s, no Ray).

Imported by name (`from review_factory import ...`): tests/serve is on sys.path (no package)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scoring_factory import make_run

from somnray.review.queue import build_review
from somnray.scoring.scorer import Scorer
from somnray.serve.inference import score_recording
from somnray.serve.outputs import write_night_outputs


@dataclass(frozen=True)
class ReviewSite:
    """A storage root holding a scored cohort with its review, and the model that scored it."""

    root: Path      # the storage root the service is given
    scored: Path    # <root>/scored: the scored output root, with review/ inside
    run: Path       # the training run whose bundle scored the nights


def make_review_site(root: Path, cohort) -> ReviewSite:
    """Score every night of ``cohort`` (a ``synth_cohort``) into ``root/scored`` and build its review."""
    run = make_run(root / "run")
    scored = root / "scored"
    scorer = Scorer.load(str(run), device="cpu", precision="fp32")
    for entry in cohort.entries:
        night = score_recording(scorer, cohort.path / entry.psg, recording_id=entry.recording_id)
        write_night_outputs(night, str(scored))
    build_review(str(scored), str(cohort.manifest))
    return ReviewSite(root=root, scored=scored, run=run)
