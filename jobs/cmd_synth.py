"""``somnray synth``: write a synthetic PSG cohort (real EDF/XML/CSV files) and its manifest.

Example::

    somnray synth --profile sleep-edf --nights 4 --hours 2 --out /tmp/sleep-edf-synth
    somnray prepare --profile sleep-edf /tmp/sleep-edf-synth/manifest.csv ...
"""

from __future__ import annotations

import argparse

#: Kept in sync with ``somnray.data.synth.PROFILES`` (a test checks); listed here so that building
#: the parser does not import numpy, scipy and edfio.
PROFILES = ("sleep-edf", "shhs", "generic")
ARTEFACT_PRESETS = ("none", "some", "all")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {value}")
    return value


#: One line for ``somnray --help``.
HELP = "write a synthetic PSG cohort (EDF + annotations + manifest.csv) in a cohort's file format"
#: What ``somnray synth --help`` says first.
DESCRIPTION = (
    "Simulate PSG nights (stage-dependent EEG/EOG/EMG with realistic hypnograms) and write them "
    "in the file layout of a cohort profile: Sleep-EDF SC (PSG + Hypnogram EDF+), SHHS-1 "
    "(EDF + NSRR XML) or generic (EDF+ + CSV hypnogram).  The output folder also gets "
    "manifest.csv and, with --artefacts, one <recording_id>.artefacts.json per night.  The same "
    "seed writes byte-identical files."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray synth``."""
    parser.add_argument("--profile", required=True, choices=PROFILES, help="file layout to write")
    parser.add_argument("--nights", required=True, type=int, metavar="N",
                        help="number of recordings (Sleep-EDF: two nights per subject)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--hours", type=float, default=8.0, help="recording length in hours (default: 8)")
    parser.add_argument("--artefacts", choices=ARTEFACT_PRESETS, default="none",
                        help="inject flat/detached channels, noise bursts and missing EOG (default: none)")
    parser.add_argument("--missing-eog-fraction", type=_fraction, default=None, metavar="F",
                        help="fraction of recordings written without their EOG channel(s) "
                             "(default: the --artefacts preset's: 0, 0.1 or 0.25)")
    parser.add_argument("--embed-annotations", action="store_true",
                        help="generic profile: stages as EDF+ annotations inside the PSG instead of a CSV")


def run(args: argparse.Namespace) -> int:
    """Write the cohort; print a one-line summary.  Returns 0."""
    from somnray.core.errors import StorageError
    from somnray.core.storage import resolve
    from somnray.data import synth

    out = resolve(args.out)
    if not out.is_local:  # the EDF writers take local paths: a URI would become a folder named "s3:"
        raise StorageError(out.uri, "somnray synth writes to a local folder: give a path or file:///path")
    artefacts = synth.ArtefactConfig.preset(args.artefacts, args.missing_eog_fraction)
    with out.errors():
        entries = synth.synthesize_cohort(
            args.profile, out.path, args.nights, seed=args.seed, hours=args.hours,
            artefacts=artefacts if artefacts.enabled else None,
            embed_annotations=args.embed_annotations, progress=args.nights > 1,
        )
    subjects = len({e.subject_id for e in entries})
    print(f"somnray synth: wrote {len(entries)} {args.profile} recording(s) of {args.hours:g} h from "
          f"{subjects} subject(s) to {args.out} (manifest.csv, seed {args.seed}, artefacts {args.artefacts})")
    return 0
