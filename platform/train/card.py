"""Model cards: ``MODEL_CARD.md`` and its machine-readable twin ``model_card.json`` in every bundle.

A card says what a bundle is and what it may be used for, for a reviewer who opens the folder:
the architecture and its paper; the training data (dataset version and the SHA-256 of its
``manifest.json``, cohort profile and the montage it maps, nights and subjects, class histogram);
the recipe (every phase, where it started from — for another model, the exact bundle or
registered version and its weights' SHA-256 — and what it froze); validation metrics; the
calibration fitted at export (temperature, ECE before and after on the validation split, the
``low_confidence`` threshold and its rule, the reliability table); the metrics per
missing-modality scenario once ``somnray evaluate`` has scored the run (pooled, per-fold mean and
std, and each fold's own metrics, with each scenario's calibration error);
intended use and limitations; the SHA-256 of the weights; the somnray version.

:func:`model_card` builds the JSON document at export (:mod:`somnray.train.export`),
:func:`with_evaluation` adds an evaluation report to it, :func:`render_card` writes the Markdown
from the JSON (so the two never disagree) and :func:`update_card_evaluation` rewrites both in a
bundle folder, local or remote.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from somnray.core.storage import StorageLocation
from somnray.core.version import somnray_version
from somnray.models.bundle import BundleInfo

from .config import ExperimentConfig, PhaseConfig

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
CARD_JSON_FILE = "model_card.json"
CARD_FORMAT = "somnray-model-card/1"

INTENDED_USE = ("Research on automatic sleep staging (AASM stages W, N1, N2, N3, REM in 30-s epochs) "
                "of overnight polysomnography recorded like the training data: the same channels and "
                "montage, a comparable population and scoring rules.")
LIMITATIONS = (
    "Research software, not a medical device: not validated for diagnosis, treatment or any "
    "clinical decision; a qualified scorer reviews every hypnogram it produces.",
    "Performance is only known for the populations and montages listed under training data and "
    "for the evaluations below; other devices, derivations, ages or sleep disorders may score worse "
    "(fine-tune on a few labelled local nights and evaluate before relying on it).",
    "Validation metrics were measured on the validation subjects of the training split, which "
    "chose the checkpoint: they are optimistic; the evaluation table (held-out test subjects) is "
    "the estimate to quote.",
)


@dataclass(frozen=True)
class TrainingData:
    """What a card and a bundle record about the training data of the exported phase.

    Attributes
    ----------
    dataset_uri : str
    dataset : str or None
        ``<profile>-<version>`` of the prepared dataset (None: the manifest was unreadable).
    version, manifest_sha256, profile_name : str or None
    profile : dict or None
        The full cohort profile of the manifest, when it validates.
    nights, subjects : dict
        Per split part (``train``, ``validation``): counts.
    class_histogram : dict
        Stage name → labelled training epochs.
    modalities : list of str
        Modalities read for training.
    summary : dict
        Per modality, :func:`somnray.data.signal_summary.summarize_epochs` of training epochs.
    """

    dataset_uri: str
    dataset: str | None = None
    version: str | None = None
    manifest_sha256: str | None = None
    profile_name: str | None = None
    profile: dict[str, Any] | None = None
    nights: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, int] = field(default_factory=dict)
    class_histogram: dict[str, int] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _montage(profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """Modality → the channel labels, reference and band the profile reads it with."""
    out = {}
    for modality, spec in ((profile or {}).get("channels") or {}).items():
        out[modality] = {k: spec.get(k) for k in ("aliases", "reference", "band") if spec.get(k) is not None}
    return out


def _phase_recipe(phase: PhaseConfig, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """One phase of the card's recipe; ``source`` is the model it started from, as the run recorded it."""
    return {"name": phase.name, "init_from": phase.init_from, "source": dict(source) if source else None,
            "init_statistics": phase.init_statistics,
            "freeze": list(phase.freeze), "model_overrides": dict(phase.model.overrides),
            "optimizer": phase.optim.optimizer, "lr": phase.optim.lr, "group_lr": dict(phase.optim.group_lr),
            "schedule": phase.optim.schedule, "batch_size": phase.optim.batch_size,
            "max_steps": phase.optim.max_steps, "missing": {"kind": phase.missing.kind, "rate": phase.missing.rate},
            "dataset_uri": phase.data.dataset, "split": phase.data.split.model_dump(mode="json", exclude_none=True)}


