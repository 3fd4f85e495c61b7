"""What a search leaves behind: the leaderboard, a plot of the metric against each searched
parameter, and the winning trial as a run folder ``somnray evaluate`` accepts.

* ``leaderboard.md`` / ``leaderboard.csv`` — one row per trial, best first: rank, trial, status
  (``done``, ``stopped`` by the scheduler, ``error``), the best value of the metric over the
  **last** phase's validation reports, the ``tune_step`` it was reached at and the progress made,
  the other validation metrics of that report, the sampled parameters, the wall-clock interval
  of the trial, and the URI of its best checkpoint. Trials that never reported on the last phase
  rank after those that did.
* Population-based training: a trial's row is its **final lineage** — the parameters are its
  final config (Tune's, after its last exploit), the value and checkpoint come from the reports
  and checkpoints since its last exploit (``generation`` of the reports, the run folder
  ``exploit-<k>/`` of ``lineage.json``), and ``exploits`` counts how often it cloned another
  trial. The values it trained with before are in its ``lineage.json`` and Tune's
  ``pbt_policy_*.txt``.
* ``params.png`` — the metric (best per trial) against each searched parameter, one panel each;
  log axes for log-uniform entries, categories for choices.
* ``best/`` — ``config.yaml`` (the winning trial's resolved experiment), ``metrics.json``,
  ``<last phase>/phase_result.json`` pointing at the trial's best checkpoint, and the model bundle
  ``model/`` (:func:`somnray.train.export.export_bundle`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from somnray.core.config import parse_yaml
from somnray.core.storage import StorageLocation
from somnray.train.config import ExperimentConfig, dump_experiment, validate_experiment

from .layout import (
    BEST_DIR,
    GENERATION,
    PHASE_RESULT_FILE,
    TIME_ATTR,
    active_folder,
    read_lineage,
    read_reports,
    total_steps,
    trial_dirname,
)

log = logging.getLogger(__name__)

LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_CSV = "leaderboard.csv"
PLOT_FILE = "params.png"
#: Validation metrics shown next to the searched one.
SHOWN_METRICS = ("val_macro_f1", "val_kappa", "val_accuracy", "val_loss")


@dataclass
class TrialRecord:
    """One trial of a search, as the leaderboard shows it."""

    trial_id: str
    status: str
    params: dict[str, Any]
    value: float | None = None
    best_step: int | None = None
    progress: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_uri: str | None = None
    run_uri: str | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    #: PBT: how many times the trial continued another trial's checkpoint.
    exploits: int = 0

    @property
    def wall_s(self) -> float | None:
        """Seconds from the trial's start to its last report."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def best_checkpoint(run: StorageLocation, phase: str, metric: str, mode: str) -> tuple[str | None, dict]:
    """The checkpoint of ``<run>/<phase>`` with the best ``metric`` (URI and its metrics).

    Reads each kept checkpoint's ``trainer_state.json``, so it works for trials a scheduler
    stopped before their phase wrote ``phase_result.json``.
    """
    folder = run.join(phase)
    if not folder.exists():
        return None, {}
    best_uri, best_metrics = None, {}
    for state in folder.find("trainer_state.json"):
        try:
            metrics = json.loads(state.read_text()).get("metrics", {})
        except (OSError, ValueError):
            continue
        value = metrics.get(metric)
        if not _finite(value):
            continue
        if best_uri is None or _better(value, best_metrics[metric], mode):
            best_uri, best_metrics = state.parent.uri, metrics
    return best_uri, best_metrics


