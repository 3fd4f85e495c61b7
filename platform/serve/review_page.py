"""The review page's data: the queue of nights, one night's scoring, one epoch's signals, and a
technician's corrections, read from and written to the review roots the service was given.

The Serve app's ``/v1/review`` routes (:mod:`somnray.serve.app`) call :class:`ReviewPages` in a
worker thread and turn a :class:`ReviewProblem` into an HTTP error; the page itself
(``static/review/``) is plain HTML, CSS and JavaScript served by the same app.  Nothing here
imports Ray, so the answers are tested without a cluster.

Every file comes from :mod:`somnray.serve.review_files` (the review's layout and the corrections
format the import reads), :func:`somnray.serve.outputs.read_epochs` (the scoring) and
:class:`somnray.data.dataset.PreparedDataset` (the 100-Hz signals the review kept), and every
location is checked against the service's storage roots first (symbolic links followed), with
one answer whether it is missing or outside.  Errors name the review and the recording id only:
never a path, a root or a file's content.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from somnray.core.constants import (
    EPOCH_SAMPLES,
    EPOCH_SECONDS,
    SAMPLING_RATE_HZ,
    STAGES,
)
from somnray.core.errors import ConfigError, RecordingError
from somnray.core.storage import StorageLocation, StorageRoots

from .outputs import PROB_COLUMNS, epochs_uncertainty, output_name, read_epochs
from .review_files import (
    NIGHTS_FILE,
    QUEUE_CSV,
    corrections_location,
    read_corrections,
    read_summary,
    read_table,
    review_root,
    stage_code,
    write_corrections,
)
from .scored import check_recording_id

#: Files of the page (``somnray.serve`` package data), by the name the app serves them under.
STATIC_FILES: dict[str, str] = {"review.css": "text/css; charset=utf-8",
                                "review.js": "text/javascript; charset=utf-8"}
#: Samples of the 100-Hz signals folded into one min/max pair of a trace (4: 50 points per second,
#: enough for a 1280-px screen while keeping spikes and the EMG's envelope).
TRACE_BUCKET = 4
#: Epochs on each side of the chosen one whose signals a trace answer carries.
MAX_CONTEXT = 2
#: Prepared recordings kept in memory (each is a few tens of MB for a long night).
_CACHED_RECORDINGS = 2
#: Problems of a refused save listed in its answer (the rest are counted).
_LISTED_PROBLEMS = 10
#: What a night outside the roots and a missing night are both told.
_NO_NIGHT = "no night {rid!r} in review {review!r}"


class ReviewProblem(Exception):
    """A request the review pages cannot answer: the HTTP status and a message safe to show."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def page_file(name: str) -> bytes:
    """The bytes of the page's file ``name`` (``index.html`` or one of :data:`STATIC_FILES`)."""
    if name != "index.html" and name not in STATIC_FILES:
        raise ReviewProblem(404, f"no file {name!r} in the review page")
    return resources.files("somnray.serve").joinpath("static", "review", name).read_bytes()


@dataclass
class _Signals:
    """A prepared night's 100-Hz signals, as the traces read them."""

    rows: dict[int, int]                 # epoch position → row of the arrays
    signals: dict[str, np.ndarray]       # modality → (n, 3000) float16
    available: dict[str, np.ndarray]     # modality → (n,) bool
    scale: dict[str, float]              # modality → a robust amplitude of the night (display)


