"""The review queue of a scored cohort: nights ranked by expected errors, epochs by uncertainty.

:func:`build_review` reads every scored night of ``<scored>/`` (``somnray score``'s outputs),
ranks them, picks the epochs a technician should look at, and writes the review folder
(:mod:`somnray.serve.review_files`)::

    <scored>/review/nights.csv                       nights ranked by expected errors
    <scored>/review/queue.csv, queue.parquet         the queued epochs, most uncertain first
    <scored>/review/prepared/<profile>-<version>/    the queued nights' signals (a PreparedDataset)
    <scored>/review/<id>/<id>_review.edf             per queued night: EDF+ stages + review marks
    <scored>/review/summary.json                     how it was made (written last)

Scored outputs record no input path (privacy), only the input file's SHA-256: the queued nights
are therefore read again from the inputs ``somnray score`` was given, collected the same way
(:func:`somnray.serve.cohort.plan_rows`), prepared through the model's profile
(:func:`somnray.serve.inference.prepare_for_scoring`), and kept only when the file's SHA-256 and
the profile's equal the ones the night was scored with.  A night that fails any step is a
one-line reject; the others go on.

The ranking is pure numpy on per-night arrays (:class:`NightScores`, :func:`rank_nights`,
:func:`select_epochs`), unit-tested without files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from somnray.core.constants import STAGES, STATUS_OK
from somnray.core.errors import ConfigError, RecordingError, reject_reason
from somnray.core.storage import StorageLocation, resolve
from somnray.core.version import somnray_version
from somnray.data.dataset import PreparedDataset
from somnray.data.manifest import ManifestEntry
from somnray.serve import review_files as rf
from somnray.serve.outputs import OUTPUT_SUFFIXES, edf_annotations_bytes, read_epochs, read_stats_documents
from somnray.serve.scored import LOW_CONFIDENCE, ModelInfo, ScoredNight

from .uncertainty import epoch_uncertainty, uncertainty_score

log = logging.getLogger(__name__)

#: ``schema`` of ``summary.json``.
SUMMARY_SCHEMA = "somnray.review/1"
#: Default share of the scored epochs queued for review.
DEFAULT_FRACTION = 0.1
#: Below this margin (top minus second probability) an epoch is a ``close_call``.
CLOSE_CALL_MARGIN = 0.1
#: A night is marked ``low_confidence`` / ``missing_modality`` when at least this share of its
#: epochs is low-confidence / lacks a modality.
NIGHT_REASON_FRACTION = 0.2
#: Columns of ``nights.csv``, in order (the review page relies on these names).
NIGHT_COLUMNS = ("rank", "recording_id", "n_epochs", "n_scored", "expected_errors", "expected_error_rate",
                 "n_queued", "low_confidence_fraction", "missing_modality_fraction", "domain_shift", "reasons")
#: Columns of the queue before the ``available_<m>`` ones, in order (the page relies on these names).
QUEUE_COLUMNS = ("rank", "recording_id", "epoch", "onset_s", "stage", "confidence", "margin", "entropy",
                 "uncertainty", "domain_shift", "reasons")


# -- one night's numbers ---------------------------------------------------------------------------
@dataclass
class NightScores:
    """What the ranking needs of one scored night (arrays of its per-epoch table, in epoch order).

    Parameters
    ----------
    recording_id : str
    epoch, stage : ndarray
        Epoch positions and stage codes (-1 unscored).
    onset_s : ndarray
        Epoch onsets (s from the recording start).
    confidence, margin, entropy : ndarray
        :func:`~somnray.review.uncertainty.epoch_uncertainty` (NaN where unscored).
    available : dict of str to ndarray
        Per modality of the night: usable in the epoch.
    domain_shift : bool
        The night's recording differs from the model's training data (``domain_shift.flag`` of its
        statistics, or any ``flag_domain_shift`` epoch); False when the outputs do not say.
    domain_reasons : list of str
        Why, as the statistics say.
    low_confidence_threshold : float
        The night's threshold of the ``low_confidence`` flag.
    """

    recording_id: str
    epoch: np.ndarray
    onset_s: np.ndarray
    stage: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    available: dict[str, np.ndarray] = field(default_factory=dict)
    domain_shift: bool = False
    domain_reasons: list[str] = field(default_factory=list)
    low_confidence_threshold: float = LOW_CONFIDENCE

    @property
    def scored(self) -> np.ndarray:
        """Epochs with a stage and a confidence (the only ones a review can rank)."""
        return (self.stage >= 0) & np.isfinite(self.confidence)

    @property
    def uncertainty(self) -> np.ndarray:
        """:func:`~somnray.review.uncertainty.uncertainty_score` of every epoch (NaN unscored)."""
        return np.where(self.scored, uncertainty_score(self.confidence), np.nan)

    @property
    def expected_errors(self) -> float:
        """Sum over scored epochs of ``1 - confidence``: the errors the model itself expects."""
        return float(np.nansum(self.uncertainty))

    def missing_any(self) -> np.ndarray:
        """Per epoch: at least one of the night's modalities was unusable."""
        if not self.available:
            return np.zeros(self.epoch.shape, bool)
        return ~np.all(np.stack(list(self.available.values()), axis=1), axis=1)