def collect_records(search: StorageLocation, grid: Any, cfg: ExperimentConfig, settings: Any) -> list[TrialRecord]:
    """One :class:`TrialRecord` per trial of a ``ResultGrid``, sorted best first."""
    import pandas as pd


    metric, mode = settings.metric, settings.resolved_mode
    last_phase = cfg.phases[-1].name
    end = total_steps(cfg)
    records = []
    for result in grid:
        # The trial's own folder names it.  Its last result may be another trial's: after a PBT
        # exploit Tune restores the trial with the donor's last result (trial_id included), and
        # a trial exploited at its last report reports nothing after it.
        trial_id = Path(result.path).name.removeprefix("trial_")
        run = search.join(trial_dirname(trial_id))
        lineage = read_lineage(run)
        # The final config is the one the trial's last generation started with: Tune's
        # `result.config` is its last result's, which after an exploit at the last report is the
        # donor's.
        params = dict(lineage[-1]["config"] if lineage else (result.config or {}))
        # The trial function's own log of every report; Tune's drops reports when a trial restarts.
        logged = read_reports(run)
        df = pd.DataFrame(logged) if logged else result.metrics_dataframe
        rec = TrialRecord(trial_id=trial_id, status="done", params=params, run_uri=run.uri,
                          exploits=len(lineage))
        if df is not None and len(df):
            if TIME_ATTR in df:
                rec.progress = int(df[TIME_ATTR].max())
            if "timestamp" in df:
                first = df.iloc[0]
                rec.started = float(first["timestamp"]) - float(first.get("time_this_iter_s", 0.0) or 0.0)
                rec.finished = float(df["timestamp"].max())
            final = df[df["phase"] == last_phase] if "phase" in df else df
            if rec.exploits and GENERATION in final:
                # PBT: the row shows the final config, so its value comes from the final lineage.
                final = final[final[GENERATION] == rec.exploits]
            if metric in final and final[metric].notna().any():
                idx = final[metric].idxmax() if mode == "max" else final[metric].idxmin()
                row = df.loc[idx]
                rec.value = float(row[metric])
                rec.best_step = int(row[TIME_ATTR]) if TIME_ATTR in row else None
                rec.metrics = {m: float(row[m]) for m in SHOWN_METRICS if m in row and _finite(row[m])}
        if result.error is not None:
            rec.status = "error"
            rec.error = str(result.error).strip().splitlines()[-1][:200] if str(result.error).strip() else "error"
        elif rec.progress < end:
            rec.status = "stopped"
        folder = active_folder(run)  # the trial's own run folder, or its last exploit's
        rec.checkpoint_uri, ck_metrics = best_checkpoint(folder, last_phase, metric, mode)
        done = folder.join(last_phase, PHASE_RESULT_FILE)
        if rec.checkpoint_uri is None and done.exists():
            # An exploit that took over a finished phase: the donor's checkpoint ends it.
            doc = json.loads(done.read_text())
            rec.checkpoint_uri, ck_metrics = doc.get("checkpoint_uri"), doc.get("metrics", {})
        if rec.value is None and _finite(ck_metrics.get(metric)):
            # Tune's reports were lost (a trial resumed from its Ray Train checkpoint), or the final
            # lineage made none: the checkpoint's own metrics stand in.
            rec.value = float(ck_metrics[metric])
            rec.metrics = {m: float(ck_metrics[m]) for m in SHOWN_METRICS if _finite(ck_metrics.get(m))}
        records.append(rec)
    return rank(records, mode)


def rank(records: Sequence[TrialRecord], mode: str) -> list[TrialRecord]:
    """Best first: trials with a value (by value, then trial id), then the rest by trial id."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(records, key=lambda r: (r.value is None, sign * r.value if r.value is not None else 0.0,
                                          r.trial_id))


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _columns(params: Sequence[str]) -> list[str]:
    return (["rank", "trial_id", "status", "value", "best_step", "progress"] + list(SHOWN_METRICS)
            + [f"param:{p}" for p in params] + ["exploits", "wall_s", "checkpoint_uri", "error"])


def _row(rank_: int, rec: TrialRecord, params: Sequence[str]) -> dict[str, Any]:
    row = {"rank": rank_, "trial_id": rec.trial_id, "status": rec.status, "value": rec.value,
           "best_step": rec.best_step, "progress": rec.progress,
           "wall_s": round(rec.wall_s, 1) if rec.wall_s is not None else None,
           "checkpoint_uri": rec.checkpoint_uri, "error": rec.error, "exploits": rec.exploits}
    row.update({m: rec.metrics.get(m) for m in SHOWN_METRICS})
    row.update({f"param:{p}": rec.params.get(p) for p in params})
    return row


def leaderboard_csv(records: Sequence[TrialRecord], params: Sequence[str]) -> str:
    """The CSV text of the leaderboard (one row per trial, best first)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(params), lineterminator="\n")
    writer.writeheader()
    for i, rec in enumerate(records, 1):
        writer.writerow({k: ("" if v is None else v) for k, v in _row(i, rec, params).items()})
    return buf.getvalue()