def model_card(info: BundleInfo, cfg: ExperimentConfig, phase: PhaseConfig, data: TrainingData,
               paper: str) -> dict[str, Any]:
    """The ``model_card.json`` document of a freshly exported bundle (no evaluation yet)."""
    profile = data.profile or {}
    sources = info.extra.get("init_sources") or {}  # other models the phases started from (export)
    return {
        "format": CARD_FORMAT,
        "model": {"name": info.model, "overrides": dict(info.overrides), "paper": paper or None,
                  "modalities": list(info.modalities), "sequence_length": info.sequence_length,
                  "class_names": list(info.class_names)},
        "training_data": {
            "dataset_uri": data.dataset_uri, "dataset": data.dataset, "dataset_version": data.version,
            "manifest_sha256": data.manifest_sha256,
            "cohort_profile": data.profile_name,
            "profile_description": (profile.get("description") or "").strip() or None,
            "montage": _montage(data.profile), "normalization": profile.get("normalization"),
            "modalities": list(data.modalities), "nights": dict(data.nights), "subjects": dict(data.subjects),
            "class_histogram": dict(data.class_histogram)},
        "recipe": {"description": cfg.description, "run_uri": info.extra.get("run_uri"),
                   "exported_phase": phase.name, "phases": [_phase_recipe(p, sources.get(p.name)) for p in cfg.phases]},
        "validation_metrics": dict(info.extra.get("metrics") or {}),
        "calibration": dict(info.calibration or {}),
        "evaluation": None,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "weights_sha256": info.weights_sha256,
        "somnray_version": somnray_version(),
    }


#: The metrics a card keeps of each scenario (pooled and per fold): what its tables show, and F1 per class.
CARD_METRICS = ("n_epochs", "accuracy", "macro_f1", "kappa", "f1")


