"""The ``somnray`` command line: one sub-command per workflow.

Each sub-command lives in its own module ``somnray.jobs.cmd_<name>`` exposing
``HELP`` (its line in ``somnray --help``; its ``--help`` shows the module docstring, or ``DESCRIPTION``),
``add_arguments(parser)``, the one declaration of its arguments, and ``run(args)``, which takes the
parsed namespace and returns the exit status; :func:`build_parser` wires them the same way for all.  ``somnray submit <command>`` parses
and rewrites a command's arguments with the same ``add_arguments`` (:mod:`somnray.jobs.submit`).
Modules are imported here, but they import Ray, DeepSpeed or MNE only inside ``func``, so
``somnray --help`` stays fast.

Exit statuses are decided here, once: a command returns :data:`EXIT_OK` or, for a cohort run that
rejected some recordings, :data:`EXIT_PARTIAL`; every known failure is raised, and :func:`main`
turns it into one line on stderr and :data:`EXIT_ERROR` (or the status a :class:`CommandFailed`
carries).  ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Sequence

from somnray.core.errors import SomnrayError

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "synth",
    "inspect",
    "prepare",
    "split",
    "train",
    "finetune",
    "evaluate",
    "score",
    "review",
    "bench",
    "tune",
    "serve",
    "cohorts",
    "models",
    "submit",
    "jobs",
)

#: Done.
EXIT_OK = 0
#: A bad config, argument or input, or another known failure (one line on stderr).
EXIT_ERROR = 1
#: Partial: some recordings were rejected (``prepare``, ``score``); the others are written.
EXIT_PARTIAL = 2
#: ``train``: the Ray Train run failed after it started (the cause is in the worker logs).
EXIT_TRAINING_FAILED = 3

#: The ``somnray --help`` epilog; the README's "Command line" table says the same.
EXIT_STATUS_HELP = f"""\
exit status:
  {EXIT_OK}  done
  {EXIT_ERROR}  a bad config, bad arguments or input, or another known failure: one message on stderr,
     `somnray COMMAND: error: ...`, listing every problem of a config (--debug adds the traceback)
  {EXIT_PARTIAL}  prepare, score, demo: some recordings were rejected (the others are written, the
     rejects listed)
  {EXIT_TRAINING_FAILED}  train: the training run failed after it started (its URI is still printed last)
  submit --wait/--follow and jobs logs --follow exit with the job's own status (submit: 130 when
  watching is interrupted); jobs status exits {EXIT_ERROR} when the job failed or was stopped,
  cohorts status when the cohort job failed or was cancelled.
"""

#: Failures that are the user's environment or input, never a somnray bug: one line, no traceback.
#: ``OSError`` covers a missing or unreadable file or folder and an unreachable store.
KNOWN_FAILURES: tuple[type[BaseException], ...] = (SomnrayError, OSError)


class CommandFailed(SomnrayError):
    """A command ran and its work failed; :func:`main` exits with ``status``.

    Parameters
    ----------
    message : str
        What failed (printed after ``somnray <command>: error:``).
    status : int
        The exit status (default :data:`EXIT_ERROR`; ``train`` uses :data:`EXIT_TRAINING_FAILED`).
    """

    def __init__(self, message: str, status: int = EXIT_ERROR):
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return (type(self), (str(self), self.status))


class SomnrayParser(argparse.ArgumentParser):
    """argparse's parser, except that a usage error exits :data:`EXIT_ERROR` (argparse's own 2
    would read as "some recordings rejected").  Sub-parsers inherit the class."""

    def error(self, message: str):  # argparse hook
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse ``type`` of counts that must be at least 1 (``--workers``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = SomnrayParser(
        prog="somnray",
        description="Train, tune and serve robust multimodal sleep-staging models on Ray.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a known failure, not just its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"somnray.jobs.cmd_{name}")
        command = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def _report_failure(command: str, exc: BaseException, *, debug: bool = False) -> int:
    """Print a known failure as ``somnray <command>: error: <message>`` on stderr; its exit status.

    The message of a :class:`~somnray.core.errors.ConfigError` keeps its list of problems, and
    notes added to the exception (``add_note``) follow it; ``debug`` prints the traceback first.
    """
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    lines = [f"somnray {command}: error: {exc}", *getattr(exc, "__notes__", ())]
    print("\n".join(lines), file=sys.stderr)
    return exc.status if isinstance(exc, CommandFailed) else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``somnray`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KNOWN_FAILURES as exc:
        return _report_failure(args.command, exc, debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