def domain_shift_of(stats: Mapping[str, Any], table: pa.Table) -> tuple[bool, list[str]]:
    """A night's domain-shift flag and reasons (not flagged when its outputs do not say)."""
    doc = stats.get("domain_shift") or {}
    flag = bool(doc.get("flag")) if isinstance(doc, Mapping) else False
    reasons = [str(r) for r in (doc.get("reasons") or [])] if isinstance(doc, Mapping) else []
    if "flag_domain_shift" in table.column_names:
        flag = flag or bool(np.asarray(table["flag_domain_shift"].to_numpy(zero_copy_only=False), bool).any())
    return flag, reasons


def night_scores(table: pa.Table, meta: Mapping[str, Any], stats: Mapping[str, Any]) -> NightScores:
    """:class:`NightScores` of a night's per-epoch table, its metadata and its statistics document."""
    col = lambda name: np.asarray(table[name].to_numpy(zero_copy_only=False))  # noqa: E731
    unc = epoch_uncertainty(table)
    modalities = list(meta.get("modalities") or [c[len("available_"):] for c in table.column_names
                                                  if c.startswith("available_")])
    flag, reasons = domain_shift_of(stats, table)
    return NightScores(
        recording_id=str(meta.get("recording_id") or stats["recording_id"]),
        epoch=col("epoch").astype(np.int64), onset_s=col("onset_s").astype(np.float64),
        stage=col("stage").astype(np.int64), **unc,
        available={m: col(f"available_{m}").astype(bool) for m in modalities
                   if f"available_{m}" in table.column_names},
        domain_shift=flag, domain_reasons=reasons,
        low_confidence_threshold=float(meta.get("low_confidence_threshold") or LOW_CONFIDENCE))


# -- ranking -------------------------------------------------------------------------------------------
def rank_nights(nights: Sequence[NightScores]) -> list[NightScores]:
    """Nights by expected number of errors, most first (ties: by recording id)."""
    return sorted(nights, key=lambda n: (-n.expected_errors, n.recording_id))


def queue_budget(n_scored: int, *, fraction: float | None = DEFAULT_FRACTION,
                 max_epochs: int | None = None) -> int:
    """How many epochs to queue: ``max_epochs`` if given, else ``round(fraction × n_scored)``
    (at least one when there is anything to review).

    Raises
    ------
    ConfigError
        A fraction outside (0, 1] or a negative ``max_epochs``.
    """
    if max_epochs is not None:
        if max_epochs < 0:
            raise ConfigError("--max-epochs", [f"must be >= 0, got {max_epochs}"])
        return min(int(max_epochs), n_scored)
    if fraction is None or not 0 < fraction <= 1:
        raise ConfigError("--fraction", [f"must lie in (0, 1], got {fraction}"])
    return min(n_scored, max(1, int(round(fraction * n_scored)))) if n_scored else 0


