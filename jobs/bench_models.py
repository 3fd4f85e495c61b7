"""``somnray bench models``: training-step time and FLOPs of each full-size architecture.

For every model at its paper's batch size (CoRe-Sleep 16 × 21 epochs, MC²SleepNet 32 × 21,
CIMSleepNet 64 × 25; docs/models.md §0.1) it measures the wall time of one forward + backward +
optimiser step on this machine's CPU, in fp32 and under bf16 autocast (CPUs with AMX run bf16
matmuls several times faster), and counts the forward FLOPs of one sequence with PyTorch's FLOP
counter (recurrent ops may be under-counted, as docs/models.md notes for CIMSleepNet).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from .benchreport import BenchResult


@dataclass(frozen=True)
class ModelBenchCase:
    """A model at the batch its paper trains with."""

    name: str
    batch: int
    length: int
    paper: str


CASES = (
    ModelBenchCase("coresleep", 16, 21, "Kontras et al. 2024: batch 16 × 21 epochs"),
    ModelBenchCase("mc2sleepnet", 32, 21, "Na et al. 2024: batch 32 × 21 epochs"),
    ModelBenchCase("cimsleepnet", 64, 25, "Shen et al. 2024: batch 64 × 25 epochs"),
)


def _batch(model, batch: int, length: int, seed: int = 0):
    import torch

    from somnray.models import EPOCH_SAMPLES, SleepBatch

    gen = torch.Generator().manual_seed(seed)
    signals = {m: torch.randn(batch, length, EPOCH_SAMPLES, generator=gen) for m in model.modalities}
    present = torch.ones(batch, length, len(model.modalities), dtype=torch.bool)
    labels = torch.randint(0, 5, (batch, length), generator=gen)
    return SleepBatch(signals, present, labels, tuple(model.modalities))


def flops_per_sequence(name: str, length: int) -> float:
    """Forward FLOPs of one sequence of ``length`` epochs (eval mode, batch of one)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from somnray.models import create_model

    model = create_model(name).eval()
    b = _batch(model, 1, length)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(b.signals, b.present)
    return float(counter.get_total_flops())


def step_seconds(name: str, batch: int, length: int, precision: str, steps: int, device: str = "cpu") -> float:
    """Median wall time of ``steps`` training steps on ``device`` (after one warm-up step)."""
    import torch

    from somnray.models import create_model

    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(name).to(dev).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b = _batch(model, batch, length).to(dev)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(b.signals, b.present)
            loss = model.loss(out, b)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # kernels are asynchronous: time their completion
        if i:  # the first step pays one-off allocation and kernel selection costs
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(steps: int = 3, models: tuple[str, ...] | None = None, batch_scale: float = 1.0,
        precisions: tuple[str, ...] = ("fp32", "bf16")) -> BenchResult:
    """Run the benchmark and return its result table.

    Parameters
    ----------
    steps : int
        Timed steps per model and precision (median reported).
    models : tuple of str, optional
        Subset of the case names; all three by default.
    batch_scale : float
        Multiply the paper batch sizes (a quick run uses e.g. 0.25).
    precisions : tuple of str
        ``fp32`` and/or ``bf16`` (autocast).
    """
    from somnray.models import create_model

    rows = []
    for case in CASES:
        if models and case.name not in models:
            continue
        batch = max(1, round(case.batch * batch_scale))
        n_params = create_model(case.name).num_parameters()
        gflops = flops_per_sequence(case.name, case.length) / 1e9
        row: dict[str, object] = {"model": case.name, "params (M)": n_params / 1e6,
                                  "batch × L": f"{batch} × {case.length}",
                                  "fwd GFLOPs / sequence": gflops}
        for precision in precisions:
            secs = step_seconds(case.name, batch, case.length, precision, steps)
            row[f"step s ({precision})"] = secs
            row[f"sequences/s ({precision})"] = batch / secs
        rows.append(row)
    notes = [f"One training step = forward + loss + backward + Adam update, median of {steps} steps "
             "after a warm-up step; batch sizes are the papers' (docs/models.md §0.1)"
             + (f" scaled by {batch_scale}" if batch_scale != 1 else "") + ".",
             "FLOPs: torch.utils.flop_counter on one sequence in eval mode (forward only; a "
             "training step costs roughly 3× that per sequence). Recurrent layers may be under-counted."]
    return BenchResult("models", "Models: training step time and FLOPs (CPU)", rows, notes)
