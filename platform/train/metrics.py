"""Sleep-staging metrics: accuracy, macro-F1, Cohen's κ, per-class F1, confusion matrix.

All functions take integer label and prediction arrays of any shape and ignore epochs whose label
is -1 (movement, unscored, padding). Everything derives from one confusion matrix, with the
textbook formulas (no scikit-learn):

* accuracy = trace(C) / n;
* per-class F1 = 2·TP / (2·TP + FP + FN), and 0 for a class that is neither present nor
  predicted (so a fold without N1 counts N1 as 0, as scikit-learn's ``zero_division=0`` does);
* macro-F1 = unweighted mean of the five per-class F1 (docs/models.md §4.7);
* κ = (p_o − p_e) / (1 − p_e), with p_e from the row and column marginals; 0 when p_e = 1.

:func:`aggregate_folds` reports both conventions of the literature: metrics on the **pooled**
predictions of all folds (CIMSleepNet, cross-validation papers) and the **mean ± std** of the
per-fold metrics (CoRe-Sleep).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from somnray.core.constants import IGNORE_INDEX, STAGES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int = len(STAGES)) -> np.ndarray:
    """Counts ``C[true, predicted]`` over the epochs whose label is not -1.

    Raises
    ------
    ValueError
        If the shapes differ or a label / prediction is outside ``[0, n_classes)``.
    """
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(predictions).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions must have the same number of epochs, "
                         f"got {np.asarray(labels).shape} and {np.asarray(predictions).shape}")
    keep = y != IGNORE_INDEX
    y, p = y[keep].astype(np.int64), p[keep].astype(np.int64)
    for name, arr in (("labels", y), ("predictions", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            bad = sorted(set(arr[(arr < 0) | (arr >= n_classes)].tolist()))[:5]
            raise ValueError(f"{name} must lie in [0, {n_classes}) (or -1 for labels), got {bad}")
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (0 where the class is absent and never predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (TP + FP) + (TP + FN)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def accuracy_from_cm(cm: np.ndarray) -> float:
    """Fraction of scored epochs classified correctly (NaN when there are none)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def kappa_from_cm(cm: np.ndarray) -> float:
    """Cohen's κ from a confusion matrix (NaN when there are no epochs)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if not total:
        return float("nan")
    observed = np.trace(cm) / total
    expected = float((cm.sum(axis=0) * cm.sum(axis=1)).sum() / total ** 2)
    return float((observed - expected) / (1.0 - expected)) if expected < 1.0 else 0.0


@dataclass(frozen=True)
class StagingMetrics:
    """Metrics of one set of predictions.

    Attributes
    ----------
    n_epochs : int
        Scored epochs (label not -1).
    accuracy, macro_f1, kappa : float
        Overall metrics (fractions, not percent).
    f1 : tuple of float
        Per-class F1 in :data:`STAGES` order.
    confusion : tuple of tuple of int
        ``confusion[true][predicted]``.
    """

    n_epochs: int
    accuracy: float
    macro_f1: float
    kappa: float
    f1: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]

    @classmethod
    def from_confusion(cls, cm: np.ndarray) -> "StagingMetrics":
        """Metrics of a confusion matrix."""
        cm = np.asarray(cm, dtype=np.int64)
        f1 = per_class_f1(cm)
        return cls(int(cm.sum()), accuracy_from_cm(cm), float(f1.mean()), kappa_from_cm(cm),
                   tuple(float(v) for v in f1), tuple(tuple(int(v) for v in row) for row in cm))

    def as_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """Scalars for a metrics report: ``accuracy``, ``macro_f1``, ``kappa``, ``f1_W``..."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1,
               f"{prefix}kappa": self.kappa, f"{prefix}n_epochs": float(self.n_epochs)}
        out.update({f"{prefix}f1_{stage}": v for stage, v in zip(STAGES, self.f1)})
        return out

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return asdict(self)


def compute_metrics(labels: np.ndarray, predictions: np.ndarray) -> StagingMetrics:
    """All metrics of one set of predictions, ignoring label -1."""
    return StagingMetrics.from_confusion(confusion_matrix(labels, predictions))


@dataclass(frozen=True)
class FoldSummary:
    """Cross-fold report: metrics on pooled predictions and per-fold mean ± std (ddof 0)."""

    pooled: StagingMetrics
    folds: tuple[StagingMetrics, ...]
    mean: dict[str, float]
    std: dict[str, float]


def aggregate_folds(folds: Sequence[StagingMetrics]) -> FoldSummary:
    """Pool the folds' confusion matrices and summarise per-fold metrics.

    Pooling the confusion matrices is the same as computing the metrics on the concatenated
    predictions of all folds.
    """
    if not folds:
        raise ValueError("aggregate_folds needs at least one fold")
    pooled = StagingMetrics.from_confusion(sum(np.asarray(f.confusion) for f in folds))
    flat = [f.as_flat_dict() for f in folds]
    keys = [k for k in flat[0] if k != "n_epochs"]
    mean = {k: float(np.mean([d[k] for d in flat])) for k in keys}
    std = {k: float(np.std([d[k] for d in flat])) for k in keys}
    return FoldSummary(pooled, tuple(folds), mean, std)


def plot_confusion_matrix(cm: np.ndarray, path: str | Path, *, title: str = "",
                          normalize: bool = True) -> Path:
    """Write a confusion-matrix figure (rows: true stage, columns: predicted) to a PNG file.

    Parameters
    ----------
    cm : ndarray
        ``(5, 5)`` counts.
    path : str or Path
        Local output file (parent folders are created).
    title : str
        Figure title.
    normalize : bool
        Colour by row-normalised recall; each cell shows the fraction and the count.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless workers; never opens a window
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalize else cm
    fig = Figure(figsize=(5.2, 4.6), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(int(cm.max()), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    names = STAGES[: cm.shape[0]]
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            dark = shown[i, j] > (0.5 if normalize else cm.max() / 2)
            ax.text(j, i, f"{frac[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def format_report(metrics: StagingMetrics | Mapping[str, float]) -> str:
    """One line for logs: ``acc 0.873 | MF1 0.801 | κ 0.823 | F1 W 0.93 N1 0.50 ...``."""
    m = metrics.as_flat_dict() if isinstance(metrics, StagingMetrics) else dict(metrics)
    f1 = " ".join(f"{s} {m[f'f1_{s}']:.2f}" for s in STAGES if f"f1_{s}" in m)
    return f"acc {m['accuracy']:.3f} | MF1 {m['macro_f1']:.3f} | κ {m['kappa']:.3f} | F1 {f1}"
