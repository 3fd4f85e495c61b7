"""The somnray scoring service: a Ray Serve application with a FastAPI ingress.

Four deployments, composed with deployment handles::

    HTTP ──► ScoringIngress (FastAPI: auth, limits, multipart parsing, JSON answers)
                 │ bytes                         │ cohort job requests
                 ▼                               ▼
             Preprocessor (CPU: read EDF,    CohortJobs (one replica: job registry, each job
             prepare the night)              runs score_cohort — Ray Data batch inference)
                 │ PreparedNight (by reference: never copied through the ingress)
                 ▼
             StageModel (torch; @serve.batch gathers windows of concurrent requests into one
             forward pass, splits the result back and averages per recording)

``POST /v1/score`` scores one uploaded EDF/EDF+/BDF night, ``POST /v1/cohorts`` starts a cohort
job whose progress ``GET /v1/cohorts/{job_id}`` reports and ``DELETE /v1/cohorts/{job_id}``
cancels, ``GET /healthz`` says whether the model is loaded, and ``GET /openapi.json`` (``/docs``)
describes it all.

Backpressure: each ingress replica runs at most ``max_concurrent_requests`` scoring requests and,
separately, ``max_cohort_requests`` cohort-job requests at once, lets ``max_waiting_requests`` more
of each kind wait for a slot, and answers the rest with 503 and ``Retry-After`` at once; the preprocessing and model deployments have their own
``max_ongoing_requests`` and queue limits (:class:`~somnray.serve.config.ServeConfig`), and a full
queue there is a 503 too.

:func:`build_app` binds the application from a :class:`~somnray.serve.config.ServeConfig`;
:func:`app_builder` is the same for Serve config files (``import_path:
somnray.serve.app:app_builder``, the config's fields as ``args``).
"""

# No `from __future__ import annotations` here: FastAPI must see the route parameters' real
# types (Request, HTTPAuthorizationCredentials) through Serve's class-based-view rewrite.

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from somnray.core.errors import ConfigError, RecordingError
from somnray.core.storage import resolve
from somnray.core.version import somnray_version
from somnray.data.profiles import list_profiles
from somnray.scoring.domain import DomainCheck, DomainThresholds

from .config import ServeConfig
from .jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, CohortJobs
from .loopback import is_loopback, restrict_replica_ports
from .review_page import STATIC_FILES, ReviewPages, ReviewProblem, page_file
from .scored import STANDARD_FLAGS, ModelInfo, ScoredNight, check_recording_id

log = logging.getLogger(__name__)

#: Form fields ``POST /v1/score`` accepts besides ``file``.
SCORE_FORM_FIELDS = ("profile", "channel_map", "recording_id", "stride")
#: Largest non-file form field (a channel map is a few hundred bytes).
_MAX_FIELD_BYTES = 64 * 1024
#: Largest body of a corrections save (a whole 24-h night of corrections is about 50 KB).
_MAX_CORRECTIONS_BYTES = 1024 * 1024
#: Headers of the review page's own files: nothing but the app's own scripts runs on it, and the
#: page's address never travels to another site (it may carry the token in its fragment).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


# -- payloads passed between deployments -----------------------------------------------------------
@dataclass(frozen=True)
class RequestProblem:
    """An expected, client-caused failure travelling back to the ingress as a value.

    Returned rather than raised so that a bad upload never looks like a replica failure (and its
    message is not wrapped in Ray's task-error text).
    """

    status: int
    message: str


@dataclass
class PreparedNight:
    """One prepared night in the model's terms, from :class:`Preprocessor` to :class:`StageModel`.

    Attributes
    ----------
    recording_id : str
    epoch_index : ndarray
        ``(n,)`` position of each epoch in the recording.
    signals : dict of str to ndarray
        ``(n, 3000)`` float32 per modality the night has (absent modalities left out, so the
        model drops or imputes them as its family does).
    available : ndarray
        ``(n, M)`` bool, columns in the model's modality order.
    warnings : list of str
        Non-identifying preparation warnings (optional channel missing, ...).
    channels : dict of str to str
        Modality → the EDF signal it was read from (shown in the outputs).
    input_sha256, profile_sha256 : str or None
        SHA-256 of the uploaded bytes and of the profile they were read with (the lineage).
    domain_shift : DomainCheck, optional
        How the night compares with the model's training data (computed here, where the prepared
        night is; the model deployment only sees the model's inputs).
    """

    recording_id: str
    epoch_index: np.ndarray
    signals: dict[str, np.ndarray]
    available: np.ndarray
    warnings: list[str] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=dict)
    input_sha256: str | None = None
    profile_sha256: str | None = None
    domain_shift: DomainCheck | None = None

    @property
    def n_epochs(self) -> int:
        """Number of epochs."""
        return int(self.epoch_index.shape[0])


@dataclass
class ScoreResult:
    """What the model deployment returns for one night: the scoring and preparation warnings."""

    night: ScoredNight
    warnings: list[str] = field(default_factory=list)


@dataclass
class WindowChunk:
    """Windows of one recording, the unit ``StageModel._forward_windows`` batches.

    ``signals``/``present`` are the whole night (shared, not copied); ``idx`` ``(W, L)`` picks
    the epochs of each window, so a batch only materialises the windows it runs.
    """

    recording_id: str
    signals: dict[str, np.ndarray]
    present: np.ndarray
    idx: np.ndarray

    @property
    def group(self) -> tuple[int, tuple[str, ...]]:
        """Windows that can share a forward pass: same length, same modalities present."""
        return int(self.idx.shape[1]), tuple(sorted(self.signals))


def _count_windows(chunks: list[WindowChunk]) -> int:
    # serve.batch's batch_size_fn: a batch is bounded by windows (memory), not by requests.
    return sum(int(c.idx.shape[0]) for c in chunks)


