"""Model tests run torch on one thread.

Their batches are tiny, so a second intra-op thread buys nothing and, when the other core is busy
(a Ray worker, a parallel test), synchronising two threads made steps 10× slower.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
