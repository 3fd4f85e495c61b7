"""``somnray score``: stage recordings with a trained model (Ray Data batch inference, no Serve).

Examples::

    somnray score runs/coresleep-shhs night.edf --out scored/
    somnray score s3://bucket/runs/r1 cohort/manifest.csv more-nights/ --out s3://bucket/scored \\
        --workers 4 --plots

RUN_URI is a training run (its ``model/`` bundle), a bundle folder, or a registered model
(``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, with ``MLFLOW_TRACKING_URI`` set).  INPUTs are EDF/EDF+/BDF
files, folders (paired by the cohort profile) and manifests; several may be given.  Each night
gets ``<out>/<recording_id>/`` (hypnogram CSV, EDF+ annotations, BIDS events, per-epoch Parquet,
sleep statistics JSON, PNG with --plots) and the run writes ``cohort_summary.csv/.parquet``.
A rerun skips nights already scored, so an interrupted run is completed by running it again;
nights scored earlier by another model (other weights) are scored again, and the run says so.

Exit status: 0 every recording scored (or already scored), 2 some rejected (listed with their
reasons; the others are written), 1 a fatal error (no model bundle, unknown profile, bad input).
The last line printed is the output URI, for scripts.
"""

from __future__ import annotations

import argparse


#: One line for ``somnray --help``.
HELP = "score recordings with a trained model (hypnograms, statistics)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray score`` (also parsed by ``somnray submit score``)."""
    p.add_argument("run", metavar="RUN_URI",
                   help="training run (with model/), model bundle folder (path or URI), or "
                        "models:/NAME/VERSION | models:/NAME@ALIAS")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="EDF/BDF file, folder of recordings, or manifest CSV/Parquet")
    p.add_argument("--out", required=True, metavar="URI",
                   help="output root (path, file://, s3://bucket/prefix, ...)")
    p.add_argument("--profile", default=None, metavar="NAME|PATH",
                   help="cohort profile (default: the manifest's, else the model's training profile)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="scoring actors, each holding the model (default: one per GPU, or half "
                        "the CPUs)")
    p.add_argument("--plots", action="store_true", help="also write hypnogram and cohort PNGs")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="window stride in epochs (default: the model's window length; 1 averages "
                        "every window position)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the actors run the model (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="arithmetic (default: bf16 on AMX CPUs and bf16 GPUs, else fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score the inputs; returns 0, or 2 when some recordings were rejected."""
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    options = CohortScoringOptions(profile=args.profile, workers=args.workers, plots=args.plots,
                                   stride=args.stride, device=args.device, precision=args.precision,
                                   progress=not args.no_progress)
    result = score_cohort(args.run, args.inputs, args.out, options)
    print(f"{result.total} recording(s): {result.scored} scored, {result.skipped} already scored, "
          f"{result.rejected} rejected ({result.seconds:.1f} s)")
    if result.rescored:
        print(f"  re-scored {result.rescored} night(s) whose outputs came from another model")
    for r in result.rejects:
        print(f"  rejected {r['recording_id']}: {r['reason']}")
    print(result.out_uri)
    return result.exit_code
