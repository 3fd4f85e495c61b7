"""``somnray prepare``: turn a cohort (manifest or folder) into a versioned Parquet dataset.

Example::

    somnray prepare cohort/manifest.csv --profile sleep-edf --out s3://bucket/prepared --workers 4
    somnray prepare night.edf --hypnogram night.csv --profile my-cohort.yaml --out prepared/

Exit status: 0 every recording prepared (or already there), 2 some rejected (the others are
written; reasons in ``manifest.json``), 1 a fatal error (bad URI, malformed manifest, unknown
profile).  The last line printed is the prepared dataset's URI, for scripts; every warning
of a recording (labels dropped, a modality absent, ...) is listed on stderr at the end.
"""

from __future__ import annotations

import argparse

from .recording_warnings import print_recording_warnings

#: One line for ``somnray --help``.
HELP = "prepare a cohort into a versioned Parquet dataset (Ray Data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray prepare`` (also parsed by ``somnray submit prepare``)."""
    p.add_argument("input", metavar="INPUT",
                   help="manifest CSV/Parquet, a folder of recordings, or one EDF/BDF file "
                        "(local path or URI)")
    p.add_argument("--profile", required=True, metavar="NAME|PATH",
                   help="cohort profile: a shipped name (sleep-edf, shhs, generic) or a YAML path")
    p.add_argument("--out", required=True, metavar="URI",
                   help="where versioned datasets go (path, file://, s3://bucket/prefix, ...)")
    p.add_argument("--hypnogram", default=None, metavar="URI",
                   help="with one EDF/BDF INPUT: its scoring file (default: paired by the profile)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="recordings prepared at once (default: as many as the Ray cluster fits)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="prepare at most N recordings not prepared yet (rerun to continue)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the preparation; returns 0, or 2 when some recordings were rejected."""
    from somnray.data import prepare_cohort
    from somnray.data.profiles import load_profile

    profile = load_profile(args.profile)
    result = prepare_cohort(args.input, profile, args.out, num_workers=args.workers,
                            progress=not args.no_progress, limit=args.limit,
                            hypnogram=args.hypnogram)
    print(f"dataset {result.version}: {result.total} recording(s): {result.prepared} prepared, "
          f"{result.skipped} already prepared, {result.rejected} rejected"
          + (f", {result.pending} pending (--limit)" if result.pending else ""))
    for r in result.rejects:
        print(f"  rejected {r['recording_id']}: {r['reason']}")
    print(result.dataset_uri)
    print_recording_warnings(result.warnings)
    return result.exit_code
