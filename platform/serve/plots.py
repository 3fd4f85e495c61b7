"""Pictures of scoring results: one night's hypnogram + hypnodensity, and a cohort overview.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through
``pyplot``: no global figure registry, no GUI backend, safe inside Serve replicas and Ray workers
that render several nights at once.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from somnray.core.constants import STAGES
from somnray.core.errors import RecordingError

from .scored import ScoredNight
from .stats import REM, UNSCORED, WAKE, SleepStats

#: Colour of each stage (W N1 N2 N3 REM), shared by the hypnogram, hypnodensity and cohort plot.
STAGE_COLORS = ("#f2c14e", "#9ad1d4", "#3d85c6", "#1c3f7a", "#d1495b")
UNSCORED_COLOR = "#bdbdbd"
#: Vertical order of the hypnogram, top to bottom (the clinical convention: W, REM, N1, N2, N3).
_Y_ORDER = (WAKE, REM, 1, 2, 3)
_DPI = 110


def _to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True values."""
    padded = np.concatenate(([False], mask.astype(bool), [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def plot_night(night: ScoredNight, *, stats: SleepStats | None = None) -> Figure:
    """Hypnogram (top), hypnodensity (middle) and modality availability (bottom) of a night.

    The x-axis is hours from the recording start.  Unscored epochs, and epochs missing from the
    scoring, are grey bands; REM runs are drawn as thick red bars on the hypnogram.
    """
    if night.n_epochs == 0:
        raise RecordingError("hypnogram picture", "the night has no epochs to draw",
                             night.recording_id)
    stats = stats if stats is not None else night.sleep_stats()
    hyp = night.hypnogram()  # contiguous from epoch 0: gaps become -1
    n = hyp.size
    hours = (night.start_offset_s + np.arange(n + 1) * night.epoch_s) / 3600.0
    level = {stage: len(_Y_ORDER) - 1 - k for k, stage in enumerate(_Y_ORDER)}  # W highest

    fig = Figure(figsize=(12, 6.2), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True, height_ratios=(2.2, 2.0, 0.25 + 0.22 * len(night.modalities)))
    ax_h, ax_p, ax_a = axes

    # -- hypnogram: a step line broken (NaN) where nothing was scored
    y = np.array([level.get(int(s), np.nan) for s in hyp], dtype=float)
    ax_h.step(hours, np.append(y, y[-1]), where="post", color="#333333", lw=1.0)
    for start, stop in _runs(hyp == REM):
        ax_h.hlines(level[REM], hours[start], hours[stop], color=STAGE_COLORS[REM], lw=5,
                    zorder=3)
    for start, stop in _runs(hyp == UNSCORED):
        ax_h.axvspan(hours[start], hours[stop], color=UNSCORED_COLOR, alpha=0.5, lw=0)
    ax_h.set_yticks([level[s] for s in _Y_ORDER], [STAGES[s] for s in _Y_ORDER])
    ax_h.set_ylim(-0.6, len(_Y_ORDER) - 0.4)
    ax_h.set_ylabel("stage")
    ax_h.grid(axis="x", alpha=0.3)
    ax_h.legend(handles=[Patch(color=STAGE_COLORS[REM], label="REM"),
                         Patch(color=UNSCORED_COLOR, alpha=0.5, label="unscored")],
                loc="upper right", fontsize=8, framealpha=0.9)

    # -- hypnodensity: class probabilities stacked; unscored epochs left blank
    probs = np.zeros((n, len(STAGES)), dtype=np.float32)
    rows = np.nan_to_num(night.probabilities, nan=0.0)
    scored = night.stages != UNSCORED
    probs[night.epoch_index[scored]] = rows[scored]
    ax_p.stackplot(np.repeat(hours, 2)[1:-1], np.repeat(probs.T, 2, axis=1),
                  colors=STAGE_COLORS, labels=STAGES, lw=0)
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("probability")
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

    # -- availability strip: one row per modality, coloured where usable
    avail = np.zeros((len(night.modalities), n), dtype=float)
    avail[:, night.epoch_index] = night.available.T
    ax_a.imshow(avail, aspect="auto", interpolation="nearest", vmin=0, vmax=1,
                cmap=ListedColormap(["#e0e0e0", "#4caf50"]),
                extent=(hours[0], hours[-1], len(night.modalities) - 0.5, -0.5))
    ax_a.set_yticks(range(len(night.modalities)), list(night.modalities))
    ax_a.set_xlabel("hours from recording start")
    ax_a.tick_params(axis="y", labelsize=8)

    title = f"{night.recording_id} — {night.model.name}"
    if stats.tst_min:
        se = "n/a" if stats.sleep_efficiency_pct is None else f"{stats.sleep_efficiency_pct:.0f}%"
        title += f"   TST {stats.tst_min / 60:.1f} h, efficiency {se}"
    fig.suptitle(title, fontsize=11)
    return fig


def night_png(night: ScoredNight, *, stats: SleepStats | None = None) -> bytes:
    """PNG bytes of :func:`plot_night`."""
    return _to_png(plot_night(night, stats=stats))


def plot_cohort(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Distributions over the nights scored ``ok``: TST, sleep efficiency, stage percentages.

    Each panel is a box plot with every night drawn as a (deterministically) jittered point.
    """
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    n_other = len(rows) - len(ok)

    def values(key: str) -> np.ndarray:
        return np.array([r[key] for r in ok if r.get(key) is not None], dtype=float)

    panels = [
        ("Total sleep time", "hours", [("TST", values("tst_min") / 60.0, "#555555")]),
        ("Sleep efficiency", "%", [("SE", values("sleep_efficiency_pct"), "#555555")]),
        ("Stages (% of TST)", "%", [(name, values(f"{name.lower()}_pct"), STAGE_COLORS[code])
                                   for code, name in enumerate(STAGES) if code != WAKE]),
    ]
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=(1, 1, 2.4))
    rng = np.random.default_rng(0)
    for ax, (title, unit, groups) in zip(axes, panels):
        data = [g[1] for g in groups]
        pos = np.arange(1, len(groups) + 1)
        nonempty = [k for k, d in enumerate(data) if d.size]
        if nonempty:
            ax.boxplot([data[k] for k in nonempty], positions=pos[nonempty], widths=0.55,
                       showfliers=False, medianprops={"color": "black"})
        for k, (_, vals, color) in enumerate(groups):
            jitter = rng.uniform(-0.15, 0.15, vals.size)
            ax.scatter(pos[k] + jitter, vals, s=14, color=color, alpha=0.8, zorder=3,
                       edgecolor="white", linewidth=0.3)
        ax.set_xticks(pos, [g[0] for g in groups])
        ax.set_xlim(0.4, len(groups) + 0.6)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    suffix = f", {n_other} not scored" if n_other else ""
    fig.suptitle(f"Cohort: {len(ok)} nights scored{suffix}", fontsize=11)
    return fig


def cohort_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG bytes of :func:`plot_cohort`."""
    return _to_png(plot_cohort(rows))


__all__ = ["STAGE_COLORS", "cohort_png", "night_png", "plot_cohort", "plot_night"]
