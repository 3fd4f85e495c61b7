"""The ``somnray`` command line: one sub-command per workflow.

Each sub-command lives in its own module ``somnray.jobs.cmd_<name>`` exposing
``register(subparsers)``; that function adds the sub-parser and sets ``func`` to a callable taking
the parsed namespace and returning the exit status.  Modules are imported here, but they import
Ray, DeepSpeed or MNE only inside ``func``, so ``somnray --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "synth",
    "prepare",
    "split",
    "train",
    "evaluate",
    "score",
    "bench",
    "tune",
    "serve",
    "submit",
    "jobs",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="somnray",
        description="Train, tune and serve robust multimodal sleep-staging models on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"somnray.jobs.cmd_{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``somnray`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