def _card_metrics(by_scenario: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Scenario → :data:`CARD_METRICS` of a report's metrics (the confusion matrix etc. stay in the report)."""
    return {s: {k: m.get(k) for k in CARD_METRICS if k in m} for s, m in by_scenario.items()}


def with_evaluation(card: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """``card`` with an evaluation report (``report.json`` of ``somnray evaluate``) as its evaluation.

    Keeps, per scenario, the pooled metrics and the per-fold mean and std, each fold's run
    (``folds``) and, in the same order, each fold's own metrics per scenario (``fold_metrics``),
    and per scenario the expected calibration error, calibrated and uncalibrated.
    """
    folds = report.get("folds") or []
    evaluation = {
        "dataset": report.get("dataset"), "dataset_uri": report.get("dataset_uri"),
        "stride": report.get("stride"), "folds": [f.get("run") for f in folds],
        "fold_metrics": [_card_metrics(f.get("metrics") or {}) for f in folds],
        "pooled": _card_metrics(report.get("pooled") or {}),
        "fold_mean": dict(report.get("fold_mean") or {}), "fold_std": dict(report.get("fold_std") or {}),
        "calibration": {s: {k: c.get(k) for k in ("n_epochs", "ece", "ece_uncalibrated")}
                        for s, c in (report.get("calibration") or {}).items()},
    }
    return {**card, "evaluation": evaluation}


def _pct(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _calibration_lines(cal: Mapping[str, Any]) -> list[str]:
    """The card's calibration section (``model.json``'s ``calibration``)."""
    lines = ["## Calibration", ""]
    if cal.get("temperature") is None:
        reason = cal.get("reason") or "no calibration recorded (exported before calibration was fitted)"
        return lines + [f"Not calibrated: {reason}. Scoring uses the model's own probabilities (T = 1) "
                        "and flags `low_confidence` below a top probability of 0.5.", ""]
    rule = cal.get("threshold_rule") or {}
    lines += [f"Temperature scaling fitted at export on {cal.get('n_epochs')} labelled validation epochs: "
              f"T = {cal['temperature']:.3f} (every output's probabilities are softmax(log p / T)).",
              f"Expected calibration error on the validation split: {_pct(cal.get('ece_before'))} % before, "
              f"{_pct(cal.get('ece_after'))} % after ({cal.get('n_bins')} equal-width bins of the top "
              "probability; the split also chose the checkpoint, so these are optimistic).",
              f"`low_confidence` threshold: {cal.get('low_confidence_threshold'):.3f} — {rule.get('rule')} "
              f"(target {rule.get('flag_error_rate')}).", ""]
    before = (cal.get("reliability") or {}).get("before") or []
    after = (cal.get("reliability") or {}).get("after") or []
    if after:
        lines += ["Reliability on the validation split (bins with epochs):", "",
                  "| Confidence | Epochs before | Acc before | Epochs after | Mean conf. after | Acc after |",
                  "|---|---:|---:|---:|---:|---:|"]
        for b, a in zip(before, after):
            if b["count"] or a["count"]:
                lines.append(f"| {b['lower']:.2f}–{b['upper']:.2f} | {b['count']} | {_pct(b['accuracy'])} | "
                             f"{a['count']} | {_pct(a['confidence'])} | {_pct(a['accuracy'])} |")
        lines.append("")
    return lines


def _fold_lines(ev: Mapping[str, Any]) -> list[str]:
    """The card's per-fold table: accuracy / macro-F1 (%) and κ of every fold under every scenario.

    Only with several folds (with one, the pooled row is that fold) and for cards evaluated since
    the card kept each fold's metrics (``fold_metrics``).
    """
    per_fold = ev.get("fold_metrics") or []
    if len(per_fold) < 2:
        return []
    lines = ["", "Per fold (Acc / MF1 %, κ):", "",
             "| Scenario | " + " | ".join(f"fold {i}" for i in range(len(per_fold))) + " |",
             "|---|" + "---:|" * len(per_fold)]
    for name in ev["pooled"]:
        cells = []
        for fold in per_fold:
            m = fold.get(name)
            kappa = None if m is None else m.get("kappa")
            cells.append("–" if m is None else f"{_pct(m.get('accuracy'))} / {_pct(m.get('macro_f1'))}, "
                                               f"{'–' if kappa is None else f'{kappa:.3f}'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_card(card: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` from the card document."""
    m, d, r = card["model"], card["training_data"], card["recipe"]
    lines = [f"# Model card: {m['name']}", "",
             f"- architecture: `{m['name']}` ({', '.join(m['modalities'])}; windows of "
             f"{m['sequence_length']} epochs of 30 s; classes {', '.join(m['class_names'])})",
             f"- paper: {m.get('paper') or 'none recorded'}",
             f"- weights: `model.pt`, SHA-256 `{card.get('weights_sha256')}`",
             f"- somnray version: {card.get('somnray_version')}", "",
             "## Intended use", "", card["intended_use"], "", "## Limitations", ""]
    lines += [f"- {x}" for x in card["limitations"]]
    lines += ["", "## Training data", "",
              f"- dataset: `{d.get('dataset')}` (version {d.get('dataset_version')}) at `{d['dataset_uri']}`",
              f"- manifest SHA-256: `{d.get('manifest_sha256')}`",
              f"- cohort profile: `{d.get('cohort_profile')}`"
              + (f" — {d['profile_description']}" if d.get("profile_description") else ""),
              f"- normalisation: {d.get('normalization')}; modalities read: {', '.join(d['modalities'])}",
              "- nights / subjects: " + ", ".join(f"{part} {n} / {d['subjects'].get(part, '?')}"
                                                  for part, n in d["nights"].items())]
    for modality, mont in d["montage"].items():
        lines.append(f"- montage {modality}: " + "; ".join(f"{k} {v}" for k, v in mont.items()))
    hist = d["class_histogram"]
    if hist:
        lines += ["", "| " + " | ".join(hist) + " |", "|" + "---:|" * len(hist),
                  "| " + " | ".join(str(v) for v in hist.values()) + " |"]
    lines += ["", "## Recipe", "", r.get("description") or "", "",
              "| Phase | Starts from | Frozen | Optimizer | lr | Steps | Missing |", "|---|---|---|---|---:|---:|---|"]
    for p in r["phases"]:
        lr = f"{p['lr']:g}" + (" (" + ", ".join(f"{g} {v:g}" for g, v in p["group_lr"].items()) + ")"
                               if p["group_lr"] else "")
        start = p["init_from"] or "scratch"
        if p.get("source"):  # the exact weights, whatever the alias or folder holds now
            start += f" = `{p['source']['checkpoint_uri']}`, weights `{p['source']['weights_sha256'][:12]}`"
        lines.append(f"| {p['name']} | {start} | {', '.join(p['freeze']) or '–'} | "
                     f"{p['optimizer']} | {lr} | {p['max_steps']} | {p['missing']['kind']} {p['missing']['rate']:g} |")
    val = card.get("validation_metrics") or {}
    kappa = val.get("val_kappa")
    lines += ["", f"Exported phase: `{r['exported_phase']}` of run `{r.get('run_uri')}`; validation "
              f"(checkpoint selection): accuracy {_pct(val.get('val_accuracy'))} %, macro-F1 "
              f"{_pct(val.get('val_macro_f1'))} %, κ {'–' if kappa is None else f'{kappa:.3f}'}", ""]
    lines += _calibration_lines(card.get("calibration") or {})
    lines += ["## Evaluation", ""]
    ev = card.get("evaluation")
    if not ev:
        lines.append("Not evaluated yet: `somnray evaluate RUN_URI --data DATASET_URI` adds the metrics "
                     "per missing-modality scenario here.")
    else:
        lines += [f"On `{ev.get('dataset')}`, {len(ev['folds'])} fold(s), stride {ev.get('stride')}; "
                  "pooled, and per-fold mean ± std (%).", "",
                  "| Scenario | Epochs | Acc | MF1 | κ | Acc (folds) | MF1 (folds) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, pm in ev["pooled"].items():
            mean, std = ev["fold_mean"].get(name, {}), ev["fold_std"].get(name, {})
            lines.append(f"| {name} | {pm.get('n_epochs')} | {_pct(pm.get('accuracy'))} | {_pct(pm.get('macro_f1'))} | "
                         f"{pm.get('kappa', float('nan')):.3f} | {_pct(mean.get('accuracy'))}±{_pct(std.get('accuracy'))} | "
                         f"{_pct(mean.get('macro_f1'))}±{_pct(std.get('macro_f1'))} |")
        lines += _fold_lines(ev)
        calibration = ev.get("calibration") or {}
        if calibration:
            lines += ["", "Calibration error per scenario (ECE %, calibrated / uncalibrated): "
                      + "; ".join(f"{name} {_pct(c.get('ece'))} / {_pct(c.get('ece_uncalibrated'))}"
                                  for name, c in calibration.items())]
    return "\n".join(lines) + "\n"


def card_files(card: Mapping[str, Any]) -> dict[str, bytes]:
    """File name → bytes of both card files."""
    return {CARD_JSON_FILE: json.dumps(card, indent=2, sort_keys=False, default=str).encode(),
            CARD_FILE: render_card(card).encode()}


def update_card_evaluation(bundle: StorageLocation, report: Mapping[str, Any]) -> bool:
    """Add an evaluation report to the card of the bundle at ``bundle``; False if it has no card."""
    loc = bundle.join(CARD_JSON_FILE)
    if not loc.exists():
        log.info("%s has no %s (exported before model cards): not updated", bundle.uri, CARD_JSON_FILE)
        return False
    card = with_evaluation(json.loads(loc.read_text()), report)
    for name, blob in card_files(card).items():
        bundle.join(name).atomic_write_bytes(blob)
    return True


__all__ = ["CARD_FILE", "CARD_JSON_FILE", "CARD_METRICS", "INTENDED_USE", "LIMITATIONS", "TrainingData", "card_files",
           "model_card", "render_card", "update_card_evaluation", "with_evaluation"]