def leaderboard_markdown(records: Sequence[TrialRecord], params: Sequence[str], metric: str, mode: str,
                         search_uri: str) -> str:
    """The Markdown leaderboard, with the best checkpoint named above the table."""
    lines = [f"# Search leaderboard: {search_uri}", "",
             f"Metric: `{metric}` ({mode}imised), best over the last phase's validation reports.", ""]
    best = next((r for r in records if r.value is not None and r.checkpoint_uri), None)
    if best is not None:
        lines += [f"Best trial: `{best.trial_id}` with {metric} = {best.value:.4f} at step {best.best_step}; "
                  f"checkpoint `{best.checkpoint_uri}`.", ""]
    else:
        lines += ["No trial reported the metric on the last phase.", ""]
    pbt = any(r.exploits for r in records)
    if pbt:
        lines += ["Population-based training: each row is the trial's final lineage: its final config, and "
                  "the best report and checkpoint since its last exploit (`exploits`: how many times it "
                  "continued another trial; its `lineage.json` lists them).", ""]
    header = ["#", "trial", "status", metric, "step", "progress"] + [m for m in SHOWN_METRICS if m != metric] \
        + list(params) + (["exploits"] if pbt else []) + ["wall (s)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for i, rec in enumerate(records, 1):
        cells = [str(i), rec.trial_id, rec.status, _fmt(rec.value), _fmt(rec.best_step), str(rec.progress)]
        cells += [_fmt(rec.metrics.get(m)) for m in SHOWN_METRICS if m != metric]
        cells += [_fmt(rec.params.get(p)) for p in params]
        cells += [str(rec.exploits)] if pbt else []
        cells.append(_fmt(round(rec.wall_s, 1)) if rec.wall_s is not None else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    errors = [r for r in records if r.error]
    if errors:
        lines += ["", "## Errors", ""] + [f"- `{r.trial_id}`: {r.error}" for r in errors]
    return "\n".join(lines) + "\n"


def plot_params(records: Sequence[TrialRecord], params: Sequence[str], metric: str, log_params: Sequence[str] = ()):
    """A matplotlib figure: the metric against each searched parameter (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(params), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    scored = [r for r in records if r.value is not None]
    for ax, param in zip(axes.flat, params):
        values = [r.params.get(param) for r in scored]
        ys = [r.value for r in scored]
        colours = ["tab:blue" if r.status == "done" else "tab:orange" for r in scored]
        if values and all(_finite(v) for v in values):
            ax.scatter(values, ys, c=colours)
            if param in log_params:
                ax.set_xscale("log")
        else:
            cats = sorted({json.dumps(v) for v in values})
            ax.scatter([cats.index(json.dumps(v)) for v in values], ys, c=colours)
            ax.set_xticks(range(len(cats)), [c.strip('"') for c in cats], rotation=30, ha="right")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    fig.suptitle(f"{metric} per trial (blue: ran to the end, orange: stopped early)", fontsize=10)
    fig.tight_layout()
    return fig


def write_report(search: StorageLocation, records: Sequence[TrialRecord], metric: str, mode: str,
                 params: Sequence[str], log_params: Sequence[str] = ()) -> dict[str, str]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``params.png`` into the search folder."""
    md = search.join(LEADERBOARD_MD)
    md.write_text(leaderboard_markdown(records, params, metric, mode, search.uri))
    table = search.join(LEADERBOARD_CSV)
    table.write_text(leaderboard_csv(records, params))
    fig = plot_params(records, params, metric, log_params)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    plot = search.join(PLOT_FILE)
    plot.atomic_write_bytes(buf.getvalue())
    return {"markdown": md.uri, "csv": table.uri, "plot": plot.uri}


def export_best(search: StorageLocation, records: Sequence[TrialRecord], doc: Mapping[str, Any]) -> str | None:
    """Write ``<search>/best`` from the top trial with a checkpoint; returns its URI (or None).

    The folder is a run folder as :mod:`somnray.train.export` reads it: the winning trial's
    ``config.yaml``, ``metrics.json``, ``<last phase>/phase_result.json`` (pointing at the trial's
    best checkpoint) and the bundle ``model/``.  When the search logs to MLflow, an MLflow run
    ``<search>/best`` holds that bundle too (register it with ``somnray models register``).
    """
    from somnray.train.driver import PhaseResult
    from somnray.train.export import export_bundle, write_run_metrics
    from somnray.train.tracking import ExperimentTracking


    winner = next((r for r in records if r.value is not None and r.checkpoint_uri), None)
    if winner is None:
        log.warning("no trial produced a checkpoint on the last phase; %s/best not written", search.uri)
        return None
    trial_run = search.join(trial_dirname(winner.trial_id))
    cfg = validate_experiment(_read_yaml(trial_run.join("config.yaml")), trial_run.join("config.yaml").uri)
    best = search.join(BEST_DIR)
    if best.is_local:
        best.makedirs()
    dump_experiment(cfg, best.join("config.yaml").uri)
    last = cfg.phases[-1]
    state = json.loads(_checkpoint_state(best, winner.checkpoint_uri))
    result = PhaseResult(last.name, winner.checkpoint_uri,
                         {k: v for k, v in state.get("metrics", {}).items() if _finite(v)})
    phase_file = best.join(last.name, PHASE_RESULT_FILE)
    if best.is_local:
        best.join(last.name).makedirs()
    phase_file.write_text(json.dumps({**result.__dict__, "trial_id": winner.trial_id,
                                      "search_uri": search.uri, "params": winner.params}, indent=2, default=float))
    write_run_metrics(best.uri, [result])
    bundle = export_bundle(best.uri, cfg=cfg)
    # The winner's trial runs are in MLflow already (when it is configured); this run holds its bundle.
    ExperimentTracking(cfg, run_name=f"{search.name}/best").finish([result], bundle, best.storage_options)
    return best.uri


def _read_yaml(loc: StorageLocation) -> Any:
    return parse_yaml(loc.read_text(), loc.uri)


def _checkpoint_state(anchor: StorageLocation, checkpoint_uri: str) -> str:
    from somnray.core.storage import resolve

    return resolve(checkpoint_uri, anchor.storage_options).join("trainer_state.json").read_text()


__all__ = ["TrialRecord", "best_checkpoint", "collect_records", "export_best", "leaderboard_csv",
           "leaderboard_markdown", "plot_params", "rank", "write_report"]
