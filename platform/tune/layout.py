"""The folder of a search: file names, trial folders, PBT lineages and the trials' report logs.

Written by the trials (:mod:`somnray.tune.search`) and read by the leaderboard
(:mod:`somnray.tune.report`); both import the layout from here, so neither imports the other's
internals.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from somnray.core.storage import StorageLocation, resolve
from somnray.train.config import ExperimentConfig

SEARCH_FILE = "search.json"
BEST_DIR = "best"
PHASE_RESULT_FILE = "phase_result.json"
#: Progress attribute of every trial report: optimizer steps summed over the recipe's phases.
TIME_ATTR = "tune_step"
#: The file of a PBT Tune checkpoint: which Ray Train checkpoint the report stands for.
POINTER_FILE = "pointer.json"
#: A trial's exploits, in order (PBT only), and the prefix of each exploit's run folder.
LINEAGE_FILE = "lineage.json"
EXPLOIT_PREFIX = "exploit-"
#: Report field: how many times the trial was exploited when it made the report (0 before any).
GENERATION = "generation"
#: Every report of a trial, one JSON object a line, with the config in force (the leaderboard reads it:
#: Tune's own result.json loses the reports since its last sync when a trial restarts, as under PBT).
REPORTS_FILE = "reports.jsonl"


def total_steps(cfg: ExperimentConfig) -> int:
    """The ``tune_step`` a trial reaches at its end (every phase's ``max_steps``)."""
    return sum(p.optim.max_steps for p in cfg.phases)


def trial_dirname(trial: Any) -> str:
    """Folder (and name) of a trial: ``trial_<trial id>`` (``trial_dirname_creator`` of the Tuner)."""
    return f"trial_{trial if isinstance(trial, str) else trial.trial_id}"


def read_lineage(run: StorageLocation) -> list[dict[str, Any]]:
    """The exploits of the trial whose run folder is ``run``, in order (empty if never exploited)."""
    file = run.join(LINEAGE_FILE)
    return json.loads(file.read_text())["exploits"] if file.exists() else []


def active_folder(run: StorageLocation) -> StorageLocation:
    """The run folder the trial trains (or trained last) in: its last exploit's, or its own."""
    lineage = read_lineage(run)
    return resolve(lineage[-1]["folder"], run.storage_options) if lineage else run


class ReportLog:
    """The trial's ``reports.jsonl``: appended by the trial function, read by the leaderboard."""

    def __init__(self, file: StorageLocation):
        self.file = file
        # Object stores cannot append: the (small) file is rewritten with each report.
        self.text = file.read_text() if file.exists() else ""
        self.last = time.time()

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one report, with its ``timestamp`` and ``time_this_iter_s`` (since the previous one)."""
        now = time.time()
        doc = {**row, "timestamp": now, "time_this_iter_s": now - self.last}
        self.last = now
        self.text += json.dumps(doc, default=str) + "\n"
        self.file.write_text(self.text)


def read_reports(run: StorageLocation) -> list[dict[str, Any]]:
    """The reports of the trial whose run folder is ``run`` (``reports.jsonl``; empty if none)."""
    file = run.join(REPORTS_FILE)
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
