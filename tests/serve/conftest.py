"""Fixtures shared by the scoring tests."""

from __future__ import annotations

import pytest
from scoring_factory import make_run  # tests/serve is on sys.path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run with a random coresleep_tiny bundle trained (nominally) on sleep-edf."""
    return make_run(tmp_path_factory.mktemp("run"))