def select_epochs(nights: Sequence[NightScores], budget: int) -> list[tuple[int, int]]:
    """The ``budget`` most uncertain scored epochs over ``nights``, as ``(night position, row)``.

    Ordered by uncertainty (highest first); ties by smaller margin, then higher entropy, then the
    night's position in ``nights`` and the epoch, so the queue is deterministic.
    """
    keys = []
    for i, n in enumerate(nights):
        rows = np.flatnonzero(n.scored)
        keys.append(np.stack([-n.uncertainty[rows], n.margin[rows], -np.nan_to_num(n.entropy[rows]),
                              np.full(rows.size, i, np.float64), rows.astype(np.float64)], axis=1))
    if not keys or budget <= 0:
        return []
    table = np.concatenate(keys)
    order = np.lexsort(table.T[::-1])[:budget]
    return [(int(table[k, 3]), int(table[k, 4])) for k in order]


def epoch_reasons(night: NightScores, row: int) -> str:
    """Why an epoch is queued, ``;``-separated: ``low_confidence``, ``close_call``,
    ``missing_<m>`` per unusable modality, ``domain_shift`` (``uncertain`` when none applies)."""
    out = []
    if night.confidence[row] < night.low_confidence_threshold:
        out.append("low_confidence")
    if night.margin[row] < CLOSE_CALL_MARGIN:
        out.append("close_call")
    out += [f"missing_{m}" for m, ok in night.available.items() if not ok[row]]
    if night.domain_shift:
        out.append("domain_shift")
    return ";".join(out) or "uncertain"


def night_row(rank: int, night: NightScores, n_queued: int) -> dict[str, Any]:
    """The ``nights.csv`` row of a night."""
    scored = night.scored
    n_scored = int(scored.sum())
    low = float(np.mean(night.confidence[scored] < night.low_confidence_threshold)) if n_scored else 0.0
    missing = float(np.mean(night.missing_any())) if night.epoch.size else 0.0
    reasons = []
    if low >= NIGHT_REASON_FRACTION:
        reasons.append("low_confidence")
    if missing >= NIGHT_REASON_FRACTION:
        reasons.append("missing_modality")
    if night.domain_shift:
        reasons.append("domain_shift" + "".join(f": {r}" for r in night.domain_reasons[:1]))
        reasons += night.domain_reasons[1:]
    return {"rank": rank, "recording_id": night.recording_id, "n_epochs": int(night.epoch.size),
            "n_scored": n_scored, "expected_errors": round(night.expected_errors, 4),
            "expected_error_rate": round(night.expected_errors / n_scored, 6) if n_scored else 0.0,
            "n_queued": int(n_queued), "low_confidence_fraction": round(low, 6),
            "missing_modality_fraction": round(missing, 6), "domain_shift": bool(night.domain_shift),
            "reasons": ";".join(reasons)}


def queue_rows(nights: Sequence[NightScores], picks: Sequence[tuple[int, int]],
               modalities: Sequence[str]) -> list[dict[str, Any]]:
    """The queue rows of ``picks`` (from :func:`select_epochs`), ranked from 1, with
    ``available_<m>`` for each of ``modalities`` (None where a night lacks the modality)."""
    rows = []
    for rank, (i, r) in enumerate(picks, start=1):
        n = nights[i]
        row = {"rank": rank, "recording_id": n.recording_id, "epoch": int(n.epoch[r]),
               "onset_s": float(n.onset_s[r]), "stage": STAGES[int(n.stage[r])],
               "confidence": round(float(n.confidence[r]), 6), "margin": round(float(n.margin[r]), 6),
               "entropy": round(float(n.entropy[r]), 6), "uncertainty": round(float(n.uncertainty[r]), 6),
               "domain_shift": bool(n.domain_shift), "reasons": epoch_reasons(n, r)}
        row.update({f"available_{m}": (bool(n.available[m][r]) if m in n.available else None)
                    for m in modalities})
        rows.append(row)
    return rows


# -- files -------------------------------------------------------------------------------------------
def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return out.getvalue()


