"""``somnray evaluate``: score trained runs under missing-modality scenarios.

Examples::

    somnray evaluate runs/coresleep-shhs --data s3://bucket/prepared/shhs-1a2b3c4d5e6f
    somnray evaluate runs/cim-fold0 runs/cim-fold1 runs/cim-fold2 --data prepared/sleep-edf-… \\
        --scenarios all eeg_only eog_only missing --workers 4

Each run is scored on the test part of its own split (the one recorded in its model bundle,
else the dataset manifest's split column, else every recording; ``--split`` overrides it). With
several runs (folds) the table gives the pooled metrics and a per-fold mean ± std table follows.
Scenarios: ``all``, ``<m>_only``, ``missing_<rate>``, ``missing_iid_<rate>``,
``noisy_<m>[_snr<dB>]``, ``flat_<m>``, or the groups ``default``, ``only``, ``missing``,
``noisy``, ``flat``.

The report (``report.md``, ``report.json``, confusion matrices, the missing-rate curve) is
written to ``<first run>/evaluation/<dataset>/`` (or ``--out``). Exit status: 0 done, 1 a bad run
URI, dataset, split or scenario (the message says which).
"""

from __future__ import annotations

import argparse


#: One line for ``somnray --help``.
HELP = "score trained runs under missing-modality scenarios (tables + figures)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray evaluate``."""
    from somnray.jobs.cli import positive_int

    p.add_argument("runs", nargs="+", metavar="RUN_URI",
                   help="run folder(s) (<storage.uri>/<storage.name>), model bundle folder(s) or "
                        "models:/NAME/VERSION | models:/NAME@ALIAS (give --out); several runs are "
                        "folds, pooled")
    p.add_argument("--data", required=True, metavar="URI", help="prepared dataset (path or URI)")
    p.add_argument("--split", default=None, metavar="NAME|PATH",
                   help="'all', 'manifest', a split stored with the dataset, or a split JSON file "
                        "(default: each run's recorded split)")
    p.add_argument("--fold", type=int, default=0, metavar="N",
                   help="fold of a multi-fold --split file for the first run (run i takes N+i)")
    p.add_argument("--scenarios", nargs="+", default=None, metavar="NAME",
                   help="scenarios or groups (default: every scenario that fits the model)")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="window stride in epochs (default: the window length)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="Ray actors scoring recordings (default: in-process; >1 starts local Ray "
                        "or uses RAY_ADDRESS)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="windows per forward pass")
    p.add_argument("--out", default=None, metavar="URI",
                   help="report folder (default: <first run>/evaluation/<dataset>)")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; print the scenario table; returns 0."""
    from somnray.train.evaluate import EvaluationOptions, EvaluationRun, evaluate_run

    options = EvaluationOptions(split=args.split, fold=args.fold, scenarios=args.scenarios, stride=args.stride,
                                workers=args.workers, batch_size=args.batch_size, out_uri=args.out)
    report = evaluate_run([EvaluationRun(uri) for uri in args.runs], args.data, options)
    n_rec = sum(len(f.recordings) for f in report.folds)
    print(f"{report.model} on {report.dataset}: {n_rec} test recording(s), {len(report.folds)} fold(s)")
    for i, fold in enumerate(report.folds):
        print(f"  fold {i}: {len(fold.recordings)} recording(s) from {fold.selection.source}")
    print()
    print(report.table())
    if len(report.folds) > 1:
        print("\nPer fold, mean ± std:\n")
        print(report.fold_table())
    if "report.md" in report.written:
        print(f"\nreport: {report.written['report.md']}")
    return 0
