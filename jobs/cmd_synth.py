"""``somnray synth``: write a synthetic PSG cohort (real EDF/XML/CSV files) and its manifest.

Example::

    somnray synth --profile sleep-edf --nights 4 --hours 2 --out /tmp/sleep-edf-synth
    somnray prepare --profile sleep-edf /tmp/sleep-edf-synth/manifest.csv ...
    somnray synth --profile sleep-edf --nights 6 --site b --seed 7 --out /tmp/site-b   # another clinic
    somnray synth --profile sleep-edf --nights 6 --site-gain 0.5 --site-n3-scale 0.5 --out /tmp/site-c

A site (``--site b``, or the ``--site-*`` knobs on top of a preset) changes what the recordings
look like, not their files: amplifier gain, the derivation the EEG channel really records, noise
and filters, and the population (less N3, more fragmented sleep). See docs/synthetic-data.md.
"""

from __future__ import annotations

import argparse
import dataclasses

#: Kept in sync with ``somnray.data.synth.PROFILES`` (a test checks); listed here so that building
#: the parser does not import numpy, scipy and edfio.
PROFILES = ("sleep-edf", "shhs", "generic")
ARTEFACT_PRESETS = ("none", "some", "all")
#: Kept in sync with ``somnray.data.synth.SITE_PRESETS`` (a test checks).
SITES = ("a", "b")
DERIVATIONS = ("profile", "frontal", "central", "parietal")


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
    site = parser.add_argument_group("recording site (a domain shift; the default site changes nothing)")
    site.add_argument("--site", choices=SITES, default="a",
                      help="preset: a (default) or b (half gain, central-derivation EEG, noise, 0.3-30 Hz "
                           "amplifier, less N3, fragmented sleep)")
    site.add_argument("--site-gain", type=float, default=None, metavar="G", help="EEG/EOG amplifier gain")
    site.add_argument("--site-derivation", choices=DERIVATIONS, default=None,
                      help="morphology of the EEG channel (recorded like this electrode site)")
    site.add_argument("--site-noise-uv", type=float, default=None, metavar="UV",
                      help="RMS of white noise added to EEG/EOG, in µV")
    site.add_argument("--site-highpass-hz", type=float, default=None, metavar="HZ", help="amplifier high-pass")
    site.add_argument("--site-lowpass-hz", type=float, default=None, metavar="HZ", help="amplifier low-pass")
    site.add_argument("--site-n3-scale", type=float, default=None, metavar="S",
                      help="slow-wave sleep multiplier (below 1: less N3)")
    site.add_argument("--site-fragmentation", type=float, default=None, metavar="P",
                      help="probability that a sleep epoch becomes a brief awakening")


def run(args: argparse.Namespace) -> int:
    """Write the cohort; print a one-line summary.  Returns 0."""
    from somnray.core.errors import ConfigError, StorageError
    from somnray.core.storage import resolve
    from somnray.data import synth

    out = resolve(args.out)
    if not out.is_local:  # the EDF writers take local paths: a URI would become a folder named "s3:"
        raise StorageError(out.uri, "somnray synth writes to a local folder: give a path or file:///path")
    artefacts = synth.ArtefactConfig.preset(args.artefacts, args.missing_eog_fraction)
    knobs = {"gain": args.site_gain, "eeg_derivation": args.site_derivation, "noise_uv": args.site_noise_uv,
             "highpass_hz": args.site_highpass_hz, "lowpass_hz": args.site_lowpass_hz,
             "n3_scale": args.site_n3_scale, "fragmentation": args.site_fragmentation}
    try:
        site = dataclasses.replace(synth.SiteConfig.preset(args.site),
                                   **{k: v for k, v in knobs.items() if v is not None})
    except ValueError as exc:
        raise ConfigError("--site", [str(exc)]) from None
    with out.errors():
        entries = synth.synthesize_cohort(
            args.profile, out.path, args.nights, seed=args.seed, hours=args.hours,
            artefacts=artefacts if artefacts.enabled else None,
            embed_annotations=args.embed_annotations, progress=args.nights > 1, site=site,
        )
    subjects = len({e.subject_id for e in entries})
    site_text = "" if site.is_default else f", site {args.site}" + (
        "" if site == synth.SiteConfig.preset(args.site) else " with --site-* changes")
    print(f"somnray synth: wrote {len(entries)} {args.profile} recording(s) of {args.hours:g} h from "
          f"{subjects} subject(s) to {args.out} (manifest.csv, seed {args.seed}, artefacts {args.artefacts}"
          f"{site_text})")
    return 0
