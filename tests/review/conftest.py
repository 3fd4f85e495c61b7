"""Fixtures of the review tests: a scored synthetic cohort (real EDF files, real ``somnray score`` outputs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # scoring_factory, as tests/tune does

from scoring_factory import make_run  # noqa: E402

#: Nights of the scored test cohort (1 h each).
N_NIGHTS = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A coresleep_tiny bundle with random weights, nominally trained on sleep-edf."""
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def cohort(synth_cohort):
    """Three 1-h Sleep-EDF-like synthetic nights (real EDF files and hypnograms)."""
    return synth_cohort("sleep-edf", n_nights=N_NIGHTS, hours=1.0, seed=3)


@pytest.fixture(scope="module")
def scored_once(ray_local, run_dir, cohort, tmp_path_factory) -> Path:
    """The cohort scored by ``score_cohort`` (made once per module; copy it before writing a review)."""
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    out = tmp_path_factory.mktemp("scored") / "out"
    result = score_cohort(str(run_dir), str(cohort.manifest), str(out), CohortScoringOptions(workers=1, progress=False))
    assert result.rejected == 0, result.rejects
    return out


@pytest.fixture
def scored(scored_once, tmp_path) -> Path:
    """A private copy of the scored cohort, for a test to review and correct."""
    return Path(shutil.copytree(scored_once, tmp_path / "scored"))
