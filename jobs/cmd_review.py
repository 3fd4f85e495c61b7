"""``somnray review``: a technician reviews what the model was least sure of (``docs/review.md``).

Examples::

    somnray score runs/r1 cohort/manifest.csv --out scored/
    somnray review queue scored/ --inputs cohort/manifest.csv              # the 10 % least certain epochs
    somnray review queue scored/ --inputs cohort/ --max-epochs 200 --nights 5
    somnray review import scored/ SC4001E0_review.edf night2.csv --night ...   # corrected hypnograms
    somnray review agreement scored/                                       # model vs technician
    somnray review dataset scored/ --out store/                            # labelled dataset; last line its URI
    somnray finetune runs/r1 --data store/<profile>-<version>

``queue`` ranks the scored nights by expected number of errors and their epochs by uncertainty
(1 - the probability of the stage given), queues the least certain epochs and writes
``SCORED/review/`` (``nights.csv``, ``queue.csv``/``.parquet``, per queued night an EDF+ file
marking the epochs to review for EDFbrowser, the queued nights' signals for the review page).
``--inputs`` are the inputs ``somnray score`` was given (scored outputs record no file path):
each queued night is read again from them and must be the same file (SHA-256).

Exit status: 0 done, 2 some nights or files rejected (listed; the others are done), 1 a fatal
error (no scored night, bad options).
"""

from __future__ import annotations

import argparse

#: One line for ``somnray --help``.
HELP = "review the least certain epochs of a scored cohort; import corrections; export a labelled dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``somnray review queue|import|agreement|dataset``."""
    from somnray.jobs.cli import positive_int

    from .cmd_score import add_arguments as score_arguments

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = sub.add_parser("queue", help="rank nights and epochs, write SCORED/review/")
    q.add_argument("scored", metavar="SCORED", help="output root of somnray score")
    q.add_argument("--inputs", nargs="+", required=True, metavar="INPUT",
                   help="the inputs somnray score was given (EDF/BDF files, folders, manifests)")
    size = q.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float, default=0.1,
                      help="share of the scored epochs to queue (default 0.1)")
    size.add_argument("--max-epochs", type=int, default=None, metavar="N", help="queue N epochs instead")
    q.add_argument("--nights", type=positive_int, default=None, metavar="N",
                   help="only the N nights with the most expected errors (default: all)")
    q.add_argument("--model", default=None, metavar="URI",
                   help="the bundle or run the nights were scored with (default: the one their outputs record)")
    # The arguments that decide how somnray score read its inputs, with the same names.
    probe = argparse.ArgumentParser(add_help=False)
    score_arguments(probe)
    for action in probe._actions:
        if action.dest in ("profile", "channel_map", "id_from"):
            q._add_action(action)
    q.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("import", help="import corrected hypnograms (EDF+ annotations or CSV)")
    i.add_argument("scored", metavar="SCORED", help="output root of somnray score")
    i.add_argument("files", nargs="+", metavar="FILE",
                   help="EDF+ annotation file (as EDFbrowser saves it) or CSV, named after its night "
                        "(<id>.edf, <id>_review.edf, <id>_corrections.csv, ...)")
    i.add_argument("--night", default=None, metavar="ID", help="the night of the (single) file, if its name does not say")
    i.add_argument("--all-epochs", action="store_true",
                   help="count every epoch an annotation file stages as reviewed (default: the queued epochs "
                        "and those whose stage differs from the model's)")

    a = sub.add_parser("agreement", help="model-technician agreement on the reviewed epochs")
    a.add_argument("scored", metavar="SCORED", help="output root of somnray score")

    d = sub.add_parser("dataset", help="write the corrected nights as a labelled prepared dataset")
    d.add_argument("scored", metavar="SCORED", help="output root of somnray score")
    d.add_argument("--out", required=True, metavar="URI", help="parent of the dataset folder (like somnray prepare --out)")
    d.add_argument("--unreviewed", choices=("ignore", "model"), default="ignore",
                   help="label of epochs nobody reviewed: ignore (-1, default) or the model's stage "
                        "(trains on unchecked guesses: see docs/review.md)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; 0, or 2 when some nights or files were rejected."""
    return {"queue": _queue, "import": _import, "agreement": _agreement, "dataset": _dataset}[args.action](args)


def _queue(args: argparse.Namespace) -> int:
    from somnray.review.queue import build_review

    from .cmd_score import parse_channel_map

    result = build_review(args.scored, args.inputs, fraction=args.fraction, max_epochs=args.max_epochs,
                          nights=args.nights, model=args.model, profile=args.profile,
                          channel_map=parse_channel_map(args.channel_map), id_from=args.id_from,
                          progress=not args.no_progress)
    print(f"{result.nights} night(s) ranked; {result.queued_epochs} of {result.scored_epochs} scored epoch(s) "
          f"queued in {result.queued_nights} night(s)")
    for r in result.rejects:
        print(f"  rejected {r['recording_id']}: {r['reason']}")
    print(result.review_uri)
    return result.exit_code


def _import(args: argparse.Namespace) -> int:
    from somnray.review.corrections import import_corrections

    imported, rejects = import_corrections(args.scored, args.files, recording_id=args.night,
                                           all_epochs=args.all_epochs)
    for n in imported:
        print(f"{n.source} -> {n.recording_id}: {n.reviewed} reviewed epoch(s), {n.changed} changed")
    for r in rejects:
        print(f"  rejected {r['reason']}")
    return 2 if rejects else 0


def _agreement(args: argparse.Namespace) -> int:
    from somnray.review.agreement import AGREEMENT_FILE, format_agreement, review_agreement
    from somnray.serve.review_files import review_root

    print(format_agreement(review_agreement(args.scored)))
    print(review_root(args.scored).join(AGREEMENT_FILE).uri)
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from somnray.review.export import export_dataset

    result = export_dataset(args.scored, args.out, unreviewed=args.unreviewed)
    print(f"{result.nights} night(s), {result.labelled_epochs} labelled epoch(s) ({result.reviewed_epochs} "
          f"reviewed by the technician)")
    if result.uncorrected:
        print(f"  left out (no corrections): {', '.join(result.uncorrected)}")
    if result.split is None:
        print("  no split written: the corrected nights come from one subject, so nothing is left to validate "
              "on; correct nights of a second subject, or write a split yourself (somnray split)")
    else:
        s = result.split
        print(f"  split {s.name!r}: train {len(s.train_subjects)}, validation {len(s.val_subjects)}, test "
              f"{len(s.test_subjects)} subject(s); fine-tune with --set 'data.split={{name: {s.name}}}'")
    print(result.dataset_uri)
    return 0