def weights_fingerprint(scorer: Any) -> str:
    """``sha256:<16 hex>`` of a scorer's ``model.json`` and weights: names the model in answers.

    The same bundle gets the same fingerprint wherever it is stored, and a client learns nothing
    about the server's paths from it.
    """
    import torch  # here: the ingress replicas never import torch

    weights = scorer.weights()
    digest = hashlib.sha256(weights.info_json.encode())
    for name, tensor in sorted(weights.state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


# -- deployments ---------------------------------------------------------------------------------
class Preprocessor:
    """CPU step: read an uploaded EDF/BDF and prepare it for the model (one night per call).

    Keeps only the model's weight-free :class:`~somnray.serve.inference.ModelSpec` (modalities,
    default profile, missing-modality policy: what channels a night must have); the bundle is
    loaded once on CPU to learn it, then dropped.
    """

    def __init__(self, config: ServeConfig):
        import torch

        from somnray.core.session import node_cpus
        from somnray.scoring.device import scoring_device
        from somnray.scoring.scorer import Scorer

        from .inference import ModelSpec

        restrict_replica_ports(config.host)
        self.spec = ModelSpec.of(Scorer.load(config.run_uri, device="cpu", precision="fp32"))
        self.default_profile = config.default_profile
        self.domain = DomainThresholds.from_mapping(config.domain_shift)

    def prepare(self, data: bytes, recording_id: str, profile: str | None,
                channel_map: dict[str, Any] | None) -> PreparedNight | RequestProblem:
        """Prepare one upload; a :class:`RequestProblem` (400/422) for anything wrong with it."""
        from somnray.data.recording import channels_used

        from .inference import (domain_check, input_sha256, model_inputs, prepare_for_scoring, profile_sha256,
                                scoring_profile)

        source = f"upload {recording_id}"  # never the client's file name: it may identify someone
        try:
            prof = scoring_profile(self.spec, profile or self.default_profile, channel_map)
        except ConfigError as exc:
            return RequestProblem(400, str(exc))
        try:
            rec = prepare_for_scoring(self.spec, data, recording_id=recording_id, profile=prof,
                                      psg_source=source)
        except RecordingError as exc:
            return RequestProblem(422, str(exc))
        except ConfigError as exc:
            return RequestProblem(400, str(exc))
        except Exception as exc:  # a reader choking on hostile bytes is still the upload's fault
            # The exception type only: a reader's message may quote header bytes (patient fields).
            log.warning("upload %s could not be read: %s", recording_id, type(exc).__name__)
            return RequestProblem(422, f"{source}: could not be read as EDF/EDF+/BDF "
                                       f"({type(exc).__name__})")
        signals, available = model_inputs(self.spec, rec)
        lacking = [m for m in self.spec.modalities if m not in signals]
        if self.spec.policy == "require" and lacking:
            return RequestProblem(422, f"{source}: model {self.spec.name!r} needs modalities "
                                       f"{list(self.spec.modalities)} but {lacking} is absent or unusable")
        return PreparedNight(recording_id=recording_id, epoch_index=np.asarray(rec.epoch_index),
                             signals=signals, available=available,
                             warnings=[str(w) for w in rec.info.get("warnings", [])],
                             channels=channels_used(rec.info),
                             input_sha256=input_sha256(data), profile_sha256=profile_sha256(prof),
                             domain_shift=domain_check(self.spec, rec, self.domain))


class StageModel:
    """The model deployment: windows of concurrent requests share forward passes.

    Holds a :class:`~somnray.scoring.scorer.Scorer`.  :meth:`score` cuts a night into windows of
    ``L`` epochs (:func:`~somnray.models.inference.window_index`, as
    :func:`~somnray.models.inference.predict_night` does), submits them in chunks to
    :meth:`_forward_windows` — a ``@serve.batch`` method whose batch is bounded by the number of
    windows (``ServeConfig.max_batch_windows``) — and averages each epoch's softmax over the windows
    covering it and calibrates them (:meth:`Scorer.night_probabilities
    <somnray.scoring.scorer.Scorer.night_probabilities>`).  Concurrent requests' chunks
    are concatenated into one forward pass (:meth:`Scorer.predict_windows
    <somnray.scoring.scorer.Scorer.predict_windows>`) when they have the same window length and
    modalities, and the results split back.
    """

    def __init__(self, config: ServeConfig):
        import torch

        from somnray.core.session import node_cpus
        from somnray.scoring.device import scoring_device
        from somnray.scoring.scorer import Scorer

        from .inference import ModelSpec

        restrict_replica_ports(config.host)
        if scoring_device(config.device).type == "cpu":
            # Sized before the model loads: the scorer's precision probe times the real thread count.
            torch.set_num_threads(config.model_replica_threads(node_cpus()))
        self.scorer = Scorer.load(config.run_uri, device=config.device, precision=config.precision)
        # Answers name the weights by fingerprint: the bundle's URI is a path on the server.
        self.spec = replace(ModelSpec.of(self.scorer), checkpoint_uri=weights_fingerprint(self.scorer))
        self.max_windows = config.max_batch_windows
        self._forward_windows.set_max_batch_size(config.max_batch_windows)
        self._forward_windows.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.loaded_at = time.time()
        self.stats = {"forward_passes": 0, "windows": 0, "max_recordings_in_a_pass": 0}

    def describe(self) -> dict[str, Any]:
        """Model identity, its threads and batching counters (for ``/healthz``)."""
        import torch

        s = self.scorer
        return {"name": s.info.model, "checkpoint_uri": self.spec.checkpoint_uri, "somnray_version": somnray_version(),
                "sequence_length": s.length, "modalities": list(s.modalities),
                "device": str(s.device), "precision": s.precision, "threads": torch.get_num_threads(),
                "missing_modality_policy": self.spec.policy, "batching": dict(self.stats)}

    async def score(self, prepared: PreparedNight | RequestProblem,
                    stride: int | None = None) -> ScoreResult | RequestProblem:
        """Stage a prepared night (a problem from the preprocessor passes through)."""
        from somnray.models.inference import window_index

        from .inference import night_lineage, scored_night

        if isinstance(prepared, RequestProblem):
            return prepared
        n = prepared.n_epochs
        if n == 0:
            return RequestProblem(422, f"upload {prepared.recording_id}: the recording has no epoch to score")
        try:
            self.scorer.check_stride(stride)
        except ConfigError as exc:
            return RequestProblem(400, "; ".join(exc.errors))
        idx = window_index(n, self.scorer.length, stride)  # (windows, L) epoch indices
        chunks = [WindowChunk(prepared.recording_id, prepared.signals, prepared.available,
                              idx[i:i + self.max_windows]) for i in range(0, len(idx), self.max_windows)]
        results = await asyncio.gather(*(self._forward_windows(c) for c in chunks))
        probabilities = self.scorer.night_probabilities(n, zip((c.idx for c in chunks), results))
        try:
            lineage = night_lineage(self.spec, stride=stride, input_digest=prepared.input_sha256,
                                    profile_digest=prepared.profile_sha256)
            night = scored_night(self.spec, prepared.recording_id, prepared.epoch_index, probabilities,
                                 prepared.available, prepared.channels, lineage, prepared.domain_shift)
            return ScoreResult(night=night, warnings=prepared.warnings)
        except RecordingError as exc:
            return RequestProblem(422, str(exc))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.05, batch_size_fn=_count_windows)
    async def _forward_windows(self, chunks: list[WindowChunk]) -> list[np.ndarray]:
        # The forward runs in a thread so the replica's event loop keeps taking requests (and
        # health checks) meanwhile; serve.batch runs one batch at a time.
        return await asyncio.to_thread(self._forward_sync, chunks)

    def _forward_sync(self, chunks: list[WindowChunk]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(chunks)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, c in enumerate(chunks):
            groups.setdefault(c.group, []).append(i)
        for (_, mods), members in groups.items():
            signals = {m: np.concatenate([chunks[i].signals[m][chunks[i].idx] for i in members])
                       for m in mods}  # (W, L, 3000) per modality
            present = np.concatenate([chunks[i].present[chunks[i].idx] for i in members])  # (W, L, M)
            probs = self.scorer.predict_windows(signals, present)  # (W, L, 5)
            offset = 0
            for i in members:
                w = chunks[i].idx.shape[0]
                out[i] = probs[offset:offset + w]
                offset += w
        self.stats["forward_passes"] += len(groups)
        self.stats["windows"] += _count_windows(chunks)
        self.stats["max_recordings_in_a_pass"] = max(self.stats["max_recordings_in_a_pass"],
                                                     len({c.recording_id for c in chunks}))
        return out  # type: ignore[return-value]


# -- HTTP schema ---------------------------------------------------------------------------------
class Problem(BaseModel):
    """An error answer."""

    detail: str = Field(description="What was wrong with the request, and what to do.")


class ModelDescription(BaseModel):
    """The model the service scores with."""

    name: str = Field(description="Registry name of the architecture.")
    checkpoint_uri: str = Field(description="Fingerprint of the served weights (`sha256:...`); the "
                                            "bundle's location stays on the server.")
    somnray_version: str
    sequence_length: int = Field(description="Window length L in 30-s epochs.")
    modalities: list[str] = Field(description="Modalities the model reads, in `availability` order.")
    device: str
    precision: str
    threads: int = Field(description="torch threads of the model replica answering.")
    missing_modality_policy: str = Field(description="drop | impute | require: what the model does "
                                                     "with a modality a night lacks.")
    batching: dict[str, int] = Field(default_factory=dict,
                                     description="Counters of the model replica answering.")


class Health(BaseModel):
    """Service health."""

    status: str = Field(description="`ok` when the model is loaded and answering.")
    version: str = Field(description="somnray version.")
    model: ModelDescription


class ScoreResponse(BaseModel):
    """Stages of one night, per 30-s epoch, with statistics and quality flags."""

    recording_id: str = Field(description="The id given, or a generated `upload-<uuid>` one.")
    n_epochs: int
    epoch_s: float = Field(description="Epoch length in seconds.")
    epoch_index: list[int] = Field(description="Position of each epoch from the recording start.")
    hypnogram: list[str] = Field(description="Stage name of each epoch: W N1 N2 N3 REM (UNS: unscored).")
    stages: list[int] = Field(description="Stage code of each epoch: 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored.")
    probabilities: list[list[float]] = Field(description="n x 5 class probabilities (W, N1, N2, N3, REM), "
                                                         "calibrated when the model has a fitted temperature.")
    confidence: list[float | None] = Field(default_factory=list,
                                           description="Per epoch, the highest class probability.")
    margin: list[float | None] = Field(default_factory=list,
                                       description="Per epoch, highest minus second-highest probability.")
    entropy: list[float | None] = Field(default_factory=list,
                                        description="Per epoch, the probabilities' entropy divided by "
                                                    "ln 5 (0 certain, 1 uniform).")
    availability: dict[str, list[bool]] = Field(description="Per modality, whether each epoch was usable.")
    quality: dict[str, list[bool]] = Field(description="Per-epoch flags: unscored, missing_modality, "
                                                       "low_confidence (and imputed_modality for "
                                                       "models that imagine a missing input).")
    confidence_summary: dict[str, Any] = Field(
        default_factory=dict, description="Mean confidence, fraction flagged low_confidence, expected "
                                          "number of errors, the low_confidence threshold and how the "
                                          "model was calibrated (fitted, temperature, threshold source).")
    modalities_used: list[str] = Field(description="Inputs each stage came from (`eeg+eog`, `eeg`, "
                                                   "`eeg+eog(imputed)`, `none`).")
    channels: dict[str, str] = Field(description="Modality -> the EDF signal it was read from (`C4-A1`, "
                                                 "`E1 - E2` for a derivation).")
    sleep_statistics: dict[str, Any] = Field(description="AASM statistics: TST, sleep efficiency, SOL, "
                                                         "WASO, REM latency, minutes and % per stage.")
    warnings: list[str] = Field(description="Preparation warnings (an optional channel missing, ...), and "
                                            "`domain shift: <reasons>` when the night lies outside the "
                                            "model's training data.")
    model: dict[str, Any] = Field(description="Model name, checkpoint URI, somnray version, weights "
                                              "SHA-256, registered model version (or null).")
    lineage: dict[str, Any] = Field(default_factory=dict,
                                    description="Upload SHA-256, window stride, profile SHA-256, "
                                                "the model's training dataset.")
    domain_shift: dict[str, Any] | None = Field(
        default=None, description="How the night compares with the model's training data: `flag`, "
                                  "`reasons`, `skipped`, every check and the thresholds (docs/domain-shift.md).")


class CohortRequest(BaseModel):
    """A cohort scoring job."""

    model_config = ConfigDict(extra="forbid")

    manifest_uri: str = Field(min_length=1, description="Cohort manifest (CSV/Parquet) or folder, "
                                                        "under a configured storage root.")
    output_uri: str = Field(min_length=1, description="Where per-night outputs and the cohort "
                                                      "summary go, under a configured storage root.")
    profile: str | None = Field(default=None, description="Shipped cohort profile name; default: "
                                                          "the service's or the model's.")
    plots: bool = Field(default=False, description="Also write hypnogram PNGs.")


class CohortAccepted(BaseModel):
    """A started cohort job."""

    job_id: str
    status_url: str


class Reject(BaseModel):
    """A recording the job could not score."""

    recording_id: str
    reason: str


class DomainShift(BaseModel):
    """A night the job scored outside the model's training data."""

    recording_id: str
    reasons: list[str]


class CohortStatus(BaseModel):
    """Progress of a cohort job."""

    job_id: str
    status: str = Field(description=f"{RUNNING} | {SUCCEEDED} | {FAILED} | {CANCELLED}")
    done: int = Field(description="Recordings finished (scored or rejected).")
    failed: int = Field(description="Recordings rejected.")
    total: int | None = Field(description="Recordings in the manifest (null until known).")
    rejects: list[Reject]
    domain_shifts: list[DomainShift] = Field(
        default_factory=list, description="Nights scored outside the model's training data, with the "
                                          "reasons (filled in when the job finishes).")
    output_uri: str
    error: str | None = Field(default=None, description="Why the job failed, if it did.")
    submitted_at: float
    started_at: float | None = Field(default=None, description="When the run began (Unix time).")
    last_progress_at: float | None = Field(
        default=None, description="When a recording last finished (or the run began): a running job "
                                  "whose last progress is old is stuck.")
    finished_at: float | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Invalid form field or parameter."},
    401: {"model": Problem, "description": "Missing or wrong bearer token."},
    503: {"model": Problem, "description": "Busy: retry after the `Retry-After` header's seconds."},
}

