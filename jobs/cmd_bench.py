"""``somnray bench``: benchmarks whose results go to ``docs/benchmarks.md``.

Timing targets are measured here, never asserted by timed tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BENCHMARKS = ("prepare", "models", "score", "train", "finetune", "review")
#: Benchmarks ``all`` leaves out: they need hardware a CPU machine lacks.
HARDWARE_BENCHMARKS = ("gpu",)
#: Benchmarks run only by name (``all`` leaves them out): the soak takes half an hour.
LONG_BENCHMARKS = ("soak",)


#: One line for ``somnray --help``.
HELP = "run a benchmark and update docs/benchmarks.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray bench``."""
    p.add_argument("which", choices=BENCHMARKS + HARDWARE_BENCHMARKS + LONG_BENCHMARKS + ("all",),
                   help="benchmark to run ('all' runs every CPU benchmark but the half-hour 'soak'; 'gpu' "
                        "needs CUDA and exits 1 without it)")
    p.add_argument("--results", default="bench-results", help="folder for the JSON results")
    p.add_argument("--docs", default="docs/benchmarks.md",
                   help="results page to update ('' to leave it alone)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (models)")
    p.add_argument("--nights", type=int, default=8, help="nights per configuration (prepare)")
    p.add_argument("--hours", type=float, default=8.0, help="length of each synthetic night (prepare)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (soak)")
    p.add_argument("--minutes", type=float, default=30.0, help="how long the clients post (soak)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark(s), print their tables and save them."""
    chosen = BENCHMARKS if args.which == "all" else (args.which,)
    docs = Path(args.docs) if args.docs else None
    for name in chosen:
        if name == "models":
            from . import bench_models

            result = bench_models.run(steps=1 if args.quick else args.steps,
                                      batch_scale=0.125 if args.quick else 1.0)
        elif name == "train":
            from . import bench_train

            result = bench_train.run(quick=args.quick)
        elif name == "finetune":
            from . import bench_finetune

            result = bench_finetune.run(quick=args.quick)
        elif name == "review":
            from . import bench_review

            result = bench_review.run(quick=args.quick)
        elif name == "score":
            from . import bench_score

            result = bench_score.run(quick=args.quick)
        elif name == "gpu":
            from . import bench_gpu

            result = bench_gpu.run(quick=args.quick)
        elif name == "soak":
            from . import bench_soak

            result = bench_soak.run(clients=4 if args.quick else args.clients,
                                    minutes=1.0 if args.quick else args.minutes, results=args.results)
        else:
            from . import bench_prepare

            result = bench_prepare.run(nights=2 if args.quick else args.nights,
                                       hours=1.0 if args.quick else args.hours)
        print(result.markdown())
        print(f"saved {result.save(args.results, docs)}")
    return 0
