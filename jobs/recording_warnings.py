"""The per-recording warnings summary that ``somnray prepare`` and ``somnray score`` print.

A warning (labels dropped past the end of the signal, an optional channel absent, epochs left
unscored) changes what a dataset or a hypnogram holds, so it is shown where the user looks — on
the terminal at the end of the run — and not only in the run's JSON documents.  It goes to
stderr: stdout stays the counts, the rejects and the output URI that scripts read.
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
