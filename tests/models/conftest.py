"""Model tests run torch on one thread.

Their batches are tiny, so a second intra-op thread buys nothing and, when the other core is busy
(a Ray worker, a parallel test), synchronising two threads made steps 10× slower.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module (and its module fixtures) on one torch thread."""