api = FastAPI(
    title="somnray scoring service",
    version=somnray_version(),
    description=(
        "Sleep staging of polysomnography recordings (EDF/EDF+/BDF) into W/N1/N2/N3/REM per 30-s "
        "epoch with a trained somnray model, robust to missing modalities.  Score one uploaded "
        "night, or start and follow cohort scoring jobs that write hypnograms, probabilities and "
        "sleep statistics to object storage, and review scored nights in the browser (`/review`).  "
        "Every route but `/healthz`, the API description and the review page's own files needs "
        "`Authorization: Bearer <token>` when the service was started with a token."
    ),
)
_bearer = HTTPBearer(auto_error=False, description="The service token (`SOMNRAY_SERVE_TOKEN`).")


class _BodyTooLarge(Exception):
    def __init__(self, seen: int):
        self.seen = seen


def _problem(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _busy(message: str, retry_after_s: float) -> HTTPException:
    # Retry-After is whole seconds (RFC 9110), rounded up as Serve's own 503s do.
    return HTTPException(status_code=503, detail=f"{message}; retry in {math.ceil(retry_after_s)} s",
                         headers={"Retry-After": str(math.ceil(retry_after_s))})


class _Capacity:
    """Requests of one kind an ingress replica runs at once, and how many more may wait for a slot;
    beyond that, requests are refused at once.

    A waiting request has not read its body yet, so it holds no upload in memory.  The waiting
    count needs no lock: a replica's routes all run on one event loop, and an acquire that does
    not block returns without yielding to it.
    """

    def __init__(self, what: str, limit: int, waiting: int, setting: str, retry_after_s: float):
        self.what, self.limit, self.max_waiting, self.setting = what, limit, waiting, setting
        self.retry_after_s = retry_after_s
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the request (waiting for one if allowed); else 503 with ``Retry-After``."""
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise _busy(f"the service is busy: {self.limit} {self.what} are in progress and "
                        f"{self.max_waiting} waiting on this replica ({self.setting})", self.retry_after_s)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


def _score_answer(result: ScoreResult) -> dict[str, Any]:
    night = result.night
    stats = night.sleep_stats()
    domain = night.domain_shift
    shifted = [f"domain shift: {'; '.join(domain.reasons)}"] if domain is not None and domain.flag else []
    return {
        "recording_id": night.recording_id,
        "n_epochs": night.n_epochs,
        "epoch_s": night.epoch_s,
        "epoch_index": night.epoch_index.tolist(),
        "hypnogram": night.stage_names,
        "stages": night.stages.astype(int).tolist(),
        # Every epoch is covered by at least one window, so the rows are finite; 5 decimals keep
        # a 24-h answer small without changing any argmax.
        "probabilities": np.round(night.probabilities.astype(np.float64), 5).tolist(),
        **{k: [None if math.isnan(x) else round(x, 5) for x in v.astype(np.float64).tolist()]
           for k, v in night.uncertainty().items()},
        "availability": {m: night.available[:, j].tolist() for j, m in enumerate(night.modalities)},
        "quality": {k: v.astype(bool).tolist() for k, v in night.quality.items()},
        "confidence_summary": night.confidence_summary(),
        "modalities_used": [str(u) for u in night.modalities_used],
        "channels": dict(night.channels),
        "sleep_statistics": stats.to_dict(),
        "warnings": [*result.warnings, *shifted],
        "model": night.model.to_dict(),
        "lineage": dict(night.lineage),
        "domain_shift": None if domain is None else domain.to_dict(),
    }


def night_from_answer(doc: Mapping[str, Any]) -> ScoredNight:
    """The :class:`ScoredNight` of a ``POST /v1/score`` answer (the JSON :func:`_score_answer` makes).

    A client that scored a night over HTTP writes the files ``somnray score`` writes with
    ``write_night_outputs(night_from_answer(answer), ...)``.  The answer's probabilities are rounded
    to 5 decimals; the standard quality flags are derived again from the night, as for any night.
    """
    modalities = tuple(doc["availability"])
    n = len(doc["epoch_index"])
    available = (np.stack([np.asarray(doc["availability"][m], dtype=bool) for m in modalities], axis=1)
                 if modalities else np.zeros((n, 0), dtype=bool))
    return ScoredNight(
        recording_id=doc["recording_id"], epoch_index=np.asarray(doc["epoch_index"], dtype=np.int64),
        probabilities=np.asarray(doc["probabilities"], dtype=np.float32),
        stages=np.asarray(doc["stages"], dtype=np.int8), modalities=modalities, available=available,
        model=ModelInfo.from_dict(doc["model"]), modalities_used=list(doc["modalities_used"]),
        quality={k: v for k, v in doc["quality"].items() if k not in STANDARD_FLAGS},
        channels=dict(doc.get("channels") or {}),
        epoch_s=float(doc["epoch_s"]), lineage=dict(doc.get("lineage") or {}),
        domain_shift=DomainCheck.from_dict(doc["domain_shift"]) if doc.get("domain_shift") else None)


# Everything the routes call must be defined above the ingress class: @serve.ingress serialises
# the FastAPI app (routes and the globals they use) when the class is decorated.
@serve.deployment(name="ScoringIngress")
@serve.ingress(api)
class ScoringIngress:
    """HTTP front: authentication, request limits, parsing, and the JSON answers."""

    def __init__(self, config: ServeConfig, token: str | None, preprocessor: DeploymentHandle,
                 model: DeploymentHandle, jobs: DeploymentHandle):
        restrict_replica_ports(config.host)
        self.config = config
        # Fail closed: a token in this replica's own environment counts even if the process that
        # built the app had none (on KubeRay the builder and the replicas may run in other pods).
        token = token or os.environ.get(config.token_env) or None
        self._token = token.encode() if token else None
        self.preprocessor = preprocessor
        self.model = model
        self.jobs = jobs
        self.profiles = tuple(list_profiles())
        # Separate capacity: uploads being scored never take the slots of cohort-job calls.
        self.scoring = _Capacity("scoring requests", config.max_concurrent_requests, config.max_waiting_requests,
                                 "ServeConfig.max_concurrent_requests", config.retry_after_s)
        self.cohort_calls = _Capacity("cohort-job requests", config.max_cohort_requests,
                                      config.max_waiting_requests, "ServeConfig.max_cohort_requests",
                                      config.retry_after_s)
        # The review page's calls read small files; they get slots of their own, as many as
        # cohort-job calls, so neither uploads nor jobs keep a technician waiting.
        self.review_calls = _Capacity("review requests", config.max_cohort_requests,
                                      config.max_waiting_requests, "ServeConfig.max_cohort_requests",
                                      config.retry_after_s)
        self.review = ReviewPages(config.reviews, config.roots)

    # -- helpers ---------------------------------------------------------------------------------
    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self._token is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        # Constant-time comparison: response timing must not reveal how much of a guess matched.
        if credentials is None or credentials.scheme.lower() != "bearer" or \
                not hmac.compare_digest(given, self._token):
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                                detail="missing or wrong bearer token: send 'Authorization: Bearer <token>'")

    def _check_profile(self, profile: str | None) -> str | None:
        if profile is not None and profile not in self.profiles:
            raise _problem(400, f"unknown profile {profile!r}; shipped profiles: {list(self.profiles)}")
        return profile

    async def _read_form(self, request: Request) -> tuple[bytes, dict[str, str]]:
        """The uploaded file and the other form fields, enforcing the body size limit."""
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        limit = self.config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                raise _problem(400, f"Content-Length {declared!r} is not a number") from None
            if declared_n > limit:
                raise _problem(413, f"the request body is {declared_n} bytes; this service accepts "
                                    f"at most {limit} bytes (ServeConfig.max_upload_bytes)")
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _problem(415, f"expected a multipart/form-data upload with the recording in field "
                                f"'file', got content type {ctype or 'none'!r}")

        async def counted() -> AsyncIterator[bytes]:
            # Content-Length can lie or be absent (chunked): count what actually arrives and stop
            # reading as soon as the limit is passed.
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    raise _BodyTooLarge(seen)
                yield chunk

        parser = MultiPartParser(request.headers, counted(), max_files=1,
                                 max_fields=len(SCORE_FORM_FIELDS), max_part_size=_MAX_FIELD_BYTES)
        try:
            form = await parser.parse()
        except _BodyTooLarge as exc:
            raise _problem(413, f"the request body passed {limit} bytes (at least {exc.seen} sent); "
                                f"this service accepts at most {limit} bytes") from None
        except MultiPartException as exc:
            raise _problem(400, f"malformed multipart upload: {exc.message}") from None
        try:
            fields: dict[str, str] = {}
            upload: UploadFile | None = None
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "file":
                        raise _problem(400, f"unexpected file field {key!r}: send the recording as 'file'")
                    upload = value
                elif key in SCORE_FORM_FIELDS:
                    fields[key] = value
                else:
                    raise _problem(400, f"unknown form field {key!r}; accepted: "
                                        f"['file', {', '.join(repr(f) for f in SCORE_FORM_FIELDS)}]")
            if upload is None:
                raise _problem(400, "no file: send the EDF/EDF+/BDF recording in form field 'file'")
            data = await upload.read()
        finally:
            await form.close()
        return data, fields

    def _parse_fields(self, fields: dict[str, str]) -> tuple[str, str | None, dict[str, Any] | None, int | None]:
        recording_id = fields.get("recording_id") or f"upload-{uuid.uuid4().hex}"
        try:
            check_recording_id(recording_id)
        except RecordingError as exc:
            raise _problem(400, exc.reason) from None
        profile = self._check_profile(fields.get("profile") or self.config.default_profile)
        channel_map = None
        if fields.get("channel_map"):
            try:
                channel_map = json.loads(fields["channel_map"])
            except json.JSONDecodeError as exc:
                raise _problem(400, f"channel_map is not valid JSON ({exc.msg}); expected an object "
                                    'such as {"eeg": "EEG Fpz-Cz"}') from None
            # Entries are checked by scoring_profile, which names the bad one.
            if not isinstance(channel_map, dict):
                raise _problem(400, 'channel_map must be a JSON object of modality -> EDF label, '
                                    'derivation or list of them, such as {"eeg": ["C4-A1", '
                                    '"C3-A2"], "eog": {"signal": "E1", "reference": "E2"}}')
        stride = None
        if fields.get("stride"):
            try:
                stride = int(fields["stride"])
            except ValueError:
                raise _problem(400, f"stride must be an integer number of epochs, got {fields['stride']!r}") from None
        return recording_id, profile, channel_map, stride

    async def _review_answer(self, method: Any, *args: Any) -> Any:
        """Run a :class:`ReviewPages` method off the event loop; its problems become HTTP errors."""
        async with self.review_calls.slot():
            try:
                return await asyncio.to_thread(method, *args)
            except ReviewProblem as exc:
                raise _problem(exc.status, exc.message) from None
            except OSError as exc:
                # A storage failure's message may name server paths: the type only.
                log.warning("review request failed on storage: %s", type(exc).__name__)
                raise _problem(503, f"the review's storage could not be read ({type(exc).__name__}); "
                                    "retry later") from None

    # -- routes ----------------------------------------------------------------------------------
    @api.get("/healthz", response_model=Health, tags=["service"],
             summary="Whether the model is loaded, and which",
             responses={503: {"model": Problem, "description": "The model is not answering."}})
    async def healthz(self) -> Health:
        """Answers 200 once the model replica has loaded its bundle; no token needed."""
        try:
            model = await asyncio.wait_for(self.model.describe.remote(), timeout=10)
        except Exception as exc:  # pragma: no cover - replica down / still starting
            raise _problem(503, f"the model deployment is not answering ({type(exc).__name__})") from None
        return Health(status="ok", version=somnray_version(), model=ModelDescription(**model))

    @api.post(
        "/v1/score", response_model=ScoreResponse, tags=["scoring"],
        summary="Score one uploaded night",
        responses={**_ERRORS,
                   413: {"model": Problem, "description": "The upload is larger than the limit."},
                   415: {"model": Problem, "description": "Not a multipart/form-data request."},
                   422: {"model": Problem, "description": "Not an EDF/BDF, truncated, or lacking "
                                                          "the channels the model needs."}},
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "The EDF, EDF+ or BDF recording."},
                "profile": {"type": "string", "description": "Shipped cohort profile name (channel "
                                                             "aliases, filters); default: the model's."},
                "channel_map": {"type": "string", "description": "JSON object modality -> EDF signal "
                                                                 'label, derivation or list of them tried '
                                                                 'in order, e.g. {"eeg": ["C4-A1", '
                                                                 '"C3-A2"], "eog": {"signal": "E1", '
                                                                 '"reference": "E2"}}.'},
                "recording_id": {"type": "string", "description": "Id for the answer (letters, digits, "
                                                                  ". _ - + = @); default: generated."},
                "stride": {"type": "integer", "description": "Window stride in epochs (1..L); "
                                                             "default L."},
            }}}}}},
    )
    async def score(self, request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> dict[str, Any]:
        """Stage every 30-s epoch of one EDF/EDF+/BDF night and compute its sleep statistics.

        The recording's header (patient, recording fields) and the uploaded file name are never
        used: the answer is identified by `recording_id` only.
        """
        self._authorize(credentials)
        async with self.scoring.slot():
            data, fields = await self._read_form(request)
            recording_id, profile, channel_map, stride = self._parse_fields(fields)
            prepared = self.preprocessor.prepare.remote(data, recording_id, profile, channel_map)
            # The prepared night goes from the preprocessor to the model by reference.
            try:
                result = await self.model.score.remote(prepared, stride)
            except BackPressureError:
                raise _busy("the service is busy: the preprocessing or model queue is full",
                            self.config.retry_after_s) from None
        if isinstance(result, RequestProblem):
            raise _problem(result.status, result.message)
        return _score_answer(result)

    @api.post("/v1/cohorts", response_model=CohortAccepted, status_code=202, tags=["cohorts"],
              summary="Start scoring a cohort",
              responses={**_ERRORS,
                         403: {"model": Problem, "description": "A URI outside the storage roots."},
                         429: {"model": Problem, "description": "Too many cohort jobs running."}})
    async def start_cohort(self, body: CohortRequest, request: Request,
                           credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                           ) -> CohortAccepted:
        """Score every recording of a manifest in the background (Ray Data batch inference).

        Both URIs must lie under a storage root the service was started with
        (`--storage-root`); outputs are written per night plus a cohort summary.
        """
        self._authorize(credentials)
        async with self.cohort_calls.slot():
            return await self._start_cohort(body, request)

    async def _start_cohort(self, body: CohortRequest, request: Request) -> CohortAccepted:
        roots = self.config.roots
        if not roots:
            raise _problem(403, "cohort jobs are not enabled on this service")
        located = {}
        for name in ("manifest_uri", "output_uri"):
            uri = getattr(body, name)
            try:
                resolve(uri)
            except ConfigError as exc:
                raise _problem(400, f"{name} {uri!r}: {'; '.join(exc.errors)}") from None
            # The answer names the client's URI only: never the roots, never whether it exists.
            located[name] = roots.locate(uri)
            if located[name] is None:
                raise _problem(403, f"{name} {uri!r} is outside the storage roots this service may use")
        profile = self._check_profile(body.profile or self.config.default_profile)
        if not await asyncio.to_thread(located["manifest_uri"].exists):
            raise _problem(400, f"manifest_uri {body.manifest_uri!r} does not exist")
        job_id = await self.jobs.submit.remote(body.manifest_uri, body.output_uri, profile, body.plots)
        if job_id is None:
            raise _problem(429, f"{self.config.max_cohort_jobs} cohort job(s) are already running "
                                f"(ServeConfig.max_cohort_jobs); retry when one has finished")
        return CohortAccepted(job_id=job_id, status_url=f"{request.url.path.rstrip('/')}/{job_id}")

    @api.get("/v1/cohorts/{job_id}", response_model=CohortStatus, tags=["cohorts"],
             summary="Progress of a cohort job",
             responses={**_ERRORS, 404: {"model": Problem, "description": "No job with this id."}})
    async def cohort_status(self, job_id: str,
                            credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                            ) -> dict[str, Any]:
        """Status, recordings done and rejected (with why), and the output URI of a job."""
        self._authorize(credentials)
        async with self.cohort_calls.slot():
            state = await self.jobs.status.remote(job_id)
        if state is None:
            raise _problem(404, f"no cohort job {job_id!r}")
        return state

    @api.delete("/v1/cohorts/{job_id}", response_model=CohortStatus, tags=["cohorts"],
                summary="Cancel a cohort job",
                responses={**_ERRORS, 404: {"model": Problem, "description": "No job with this id."}})
    async def cancel_cohort(self, job_id: str,
                            credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                            ) -> dict[str, Any]:
        """Cancel a running job: it is `cancelled` at once and its work on the cluster stops.

        The nights it finished keep their complete outputs; submitting the same job again
        scores only the rest.  A finished job is left as it is (its state is returned).
        """
        self._authorize(credentials)
        async with self.cohort_calls.slot():
            state = await self.jobs.cancel.remote(job_id)
        if state is None:
            raise _problem(404, f"no cohort job {job_id!r}")
        return state

    # -- review page -----------------------------------------------------------------------------
    @api.get("/review", tags=["review"], summary="The review page (HTML; no token needed to load it)",
             response_class=Response, responses={200: {"content": {"text/html": {}}}})
    async def review_page(self) -> Response:
        """The browser page for reviewing scored nights.  It holds no data: it asks the token once
        (or reads it from the address's `#token=` fragment, which browsers never send) and sends
        it with each API call."""
        return Response(page_file("index.html"), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @api.get("/review/static/{name}", tags=["review"], summary="The review page's script and style",
             response_class=Response)
    async def review_static(self, name: str) -> Response:
        """`review.js` and `review.css`; anything else is 404."""
        if name not in STATIC_FILES:
            raise _problem(404, f"no file {name!r} in the review page")
        return Response(page_file(name), media_type=STATIC_FILES[name], headers=_PAGE_HEADERS)

    @api.get("/v1/review", tags=["review"], summary="The reviews this service serves",
             responses={401: _ERRORS[401]})
    async def review_list(self, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                          ) -> dict[str, Any]:
        """`{"reviews": [{"review": name}]}`, one per review root (`--review`), named by its last
        folder name."""
        self._authorize(credentials)
        return await self._review_answer(self.review.reviews)

    @api.get("/v1/review/{review}/nights", tags=["review"], summary="A review's nights, most errors first",
             responses={**_ERRORS, 404: {"model": Problem, "description": "No such review, or no queue yet."}})
    async def review_nights(self, review: str,
                            credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                            ) -> dict[str, Any]:
        """The rows of the review's `nights.csv` (rank, expected errors, reasons, ...) and
        `n_corrected`, the epochs whose corrections are saved."""
        self._authorize(credentials)
        return await self._review_answer(self.review.nights, review)

    @api.get("/v1/review/{review}/nights/{recording_id}", tags=["review"], summary="One night's scoring",
             responses={**_ERRORS, 404: {"model": Problem, "description": "No such night."}})
    async def review_night(self, review: str, recording_id: str,
                           credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                           ) -> dict[str, Any]:
        """Per epoch: position, stage, probabilities, confidence, availability and flags; the
        night's queued epochs (most uncertain first) and its saved corrections."""
        self._authorize(credentials)
        return await self._review_answer(self.review.night, review, recording_id)

    @api.get("/v1/review/{review}/nights/{recording_id}/epochs/{epoch}", tags=["review"],
             summary="One epoch's signals",
             responses={**_ERRORS, 404: {"model": Problem, "description": "No such night, epoch or signal."}})
    async def review_traces(self, review: str, recording_id: str, epoch: int, context: int = 1,
                            credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                            ) -> dict[str, Any]:
        """The 30-s EEG/EOG/EMG of the epoch and of `context` epochs on each side (0-2), as
        min/max pairs at 50 points per second with each night's display scale."""
        self._authorize(credentials)
        return await self._review_answer(self.review.traces, review, recording_id, epoch, context)

    @api.post("/v1/review/{review}/nights/{recording_id}/corrections", tags=["review"],
              summary="Save corrections of one night",
              responses={**_ERRORS, 404: {"model": Problem, "description": "No such night."},
                         413: {"model": Problem, "description": "The body is larger than 1 MiB."}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["corrections"], "additionalProperties": False,
                  "properties": {"corrections": {
                      "type": "object", "description": 'Epoch position -> stage name (W N1 N2 N3 REM) '
                                                       'or null to clear, e.g. {"12": "N2", "13": null}.',
                      "additionalProperties": {"type": ["string", "null"]}}}}}}}})
    async def review_save(self, review: str, recording_id: str, request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                          ) -> dict[str, Any]:
        """Merge the given epochs into the night's `<id>_corrections.csv` (beside its scored
        outputs, written atomically) and return every correction now saved."""
        self._authorize(credentials)  # before the body is read
        body = await request.body()
        if len(body) > _MAX_CORRECTIONS_BYTES:
            raise _problem(413, f"the corrections body is {len(body)} bytes; at most "
                                f"{_MAX_CORRECTIONS_BYTES} are accepted")
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _problem(400, 'the body is not JSON: send {"corrections": {"<epoch>": "N2", ...}}') from None
        if not isinstance(doc, dict) or set(doc) != {"corrections"}:
            raise _problem(400, 'send exactly {"corrections": {"<epoch>": "W|N1|N2|N3|REM" or null, ...}}')
        return await self._review_answer(self.review.save, review, recording_id, doc["corrections"])


