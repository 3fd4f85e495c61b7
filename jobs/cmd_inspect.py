"""``somnray inspect``: what a PSG file or a folder of recordings holds, and a drafted profile.

Examples::

    somnray inspect night.edf
    somnray inspect night.edf --hypnogram night-scoring.txt
    somnray inspect cohort/ --draft my-cohort.yaml
    somnray prepare cohort/ --profile my-cohort.yaml --out prepared/

For every PSG: its signals with native rate, unit, physical range and duration (and why a signal
is unusable), the modality each looks like, the annotation texts inside it, reading warnings and
the hypnogram paired with it (for one file: the scoring file beside it that pairs with it, as
``somnray prepare`` pairs a bare EDF, or the one ``--hypnogram`` names), and the codes of a
hypnogram stored as a signal; for every scoring file (annotation-only EDF+, NSRR XML, CSV/TSV, an
EDF of one stage-code signal): its format, columns and labels.  Then a drafted cohort profile, printed or written with
``--draft``: check every guess before preparing with it.  No patient or recording header field is
ever shown.
"""

from __future__ import annotations

import argparse

#: One line for ``somnray --help``.
HELP = "list a recording's (or folder's) signals, annotations and hypnograms; draft a profile"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray inspect``."""
    p.add_argument("input", metavar="FILE|FOLDER", help="an EDF/BDF file or a folder of recordings")
    p.add_argument("--hypnogram", default=None, metavar="URI",
                   help="with one EDF/BDF file: its scoring file (default: the file beside it that "
                        "pairs with it)")
    p.add_argument("--draft", default=None, metavar="PATH",
                   help="write the drafted profile YAML here instead of printing it")
    p.add_argument("--name", default="my-cohort", help="name of the drafted profile")


def run(args: argparse.Namespace) -> int:
    """Print the inspection and the drafted profile; returns 0."""
    from pathlib import Path

    from somnray.data.inspection import draft_profile, format_report, inspect_path

    result = inspect_path(args.input, hypnogram=args.hypnogram)
    print(format_report(result))
    draft = draft_profile(result, args.name)
    if args.draft:
        Path(args.draft).write_text(draft, encoding="utf-8")
        named = f" --hypnogram {args.hypnogram}" if args.hypnogram else ""
        print(f"drafted profile written to {args.draft}: check it, then "
              f"somnray prepare {args.input}{named} --profile {args.draft} --out <store>")
    else:
        print("\n# --- drafted profile (save it with --draft PATH) ---")
        print(draft, end="")
    return 0
