"""The measured claim of docs/review.md: with a trained tiny model, reviewing the 10 % least certain epochs
fixes at least twice as many errors as reviewing 10 % at random (simulated technician, synthetic truth).

It trains coresleep_tiny with Ray Train (minutes on a CPU), so it is ``slow`` (``make test-slow``) and
runs exactly what ``somnray bench review --quick`` runs; the default suite checks the same arithmetic on
calibrated made-up probabilities (test_review_units.py).
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_least_certain_epochs_hold_twice_the_errors_of_random_ones(ray_local, tmp_path, monkeypatch) -> None:
    """On both unseen cohorts (same site, shifted site B) the queue fixes ≥ 2× the errors random review fixes."""
    from somnray.jobs import bench_review

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    result = bench_review.run(quick=True, workdir=str(tmp_path))
    for row in result.table:
        assert row["model errors"] >= 20, row  # enough errors for a stable ratio
        assert float(row["ratio"]) >= 2.0, row