# -- application builders ------------------------------------------------------------------------
def build_app(config: ServeConfig) -> Application:
    """Bind the scoring application for ``config`` (pass the result to ``serve.run``).

    The bearer token is resolved here (``config.token``, else the ``config.token_env`` variable of
    the process building the app) and handed to the ingress replicas.
    """
    # Callers over a full deployment queue get BackPressureError (the ingress: 503), HTTP
    # clients over the proxy's queue a 503 from Serve; both with Retry-After.
    backpressure = BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s)
    preprocessor = serve.deployment(
        Preprocessor, name="Preprocessor", num_replicas=config.preprocess_replicas,
        max_queued_requests=config.preprocess_max_queued_requests, backpressure_config=backpressure,
        ray_actor_options={"num_cpus": config.preprocess_num_cpus})
    if config.preprocess_max_ongoing_requests is not None:
        preprocessor = preprocessor.options(max_ongoing_requests=config.preprocess_max_ongoing_requests)
    model = serve.deployment(
        StageModel, name="StageModel", num_replicas=config.model_replicas,
        # Windows of several requests wait in the batch queue at once.
        max_ongoing_requests=config.model_max_ongoing_requests or max(8, 2 * config.max_batch_windows),
        max_queued_requests=config.model_max_queued_requests, backpressure_config=backpressure,
        ray_actor_options={"num_cpus": config.model_num_cpus, "num_gpus": config.model_num_gpus})
    jobs = serve.deployment(
        CohortJobs, name="CohortJobs", num_replicas=1,
        # The registry itself only waits: its jobs run on the CPUs the replicas leave free.
        ray_actor_options={"num_cpus": 0})
    ingress = ScoringIngress.options(
        num_replicas=config.ingress_replicas,
        # Room for both kinds of request, running and waiting: the ingress refuses the excess itself.
        max_ongoing_requests=(config.max_concurrent_requests + config.max_cohort_requests
                              + 2 * config.max_waiting_requests),
        max_queued_requests=config.ingress_max_queued_requests, backpressure_config=backpressure,
        ray_actor_options={"num_cpus": config.ingress_num_cpus})
    return ingress.bind(
        config, config.resolved_token(),
        preprocessor.bind(config),
        model.bind(config),
        jobs.bind(config.run_uri, max_running=config.max_cohort_jobs, workers=config.cohort_workers,
                  default_profile=config.default_profile, cpus_per_job=config.cohort_num_cpus,
                  reserved_cpus=config.replica_cpus(), loopback_only=is_loopback(config.host),
                  storage_roots=config.storage_roots, domain_shift=config.domain_shift),
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Serve config-file entry point: ``import_path: somnray.serve.app:app_builder``.

    ``args`` holds :class:`ServeConfig` fields (``run_uri`` required); every invalid field is
    reported at once.
    """
    return build_app(ServeConfig.from_mapping(args, source="serve application args"))


__all__ = ["CohortRequest", "PreparedNight", "RequestProblem", "ScoreResponse", "ScoringIngress",
           "StageModel", "Preprocessor", "api", "app_builder", "build_app"]
