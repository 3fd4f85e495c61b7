"""``somnray score``: stage recordings with a trained model (Ray Data batch inference, no Serve).

Examples::

    somnray score runs/coresleep-shhs night.edf --out scored/
    somnray score s3://bucket/runs/r1 cohort/manifest.csv more-nights/ --out s3://bucket/scored \\
        --workers 4 --plots
    somnray score runs/r1 night.edf --out scored/ --channel-map eeg=C4-A1,C3-A2 \\
        --channel-map '{"eog": {"signal": "E1", "reference": "E2"}}'

RUN_URI is a training run (its ``model/`` bundle), a bundle folder, or a registered model
(``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, with ``MLFLOW_TRACKING_URI`` set).  INPUTs are EDF/EDF+/BDF
files, folders (paired by the cohort profile) and manifests; several may be given.  File names may
identify people: ``--id-from hash`` names a single file's outputs by a hash of its content, and
outputs always name files relative to their manifest or folder, never by absolute path.  Each night
gets ``<out>/<recording_id>/`` (hypnogram CSV, EDF+ annotations, BIDS events, per-epoch Parquet,
sleep statistics JSON, PNG with --plots) and the run writes ``cohort_summary.csv/.parquet``.
A rerun skips nights already scored, so an interrupted run is completed by running it again;
nights scored earlier by another model (other weights) are scored again, and the run says so.

Exit status: 0 every recording scored (or already scored), 2 some rejected (listed with their
reasons; the others are written), 1 a fatal error (no model bundle, unknown profile, bad input).
The last line printed is the output URI, for scripts; every warning a scored night got while it
was read and prepared is listed on stderr at the end, and so is every night that lies outside the
model's training data (``domain shift <recording_id>: <reasons>``; thresholds with
``--domain-shift KEY=VALUE``, see docs/domain-shift.md).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from somnray.core.errors import ConfigError

from .recording_warnings import print_domain_shifts, print_recording_warnings


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
    p.add_argument("--channel-map", action="append", default=[], metavar="MOD=LABEL[,LABEL...]|JSON",
                   help="which EDF signal each modality is, for every input: eeg=C4-A1,C3-A2 (the "
                        "first usable one; repeat the option per modality), or a JSON object "
                        'such as \'{"eog": {"signal": "E1", "reference": "E2"}}\' for derivations')
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="scoring actors, each holding the model (default: one per GPU, or one "
                        "per CPU with one thread each; fewer where memory is short)")
    p.add_argument("--plots", action="store_true", help="also write hypnogram and cohort PNGs")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="window stride in epochs (default: the model's window length; 1 averages "
                        "every window position)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the actors run the model (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="arithmetic (default auto: bf16 on bf16 GPUs, and on CPUs with native bf16 where "
                        "a timed probe of the model finds it at least 1.25x faster; else fp32)")
    p.add_argument("--id-from", default="name", choices=("name", "hash"),
                   help="how a single EDF/BDF INPUT is named in outputs: its file name (default) or "
                        "a short SHA-256 of its content (file names may identify people)")
    p.add_argument("--domain-shift", action="append", default=[], metavar="KEY=VALUE",
                   help="threshold of the domain-shift check, repeatable: amplitude_factor=3 (amplitude "
                        "beyond the training 1st-99th percentile by this factor), band_power_distance=2 "
                        "(band-power RMS z-score), ignore=native_sfreq,band (checks that never flag); "
                        "see docs/domain-shift.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_channel_map(values: list[str]) -> dict[str, Any] | None:
    """The ``--channel-map`` options as one channel map (None when none was given).

    ``eeg=C4-A1,C3-A2`` maps a modality to labels tried in order; a value starting with ``{`` is
    a JSON object in the HTTP API's form (labels, derivations, lists).

    Raises
    ------
    ConfigError
        A value that is neither form, or a modality given twice.
    """
    if not values:
        return None
    mapping: dict[str, Any] = {}
    problems: list[str] = []
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                entries = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(f"{value!r} is not valid JSON ({exc.msg})")
                continue
            if not isinstance(entries, dict):
                problems.append(f"{value!r}: the JSON must be an object of modality -> signal")
                continue
        else:
            modality, sep, labels = value.partition("=")
            if not sep or not modality.strip() or not labels.strip():
                problems.append(f"{value!r}: expected MODALITY=LABEL[,LABEL...] such as "
                                "eeg=C4-A1,C3-A2, or a JSON object")
                continue
            names = [x.strip() for x in labels.split(",")]
            entries = {modality.strip(): names[0] if len(names) == 1 else names}
        for modality, entry in entries.items():
            if modality in mapping:
                problems.append(f"modality {modality!r} is mapped twice")
            mapping[modality] = entry
    if problems:
        raise ConfigError("--channel-map", problems)
    return mapping


def run(args: argparse.Namespace) -> int:
    """Score the inputs; returns 0, or 2 when some recordings were rejected."""
    from somnray.scoring.domain import DomainThresholds
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    options = CohortScoringOptions(profile=args.profile, channel_map=parse_channel_map(args.channel_map),
                                   workers=args.workers, plots=args.plots,
                                   stride=args.stride, device=args.device, precision=args.precision,
                                   progress=not args.no_progress, id_from=args.id_from,
                                   domain=DomainThresholds.parse(args.domain_shift))
    result = score_cohort(args.run, args.inputs, args.out, options)
    print(f"{result.total} recording(s): {result.scored} scored, {result.skipped} already scored, "
          f"{result.rejected} rejected ({result.seconds:.1f} s)")
    if result.rescored:
        print(f"  re-scored {result.rescored} night(s) whose outputs came from another model")
    for r in result.rejects:
        print(f"  rejected {r['recording_id']}: {r['reason']}")
    print(result.out_uri)
    print_recording_warnings(result.warnings)
    print_domain_shifts(result.domain_shifts)
    return result.exit_code