def _queue_parquet(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    types = {"rank": pa.int32(), "recording_id": pa.string(), "epoch": pa.int32(), "onset_s": pa.float64(),
             "stage": pa.string(), "domain_shift": pa.bool_(), "reasons": pa.string()}
    table = pa.table({c: pa.array([r[c] for r in rows],
                                  types.get(c, pa.bool_() if c.startswith("available_") else pa.float64()))
                      for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def marks_edf(table: pa.Table, meta: Mapping[str, Any], queued: Sequence[Mapping[str, Any]]) -> bytes:
    """The ``<id>_review.edf`` of a night: its stages as EDF+ annotations (as ``somnray score``'s
    ``<id>_annotations.edf``) plus one ``Review <rank>: …`` annotation over each queued epoch."""
    night = scored_night_of(table, meta)
    epoch_s = float(meta.get("epoch_s") or night.epoch_s)
    marks = [(float(q["onset_s"]), epoch_s,
              f"Review {q['rank']}: model {q['stage']} p={float(q['confidence']):.2f} ({q['reasons']})")
             for q in sorted(queued, key=lambda q: q["onset_s"])]
    return edf_annotations_bytes(night, marks)


def scored_night_of(table: pa.Table, meta: Mapping[str, Any]) -> ScoredNight:
    """A :class:`ScoredNight` rebuilt from a per-epoch table and its metadata (stages as scored)."""
    from .uncertainty import probabilities

    modalities = tuple(meta.get("modalities") or ())
    col = lambda name: np.asarray(table[name].to_numpy(zero_copy_only=False))  # noqa: E731
    available = (np.stack([col(f"available_{m}").astype(bool) for m in modalities], axis=1) if modalities
                 else np.zeros((table.num_rows, 0), bool))
    return ScoredNight(str(meta["recording_id"]), col("epoch"), probabilities(table).astype(np.float32),
                       modalities, available, ModelInfo.from_dict(meta["model"]),
                       stages=col("stage").astype(np.int8), epoch_s=float(meta.get("epoch_s") or 30),
                       start_offset_s=float(meta.get("start_offset_s") or 0.0),
                       low_confidence_threshold=float(meta.get("low_confidence_threshold") or LOW_CONFIDENCE))


# -- reading the scored cohort ----------------------------------------------------------------------
@dataclass
class ScoredCohortNight:
    """One ``ok`` night of a scored output root: its statistics, per-epoch table and metadata."""

    stats: dict[str, Any]
    table: pa.Table
    meta: dict[str, Any]

    @property
    def recording_id(self) -> str:
        return str(self.stats["recording_id"])


def read_scored_nights(scored: str | StorageLocation,
                       storage_options: Mapping[str, Any] | None = None
                       ) -> tuple[list[ScoredCohortNight], list[dict[str, str]]]:
    """Every night of a scored output root with status ``ok``, and a reject per unreadable one.

    Raises
    ------
    ConfigError
        The root holds no scored night at all.
    """
    root = resolve(scored, storage_options)
    nights, rejects = [], []
    docs = read_stats_documents(root)
    for doc in docs:
        rid = doc["recording_id"]
        if doc.get("status") != STATUS_OK:
            continue
        try:
            table, meta = read_epochs(root.join(rid, rid + OUTPUT_SUFFIXES["epochs"]))
            nights.append(ScoredCohortNight(doc, table, meta))
        except (ConfigError, OSError) as exc:
            rejects.append({"recording_id": rid, "reason": f"{rid}{OUTPUT_SUFFIXES['epochs']}: "
                                                           f"{_one_line(exc)}"})
    if not nights:
        raise ConfigError(root.uri, ["no scored night here (no <id>/<id>_sleep_stats.json with status "
                                     "ok): is this the --out of somnray score?"])
    return nights, rejects


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- the review --------------------------------------------------------------------------------------
@dataclass
class ReviewResult:
    """Outcome of :func:`build_review`.

    Attributes
    ----------
    review_uri : str
        The review folder ``<scored>/review``.
    prepared_uri : str
        The prepared dataset of the queued nights' signals.
    nights : int
        Scored nights ranked (``nights.csv`` rows).
    queued_nights, queued_epochs : int
        Nights with queued epochs, and the queue's length.
    scored_epochs : int
        Scored epochs of the nights the queue was drawn from.
    rejects : list of dict
        ``recording_id`` and ``reason`` of each night left out of the queue.
    """

    review_uri: str
    prepared_uri: str
    nights: int
    queued_nights: int
    queued_epochs: int
    scored_epochs: int
    rejects: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every queued night could be prepared, 2 when some were left out."""
        return 2 if self.rejects else 0


def build_review(scored: str, inputs: str | Sequence[str], *, fraction: float | None = DEFAULT_FRACTION,
                 max_epochs: int | None = None, nights: int | None = None, model: str | None = None,
                 profile: str | None = None, channel_map: Mapping[str, Any] | None = None,
                 id_from: str = "name", storage_options: Mapping[str, Any] | None = None,
                 progress: bool = False) -> ReviewResult:
    """Rank a scored cohort, queue its least certain epochs and write the review folder.

    Parameters
    ----------
    scored : str
        Output root of ``somnray score``.
    inputs : str or sequence of str
        The inputs ``somnray score`` was given (EDF/BDF files, folders, manifests): the queued
        nights are read again from them.
    fraction : float
        Share of the scored epochs (of the nights considered) to queue (default 0.1).
    max_epochs : int, optional
        Queue this many epochs instead of a fraction.
    nights : int, optional
        Consider only the nights with the most expected errors (default: all).
    model : str, optional
        The model bundle, run or ``models:/`` URI the nights were scored with (default: the
        ``checkpoint_uri`` their outputs record); only its profile and modalities are used.
    profile, channel_map, id_from
        As given to ``somnray score`` (``--profile``, ``--channel-map``, ``--id-from``).
    storage_options : mapping, optional
        Filesystem options of the scored root and the inputs.
    progress : bool
        Show a progress bar while the queued nights are prepared.

    Returns
    -------
    ReviewResult

    Raises
    ------
    ConfigError
        No scored night, bad options, unusable inputs, a model that cannot be loaded.
    """
    from tqdm.auto import tqdm

    from somnray.scoring.scorer import Scorer
    from somnray.serve.cohort import plan_rows
    from somnray.serve.config import CohortScoringOptions
    from somnray.serve.inference import ModelSpec

    if nights is not None and nights < 1:
        raise ConfigError("--nights", [f"must be >= 1, got {nights}"])
    root = resolve(scored, storage_options)
    review = rf.review_root(root)
    cohort, rejects = read_scored_nights(root, storage_options)
    by_id = {n.recording_id: n for n in cohort}
    ranked = rank_nights([night_scores(n.table, n.meta, n.stats) for n in cohort])
    considered = ranked[:nights] if nights else ranked
    n_scored = int(sum(n.scored.sum() for n in considered))
    budget = queue_budget(n_scored, fraction=None if max_epochs is not None else fraction, max_epochs=max_epochs)
    picks = select_epochs(considered, budget)
    queued_ids = list(dict.fromkeys(considered[i].recording_id for i, _ in picks))

    # Re-read the queued nights from the inputs, as somnray score read them.
    # The profile and modalities come from the model the queued (else the first ranked) nights record.
    first = by_id[queued_ids[0] if queued_ids else ranked[0].recording_id].stats["model"]
    scorer = Scorer.load(model or first["checkpoint_uri"], device="cpu", precision="fp32",
                         storage_options=storage_options)
    spec = ModelSpec.of(scorer)
    options = CohortScoringOptions(profile=profile, channel_map=channel_map, id_from=id_from,
                                   storage_options=storage_options)
    rows, profiles = plan_rows(inputs, spec, options)
    rows_by_id = {r["recording_id"]: r for r in rows}
    prepared: dict[str, Any] = {}
    entries: list[ManifestEntry] = []
    used_profile = None
    for rid in tqdm(queued_ids, desc="review: prepare queued nights", unit="night", disable=not progress):
        night = by_id[rid]
        try:
            row = rows_by_id.get(rid)
            if row is None:
                raise RecordingError("inputs", "no recording of this id among the inputs (give the inputs "
                                               "somnray score was given, with the same --id-from)", rid)
            prof = profiles[row["profile_key"]]
            if used_profile is not None and prof.name != used_profile.name:
                raise RecordingError(row["source"], f"read with profile {prof.name!r}, but this review holds "
                                                    f"{used_profile.name!r} nights: review one profile at a time "
                                                    "(--profile)", rid)
            rec = prepare_night(night, row, prof, spec, weights_sha256=scorer.weights_sha256,
                                storage_options=storage_options)
        except Exception as exc:  # one bad night never stops the rest
            reason, _ = reject_reason(exc, rows_by_id.get(rid, {}).get("source", rid))
            log.warning("left out of the review %s: %s", rid, reason)
            rejects.append({"recording_id": rid, "reason": reason})
            continue
        used_profile = prof
        prepared[rid] = rec
        entries.append(ManifestEntry(recording_id=rid, subject_id=row["subject_id"], psg=row["source"],
                                     profile=prof.name))

    # Epochs of nights that could not be prepared leave the queue (the page could not show them).
    keep = [(i, r) for i, r in picks if considered[i].recording_id in prepared]
    modalities = list(dict.fromkeys(m for n in considered for m in n.available))
    queue = queue_rows(considered, keep, modalities)
    queued_per_night: dict[str, list[dict[str, Any]]] = {}
    for q in queue:
        queued_per_night.setdefault(q["recording_id"], []).append(q)

    dataset_uri = write_prepared(review.join(rf.PREPARED_DIR), used_profile, entries, prepared) if prepared else None
    for rid, queued in queued_per_night.items():
        night = by_id[rid]
        review.join(rid, rid + rf.MARKS_SUFFIX).atomic_write_bytes(marks_edf(night.table, night.meta, queued))
    night_rows = [night_row(k, n, len(queued_per_night.get(n.recording_id, ())))
                  for k, n in enumerate(ranked, start=1)]
    columns = list(QUEUE_COLUMNS) + [f"available_{m}" for m in modalities]
    review.join(rf.NIGHTS_FILE).atomic_write_bytes(_csv_text(night_rows, NIGHT_COLUMNS).encode())
    review.join(rf.QUEUE_CSV).atomic_write_bytes(_csv_text(queue, columns).encode())
    review.join(rf.QUEUE_PARQUET).atomic_write_bytes(_queue_parquet(queue, columns))
    prepared_rel = (dataset_uri[len(review.uri.rstrip("/")) + 1:] if dataset_uri else None)
    summary = {
        "schema": SUMMARY_SCHEMA,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "somnray_version": somnray_version(),
        "prepared": prepared_rel,
        "uncertainty": "1 - confidence (the model's probability that its stage is wrong)",
        "options": {"fraction": None if max_epochs is not None else fraction, "max_epochs": max_epochs,
                    "nights": nights, "profile": None if profile is None else os.path.basename(str(profile)),
                    "channel_map": dict(channel_map) if channel_map else None, "id_from": id_from},
        "model": {"name": spec.name, "weights_sha256": scorer.weights_sha256,
                  "checkpoint_uri": spec.checkpoint_uri},
        "counts": {"nights": len(ranked), "nights_considered": len(considered),
                   "scored_epochs": n_scored, "budget": budget, "queued_epochs": len(queue),
                   "queued_nights": len(queued_per_night), "rejected": len(rejects)},
        "modalities": modalities,
        "rejected": sorted(rejects, key=lambda r: r["recording_id"]),
        "files": {"nights": rf.NIGHTS_FILE, "queue_csv": rf.QUEUE_CSV, "queue_parquet": rf.QUEUE_PARQUET,
                  "marks": {rid: f"{rid}/{rid}{rf.MARKS_SUFFIX}" for rid in queued_per_night}},
    }
    review.join(rf.SUMMARY_FILE).atomic_write_bytes((json.dumps(summary, indent=2) + "\n").encode())
    return ReviewResult(review_uri=review.uri, prepared_uri=dataset_uri or "", nights=len(ranked),
                        queued_nights=len(queued_per_night), queued_epochs=len(queue), scored_epochs=n_scored,
                        rejects=summary["rejected"])


def prepare_night(night: ScoredCohortNight, row: Mapping[str, Any], profile, spec, *,
                  weights_sha256: str | None, storage_options: Mapping[str, Any] | None = None):
    """Read and prepare a scored night again from its input ``row`` (:func:`plan_rows`), checked.

    Raises
    ------
    RecordingError
        The file is not the one that was scored (another SHA-256), the profile differs from the
        one it was scored with, the night was scored by other weights, or its epochs differ.
    """
    from somnray.serve.inference import input_sha256, prepare_for_scoring, profile_sha256

    rid, source = night.recording_id, row["source"]
    lineage = night.stats.get("lineage") or {}
    recorded_weights = (night.stats.get("model") or {}).get("weights_sha256")
    if weights_sha256 and recorded_weights and recorded_weights != weights_sha256:
        raise RecordingError(source, "scored by other weights than the model of this review "
                                     f"({recorded_weights[:12]}… vs {weights_sha256[:12]}…)", rid)
    loc = resolve(row["psg"], storage_options)
    data = loc.path if loc.is_local else loc.read_bytes()
    digest = input_sha256(data)
    if lineage.get("input_sha256") and digest != lineage["input_sha256"]:
        raise RecordingError(source, f"not the file night {rid} was scored from (SHA-256 {digest[:12]}… "
                                     f"≠ {lineage['input_sha256'][:12]}… recorded in its outputs)", rid)
    if lineage.get("profile_sha256") and profile_sha256(profile) != lineage["profile_sha256"]:
        raise RecordingError(source, "read with another profile or channel map than it was scored with: "
                                     "give somnray review the --profile/--channel-map somnray score had", rid)
    rec = prepare_for_scoring(spec, data, recording_id=rid, profile=profile, psg_source=source)
    scored_epochs = np.asarray(night.table["epoch"].to_numpy(zero_copy_only=False), np.int64)
    if not np.array_equal(np.asarray(rec.epoch_index, np.int64), scored_epochs):
        raise RecordingError(source, f"prepared into {rec.n_epochs} epochs, but {scored_epochs.size} were "
                                     "scored", rid)
    return dataclasses.replace(rec, subject_id=str(row.get("subject_id") or rid))


def write_prepared(parent: StorageLocation, profile, entries: Sequence[ManifestEntry],
                   recordings: Mapping[str, Any], *, labels: Mapping[str, np.ndarray] | None = None) -> str:
    """Write ``recordings`` (PreparedRecording by id) as a prepared dataset under ``parent``.

    The dataset is ``<parent>/<profile>-<version>`` (:meth:`PreparedDataset.create`) with its
    ``manifest.json`` built as ``somnray prepare`` builds it.  ``labels`` replaces the labels of
    the recordings it names.  Returns the dataset's URI.
    """
    from somnray.data.pipeline import manifest_document

    started = datetime.now(timezone.utc)
    # The version hashes the entries: another set of nights lands in another folder.
    dataset = PreparedDataset.create(parent.uri, profile, entries, parent.storage_options)
    statuses = []
    for e in entries:
        rec = recordings[e.recording_id]
        if labels is not None and e.recording_id in labels:
            rec = dataclasses.replace(rec, labels=np.asarray(labels[e.recording_id], np.int8))
        summary = dataset.write_recording(rec, profile.modalities)
        statuses.append({"recording_id": e.recording_id, "subject_id": e.subject_id, "split": e.split or "",
                         "status": STATUS_OK, "summary": json.dumps(summary, default=str), "reason": "",
                         "source": e.psg, "error_type": ""})
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    dataset.write_manifest(manifest_document(list(entries), statuses, profile, dataset.version, dataset, 0,
                                             seconds))
    return dataset.uri


__all__ = ["CLOSE_CALL_MARGIN", "DEFAULT_FRACTION", "NIGHT_COLUMNS", "QUEUE_COLUMNS", "NightScores",
           "ReviewResult", "ScoredCohortNight", "build_review", "domain_shift_of", "epoch_reasons",
           "marks_edf", "night_row", "night_scores", "prepare_night", "queue_budget", "queue_rows",
           "rank_nights", "read_scored_nights", "scored_night_of", "select_epochs", "write_prepared"]
