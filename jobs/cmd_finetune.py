"""``somnray finetune``: adapt a trained model to new labelled data (a fine-tuning recipe from its weights).

Examples::

    somnray finetune runs/coresleep-shhs --data store/my-lab-<version>
    somnray finetune models:/coresleep-shhs@champion --data store/my-lab-<version>
    somnray finetune s3://bucket/runs/cim-edf20/model --data store/my-lab-<version> \\
        --freeze maim smccl_heads temporal_cnn --set optim.max_steps=300 --run-uri runs/cim-my-lab

SOURCE_URI is a training run (its ``model/`` bundle), a bundle folder, local or remote, or a
registered model version (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``; ``docs/registry.md``). The
recipe (default: the shipped ``finetune_local.yaml``, for 5-20 labelled nights) is completed
from the source: its architecture and constructor settings, its window length, and
``init_from: SOURCE_URI`` on the recipe's first phase; ``--data`` is the prepared dataset of the
new nights. ``--freeze`` names parameter groups kept fixed in that first phase (each
architecture's groups: ``docs/training.md``); ``--set`` changes anything else, as for ``somnray
train``. Before Ray starts, the source is checked against the new data: a modality the source
never saw is an error naming it; one the new data lack is allowed and said so.

Then it trains, exports and prints like ``somnray train`` (the last line is the run URI). Exit
status: 0 trained, 1 bad source, data or config, 3 training failed.
"""

from __future__ import annotations

import argparse
from importlib import resources

#: One line for ``somnray --help``.
HELP = "fine-tune a trained model (run, bundle or models:/ registered version) on new labelled data"
#: The shipped recipe used without ``--recipe``.
DEFAULT_RECIPE = "finetune_local.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray finetune``."""
    from somnray.jobs.cli import positive_int

    p.add_argument("source", metavar="SOURCE_URI",
                   help="training run (with model/), model bundle folder, models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, metavar="DATASET_URI", help="prepared dataset of the new nights")
    p.add_argument("--recipe", default=None, metavar="CONFIG",
                   help=f"fine-tuning recipe YAML (default: the shipped {DEFAULT_RECIPE})")
    p.add_argument("--freeze", nargs="*", default=None, metavar="GROUP",
                   help="parameter groups frozen in the recipe's first phase (replaces the recipe's; "
                        "--freeze with no group freezes nothing)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. optim.lr=5e-5 (repeatable; values are YAML)")
    p.add_argument("--run-uri", default=None, metavar="URI",
                   help="run folder (default <storage.uri>/<storage.name> of the recipe)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="Ray Train workers of every phase (scaling.num_workers)")


def run(args: argparse.Namespace) -> int:
    """Complete the recipe from the source, validate, fine-tune, export; returns 0."""
    from somnray.jobs.cmd_train import cli_overrides, train_and_report
    from somnray.train.config import load_experiment
    from somnray.train.finetune import finetune_overrides

    recipe = args.recipe or str(resources.files("somnray.jobs").joinpath("configs", DEFAULT_RECIPE))
    overrides = finetune_overrides(args.source, args.data, args.freeze) + list(args.overrides)
    cfg = load_experiment(recipe, cli_overrides(recipe, overrides, args.run_uri, args.workers))
    print(f"fine-tuning {args.source} on {args.data} with {recipe}", flush=True)
    return train_and_report(cfg, recipe)
