"""ZeRO-1/2 on several workers give stage 0's update when the ranks' graphs differ.

A missing-modality batch skips branches of the model, so two ranks can run different autograd
graphs in the same step. ZeRO-1/2 reduce gradients as autograd produces them; without
:func:`somnray.train.loop.ForwardBackward`'s single parameter vector the ranks reduce different
sets (a gloo collective mismatch that aborts the worker) or the same set in different orders
(silently mixed-up gradients). Stage 0 zero-fills and reduces in parameter order: the reference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("zero_ranks.py")


def _step(tmp_path: Path, stage: int, accum: int) -> dict[str, torch.Tensor]:
    out = tmp_path / f"stage{stage}_accum{accum}.pt"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(stage), str(accum), str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=True)


@pytest.mark.integration
@pytest.mark.parametrize("accum", [1, 2])
def test_zero_stages_agree_when_rank_graphs_differ(tmp_path: Path, accum: int) -> None:
    """Weights after one step under ZeRO-1 and ZeRO-2 equal stage 0's (rank 1 has no EOG)."""
    reference = _step(tmp_path, 0, accum)
    for stage in (1, 2):
        weights = _step(tmp_path, stage, accum)
        assert weights.keys() == reference.keys()
        worst = max((weights[k] - reference[k]).abs().max().item() for k in reference)
        assert worst < 1e-6, f"ZeRO-{stage} (accum {accum}) differs from stage 0 by {worst:.3g}"
