"""The per-recording warnings summary that ``somnray prepare`` and ``somnray score`` print.

A warning (labels dropped past the end of the signal, an optional channel absent, epochs left
unscored) changes what a dataset or a hypnogram holds, so it is shown where the user looks — on
the terminal at the end of the run — and not only in the run's JSON documents.  So is a night
``somnray score`` found outside the model's training data (its domain-shift flag): its
hypnogram may look confident and be wrong.  Both go to stderr: stdout stays the counts, the
rejects and the output URI that scripts read.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence


def print_recording_warnings(warnings: Sequence[Mapping[str, str]]) -> None:
    """Print ``warning <recording_id>: <text>`` lines under a count, to stderr (nothing if none).

    Parameters
    ----------
    warnings : sequence of mapping
        ``recording_id`` and ``warning`` per warning, in the order to print.
    """
    if not warnings:
        return
    n_recordings = len({w["recording_id"] for w in warnings})
    print(f"{len(warnings)} warning(s) in {n_recordings} recording(s):", file=sys.stderr)
    for w in warnings:
        print(f"  warning {w['recording_id']}: {w['warning']}", file=sys.stderr)


def print_domain_shifts(shifts: Sequence[Mapping[str, object]]) -> None:
    """Print ``domain shift <recording_id>: <reason>; <reason>`` per night under a count, to stderr.

    Parameters
    ----------
    shifts : sequence of mapping
        ``recording_id`` and ``reasons`` (list of str) per flagged night, in the order to print
        (:attr:`somnray.serve.cohort.CohortScoreResult.domain_shifts`).
    """
    if not shifts:
        return
    print(f"{len(shifts)} night(s) outside the model's training data (their scoring may be "
          f"wrong; docs/domain-shift.md):", file=sys.stderr)
    for s in shifts:
        print(f"  domain shift {s['recording_id']}: {'; '.join(map(str, s['reasons']))}", file=sys.stderr)
