"""Model–technician agreement on the reviewed epochs of a scored cohort.

The technician's stage is the reference (rows of the confusion matrix), the model's the
prediction (columns); metrics are :mod:`somnray.train.metrics`' (accuracy, Cohen's κ, per-stage
F1), over every reviewed epoch the model staged.  Epochs the model left unscored are counted
apart (``model_unscored``).  Note that reviewed epochs are the ones the model was least sure of
(the queue), plus those the technician changed: agreement there is far below the model's
agreement over whole nights, which is the point of reviewing them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from somnray.core.constants import STAGES
from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve
from somnray.serve import review_files as rf
from somnray.serve.outputs import OUTPUT_SUFFIXES, read_epochs, read_stats_documents
from somnray.train.metrics import StagingMetrics, confusion_matrix

#: File of the agreement report in the review folder.
AGREEMENT_FILE = "agreement.json"


def reviewed_pairs(scored: str | StorageLocation, storage_options: Mapping[str, Any] | None = None
                   ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per night with corrections: ``(epochs, technician stages, model stages)`` of its reviewed epochs."""
    root = resolve(scored, storage_options)
    out = {}
    for doc in read_stats_documents(root):
        rid = doc["recording_id"]
        corrections = rf.read_corrections(root, rid)
        if not corrections or doc.get("status") != "ok":
            continue
        table, _ = read_epochs(root.join(rid, rid + OUTPUT_SUFFIXES["epochs"]))
        model = dict(zip(np.asarray(table["epoch"].to_numpy(zero_copy_only=False)).tolist(),
                         np.asarray(table["stage"].to_numpy(zero_copy_only=False)).tolist()))
        epochs = np.array(sorted(e for e in corrections if e in model), dtype=np.int64)
        out[rid] = (epochs, np.array([corrections[e] for e in epochs.tolist()], np.int64),
                    np.array([model[e] for e in epochs.tolist()], np.int64))
    return out


def agreement(pairs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The agreement report of :func:`reviewed_pairs` (JSON-ready).

    Keys: ``n_nights``, ``n_reviewed``, ``model_unscored``, ``n_changed``, ``accuracy``, ``kappa``,
    ``macro_f1``, ``f1`` (per stage), ``confusion`` (``{"rows": "technician", "columns": "model",
    "stages", "counts"}``) and ``nights`` (per night: ``recording_id``, ``n_reviewed``, ``n_changed``,
    ``accuracy``).
    """
    tech = np.concatenate([p[1] for p in pairs.values()]) if pairs else np.zeros(0, np.int64)
    model = np.concatenate([p[2] for p in pairs.values()]) if pairs else np.zeros(0, np.int64)
    staged = model >= 0
    metrics = StagingMetrics.from_confusion(confusion_matrix(tech[staged], model[staged]))
    nights = []
    for rid, (_, t, m) in sorted(pairs.items()):
        ok = m >= 0
        nights.append({"recording_id": rid, "n_reviewed": int(t.size), "n_changed": int((t != m).sum()),
                       "accuracy": float((t[ok] == m[ok]).mean()) if ok.any() else None})
    return {"n_nights": len(pairs), "n_reviewed": int(tech.size), "model_unscored": int((~staged).sum()),
            "n_changed": int((tech != model).sum()),
            "accuracy": _num(metrics.accuracy), "kappa": _num(metrics.kappa), "macro_f1": _num(metrics.macro_f1),
            "f1": {s: float(v) for s, v in zip(STAGES, metrics.f1)},
            "confusion": {"rows": "technician", "columns": "model", "stages": list(STAGES),
                          "counts": [list(r) for r in metrics.confusion]},
            "nights": nights}


def _num(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (no epoch) → null in JSON


def review_agreement(scored: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Agreement over a scored cohort's corrections, also written to ``review/agreement.json``.

    Raises
    ------
    ConfigError
        No night has corrections yet.
    """
    root = resolve(scored, storage_options)
    pairs = reviewed_pairs(root)
    if not pairs:
        raise ConfigError(root.uri, ["no corrections yet: correct epochs on the review page or "
                                     "`somnray review import` a corrected hypnogram first"])
    doc = agreement(pairs)
    rf.review_root(root).join(AGREEMENT_FILE).atomic_write_bytes((json.dumps(doc, indent=2) + "\n").encode())
    return doc


def format_agreement(doc: Mapping[str, Any]) -> str:
    """The report as a text table: overall figures, per-stage F1, the confusion matrix."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines = [f"{doc['n_reviewed']} reviewed epoch(s) in {doc['n_nights']} night(s); the technician changed "
             f"{doc['n_changed']}" + (f"; {doc['model_unscored']} the model had left unscored"
                                      if doc["model_unscored"] else ""),
             f"accuracy {pct(doc['accuracy'])}   Cohen's kappa "
             f"{'n/a' if doc['kappa'] is None else format(doc['kappa'], '.3f')}   macro-F1 {pct(doc['macro_f1'])}",
             "", "per-stage F1:  " + "  ".join(f"{s} {pct(v)}" for s, v in doc["f1"].items()), "",
             "technician \\ model  " + "".join(f"{s:>6}" for s in STAGES)]
    lines += [f"{s:<19}" + "".join(f"{c:>6}" for c in row) for s, row in zip(STAGES, doc["confusion"]["counts"])]
    return "\n".join(lines)


__all__ = ["AGREEMENT_FILE", "agreement", "format_agreement", "review_agreement", "reviewed_pairs"]