class ReviewPages:
    """Answers of the review page's API over the configured review roots.

    Parameters
    ----------
    reviews : mapping of str to str
        Review name → scored output root URI (:attr:`ServeConfig.reviews
        <somnray.serve.config.ServeConfig.reviews>`).
    roots : StorageRoots
        The service's storage roots: every location read or written must lie under them.
    storage_options : mapping, optional
        Filesystem options of remote roots.
    """

    def __init__(self, reviews: Mapping[str, str], roots: StorageRoots,
                 storage_options: Mapping[str, Any] | None = None):
        self._reviews = dict(reviews)
        self._roots = roots
        self._options = storage_options
        self._cache: OrderedDict[str, _Signals] = OrderedDict()
        self._cache_lock = threading.Lock()
        # One save at a time per night: a save reads the file, merges and writes it back.
        self._save_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # -- locations ---------------------------------------------------------------------------------
    def _confined(self, loc: StorageLocation) -> StorageLocation | None:
        return self._roots.locate(loc.uri, self._options)

    def _scored(self, review: str) -> StorageLocation:
        uri = self._reviews.get(review)
        located = None if uri is None else self._roots.locate(uri, self._options)
        if located is None:
            raise ReviewProblem(404, f"no review {review!r} on this service; see GET /v1/review")
        return located

    def _night(self, review: str, recording_id: str) -> tuple[StorageLocation, StorageLocation]:
        """The scored root and the night's folder, both confined; 400 for a malformed id."""
        try:
            check_recording_id(recording_id)
        except RecordingError as exc:
            raise ReviewProblem(400, exc.reason) from None
        scored = self._scored(review)
        folder = self._confined(scored.join(recording_id))
        if folder is None or not folder.exists():
            raise ReviewProblem(404, _NO_NIGHT.format(rid=recording_id, review=review))
        return scored, folder

    def _epochs(self, review: str, recording_id: str) -> tuple[StorageLocation, Any, dict[str, Any]]:
        scored, folder = self._night(review, recording_id)
        loc = self._confined(folder.join(output_name(recording_id, "epochs")))
        if loc is None or not loc.exists():
            raise ReviewProblem(404, _NO_NIGHT.format(rid=recording_id, review=review))
        try:
            table, meta = read_epochs(loc, self._options)
        except ConfigError:
            raise ReviewProblem(422, f"night {recording_id!r}: its per-epoch file is not a somnray "
                                     "scoring output") from None
        return scored, table, meta

    def _corrections(self, scored: StorageLocation, review: str, recording_id: str) -> dict[int, int]:
        loc = self._confined(corrections_location(scored, recording_id))
        if loc is None:
            raise ReviewProblem(404, _NO_NIGHT.format(rid=recording_id, review=review))
        try:
            return read_corrections(scored, recording_id, self._options)
        except ConfigError as exc:
            raise ReviewProblem(422, f"night {recording_id!r}: its saved corrections cannot be read "
                                     f"({'; '.join(exc.errors)})") from None

    def _table(self, review: str, scored: StorageLocation, name: str) -> list[dict[str, Any]]:
        if self._confined(review_root(scored).join(name)) is None:
            raise ReviewProblem(404, f"review {review!r} has no queue yet: run `somnray review` on it")
        try:
            return read_table(scored, name, self._options)
        except ConfigError:
            raise ReviewProblem(404, f"review {review!r} has no queue yet: run `somnray review` on it") from None

    # -- answers -------------------------------------------------------------------------------------
    def reviews(self) -> dict[str, Any]:
        """``{"reviews": [{"review": name}, ...]}``: what the page can open."""
        return {"reviews": [{"review": name} for name in self._reviews]}

    def nights(self, review: str) -> dict[str, Any]:
        """The review's nights in queue order (``nights.csv``) with how many epochs were corrected."""
        scored = self._scored(review)
        rows = self._table(review, scored, NIGHTS_FILE)
        for row in rows:
            try:
                row["n_corrected"] = len(read_corrections(scored, str(row["recording_id"]), self._options))
            except (ConfigError, RecordingError):
                row["n_corrected"] = None
        return {"review": review, "nights": rows}

    def night(self, review: str, recording_id: str) -> dict[str, Any]:
        """One night: per-epoch stage, probabilities, confidence, flags, availability; its queue and
        saved corrections."""
        scored, table, meta = self._epochs(review, recording_id)
        cols = table.column_names
        epochs = table.column("epoch").to_numpy().astype(int)
        probs = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                          for c in PROB_COLUMNS], axis=1)
        finite = np.isfinite(probs).all(axis=1)
        uncertainty = epochs_uncertainty(table)
        modalities = [c[len("available_"):] for c in cols if c.startswith("available_")]
        flags = [c[len("flag_"):] for c in cols if c.startswith("flag_")]
        queue = [row for row in self._queue_rows(review, scored) if str(row["recording_id"]) == recording_id]
        queue.sort(key=lambda r: r.get("rank") or 0)
        corrections = self._corrections(scored, review, recording_id)
        return {
            "review": review, "recording_id": recording_id, "n_epochs": int(epochs.size),
            "epoch_s": float(meta.get("epoch_s", EPOCH_SECONDS)),
            "start_offset_s": float(meta.get("start_offset_s", 0.0)),
            "stages": list(STAGES), "modalities": modalities,
            "epoch": epochs.tolist(),
            "stage": table.column("stage").to_numpy().astype(int).tolist(),
            "probabilities": [[round(float(p), 4) for p in row] if ok else None
                              for row, ok in zip(probs, finite)],
            **{k: [_finite(v) for v in values] for k, values in uncertainty.items()},
            "available": {m: table.column(f"available_{m}").to_numpy(zero_copy_only=False).astype(bool).tolist()
                          for m in modalities},
            "flags": {f: table.column(f"flag_{f}").to_numpy(zero_copy_only=False).astype(bool).tolist()
                      for f in flags},
            "queue": [{"epoch": int(r["epoch"]), "rank": r.get("rank"), "uncertainty": r.get("uncertainty"),
                       "reasons": r.get("reasons")} for r in queue],
            "corrections": {str(e): STAGES[s] for e, s in sorted(corrections.items())},
        }

    def _queue_rows(self, review: str, scored: StorageLocation) -> list[dict[str, Any]]:
        return self._table(review, scored, QUEUE_CSV)

    def traces(self, review: str, recording_id: str, epoch: int, context: int = 1) -> dict[str, Any]:
        """The 30-s signals of ``epoch`` and of ``context`` epochs on each side, as min/max pairs.

        Each modality's points are ``2 × 100 / TRACE_BUCKET`` per second (the minimum and maximum
        of each bucket of samples, in time order), null for an epoch the review holds no signal of.
        """
        if not 0 <= context <= MAX_CONTEXT:
            raise ReviewProblem(400, f"context must be 0 to {MAX_CONTEXT} epochs, got {context}")
        scored, table, _ = self._epochs(review, recording_id)
        epochs = table.column("epoch").to_numpy().astype(int)
        if epoch not in set(epochs.tolist()):
            raise ReviewProblem(404, f"night {recording_id!r} has no epoch {epoch}")
        sig = self._signals(review, scored, recording_id)
        shown = [e for e in range(epoch - context, epoch + context + 1) if e >= 0]
        out: dict[str, Any] = {}
        for m, arr in sig.signals.items():
            per_epoch = []
            for e in shown:
                row = sig.rows.get(e)
                per_epoch.append(None if row is None else _envelope(arr[row]))
            out[m] = {"epochs": per_epoch, "scale": sig.scale[m],
                      "available": [bool(sig.available[m][sig.rows[e]]) if e in sig.rows else False for e in shown]}
        return {"recording_id": recording_id, "epoch": epoch, "epochs": shown,
                "points_per_s": 2 * SAMPLING_RATE_HZ // TRACE_BUCKET, "signals": out}

    def _signals(self, review: str, scored: StorageLocation, recording_id: str) -> _Signals:
        from somnray.data.dataset import PreparedDataset

        try:
            prepared = read_summary(scored, self._options).get("prepared")
        except (ConfigError, ValueError):
            prepared = None
        folder = (self._confined(review_root(scored).join(*str(prepared).split("/")))
                  if isinstance(prepared, str) and prepared else None)
        if folder is None:
            raise ReviewProblem(404, f"review {review!r} holds no signals: run `somnray review` on it")
        key = f"{folder.uri}#{recording_id}"
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            rec = PreparedDataset.at(folder).read(recording_id)
        except (FileNotFoundError, ConfigError):
            raise ReviewProblem(404, f"review {review!r} holds no signals of night {recording_id!r} "
                                     "(only queued nights keep theirs)") from None
        modalities = [k[len("available_"):] for k in rec if k.startswith("available_")]
        signals = {m: rec[m] for m in modalities if rec.get(m) is not None}
        sig = _Signals(rows={int(e): i for i, e in enumerate(rec["epoch_index"].tolist())}, signals=signals,
                       available={m: rec[f"available_{m}"] for m in signals},
                       scale={m: _robust_scale(a) for m, a in signals.items()})
        with self._cache_lock:
            self._cache[key] = sig
            while len(self._cache) > _CACHED_RECORDINGS:
                self._cache.popitem(last=False)
        return sig

    def save(self, review: str, recording_id: str, changes: Any) -> dict[str, Any]:
        """Merge ``changes`` (``{epoch: stage name, or null to clear}``) into the night's saved
        corrections and write them atomically; returns every correction now saved.

        Raises
        ------
        ReviewProblem
            400 for anything but an object of epoch numbers of this night to stage names
            (``W N1 N2 N3 REM``, also ``R``) or null, every problem listed.
        """
        scored, table, meta = self._epochs(review, recording_id)
        valid = set(table.column("epoch").to_numpy().astype(int).tolist())
        parsed, problems = _parse_changes(changes, valid)
        if problems:
            more = f"; and {len(problems) - _LISTED_PROBLEMS} more" if len(problems) > _LISTED_PROBLEMS else ""
            raise ReviewProblem(400, f"corrections of night {recording_id!r} not saved: "
                                     + "; ".join(problems[:_LISTED_PROBLEMS]) + more)
        if self._confined(corrections_location(scored, recording_id)) is None:
            raise ReviewProblem(404, _NO_NIGHT.format(rid=recording_id, review=review))
        with self._lock_for(review, recording_id):
            saved = self._corrections(scored, review, recording_id)
            for epoch, code in parsed.items():
                if code is None:
                    saved.pop(epoch, None)
                else:
                    saved[epoch] = code
            write_corrections(scored, recording_id, saved, self._options,
                              start_offset_s=float(meta.get("start_offset_s", 0.0)))
        return {"review": review, "recording_id": recording_id, "saved": len(parsed),
                "corrections": {str(e): STAGES[s] for e, s in sorted(saved.items())}}

    def _lock_for(self, review: str, recording_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._save_locks.setdefault((review, recording_id), threading.Lock())


def _parse_changes(changes: Any, valid: set[int]) -> tuple[dict[int, int | None], list[str]]:
    """``{epoch: code or None}`` of a save request's ``corrections`` object, and its problems."""
    if not isinstance(changes, Mapping) or not changes:
        return {}, ['send {"corrections": {"<epoch>": "W|N1|N2|N3|REM" or null, ...}} with at least one epoch']
    parsed: dict[int, int | None] = {}
    problems: list[str] = []
    for key, stage in changes.items():
        try:
            epoch = int(key)
        except (TypeError, ValueError):
            problems.append(f"epoch {str(key)[:20]!r} is not a number")
            continue
        if epoch not in valid:
            problems.append(f"epoch {epoch} is not an epoch of this night")
            continue
        if stage is None:
            parsed[epoch] = None
            continue
        if not isinstance(stage, str):
            problems.append(f"epoch {epoch}: the stage must be a name ({', '.join(STAGES)}) or null, "
                            f"got a {type(stage).__name__}")
            continue
        try:
            parsed[epoch] = stage_code(stage, source=f"epoch {epoch}")
        except ValueError as exc:
            problems.append(str(exc)[:200])
    return parsed, problems


def _envelope(epoch: np.ndarray) -> list[float]:
    """Min and max of each :data:`TRACE_BUCKET` samples of one epoch, in time order, 3 decimals."""
    x = np.asarray(epoch, dtype=np.float32).reshape(EPOCH_SAMPLES // TRACE_BUCKET, TRACE_BUCKET)
    lo, hi = x.min(axis=1), x.max(axis=1)
    # The extreme that comes first in the bucket goes first, so a slope keeps its direction.
    first_is_min = x.argmin(axis=1) <= x.argmax(axis=1)
    pairs = np.where(first_is_min[:, None], np.stack([lo, hi], 1), np.stack([hi, lo], 1)).reshape(-1)
    pairs = np.nan_to_num(pairs, nan=0.0, posinf=0.0, neginf=0.0)
    return np.round(pairs.astype(np.float64), 3).tolist()


def _robust_scale(signal: np.ndarray) -> float:
    """A night's amplitude for display: the 99th percentile of |x| (one artefact does not set it)."""
    x = np.abs(np.asarray(signal, dtype=np.float32))
    x = x[np.isfinite(x)]
    value = float(np.percentile(x, 99)) if x.size else 0.0
    return round(value, 4) if value > 0 else 1.0


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


__all__ = ["MAX_CONTEXT", "STATIC_FILES", "TRACE_BUCKET", "ReviewPages", "ReviewProblem", "page_file"]
