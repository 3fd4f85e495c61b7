"""``somnray split``: write a subject-wise split of a prepared dataset to ``splits/<name>.json``.

Examples::

    somnray split s3://bucket/prepared/shhs-1a2b3c4d5e6f --ratio 0.3 --val-subjects 100 --seed 0
    somnray split prepared/sleep-edf-0123456789ab --kfold 20 --val-subjects 2

Only recordings that were prepared (not rejected) are split; no signal is read.  The last line
printed is the URI of the split file.
"""

from __future__ import annotations

import argparse


#: One line for ``somnray --help``.
HELP = "write a subject-wise ratio or k-fold split beside a prepared dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray split``."""
    p.add_argument("dataset", metavar="DATASET_URI", help="a prepared dataset folder")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--kfold", type=int, metavar="K", help="subject-wise K-fold cross-validation")
    how.add_argument("--ratio", type=float, metavar="TEST",
                     help="test fraction of the non-validation subjects (0.3 = 70:30)")
    how.add_argument("--manifest", action="store_true",
                     help="the fixed split of the manifest's 'split' column")
    p.add_argument("--val-subjects", type=int, default=None, metavar="N",
                   help="validation subjects (ratio: default 100; k-fold: per fold, default 2)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--name", default=None, help="split name (file splits/<name>.json)")


def run(args: argparse.Namespace) -> int:
    """Compute and write the split; returns 0."""
    from somnray.data.dataset import PreparedDataset
    from somnray.data.splits import kfold_split, manifest_split, ratio_split

    dataset = PreparedDataset.open(args.dataset)
    entries = dataset.entries()
    if args.kfold is not None:
        val = 2 if args.val_subjects is None else args.val_subjects
        splits = kfold_split(entries, args.kfold, seed=args.seed, n_val_subjects=val, name=args.name)
    elif args.ratio is not None:
        val = 100 if args.val_subjects is None else args.val_subjects
        splits = [ratio_split(entries, test_fraction=args.ratio, n_val_subjects=val,
                              seed=args.seed, name=args.name)]
    else:
        splits = [manifest_split(entries, name=args.name or "manifest")]
    uri = dataset.write_splits(splits, name=args.name)
    for s in splits:
        fold = f" fold {s.fold}" if s.fold is not None else ""
        print(f"{s.name}{fold}: train {len(s.train)} rec / {len(s.train_subjects)} subj, "
              f"val {len(s.val)} / {len(s.val_subjects)}, test {len(s.test)} / {len(s.test_subjects)}")
    print(uri)
    return 0
