"""Cohort scoring jobs started over HTTP: a registry that runs them and reports their progress.

:class:`CohortJobs` is a plain class — the Serve app deploys it as the single-replica
``CohortJobs`` deployment, so every ingress replica talks to the same registry and the registry
lives and dies with the application (``serve.shutdown`` or a redeploy ends it; no detached actor is
left behind).  Each job runs :func:`somnray.serve.cohort.score_cohort` in a background thread of
that replica; ``score_cohort`` itself fans the work out as Ray Data batch inference over the
cluster, so the thread only waits and counts.  Its ``progress_callback`` feeds the job's counters.

Job state lives in memory: a restarted replica forgets its jobs (their outputs stay on storage,
and a resubmitted job skips the nights already scored, since ``score_cohort`` is resumable).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from somnray.core.storage import StorageRoots

from .config import CohortScoringOptions
from .loopback import bind_replica_grpc_to_loopback

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
#: Finished jobs kept for status queries; the oldest are forgotten beyond this.
MAX_FINISHED_JOBS = 1000

#: ``score_cohort``'s signature ``(run_uri, manifest_uri, output_uri, CohortScoringOptions)``,
#: injectable for tests of the registry alone.
CohortRunner = Callable[..., Any]


@dataclass
class CohortJob:
    """State of one cohort job (what ``GET /v1/cohorts/{job_id}`` returns)."""

    job_id: str
    manifest_uri: str
    output_uri: str
    profile: str | None
    plots: bool
    status: str = RUNNING
    done: int = 0
    failed: int = 0
    total: int | None = None
    rejects: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The JSON answer: progress, rejects (id and reason only), where outputs go."""
        doc = asdict(self)
        doc["rejects"] = [{"recording_id": r["recording_id"], "reason": r["reason"]} for r in self.rejects]
        for private in ("manifest_uri", "profile", "plots"):
            doc.pop(private)
        return doc


class CohortJobs:
    """Registry of cohort scoring jobs; each runs in its own thread.

    Parameters
    ----------
    run_uri : str
        The model every job scores with (a training run or bundle).
    max_running : int
        Jobs allowed at once; :meth:`submit` refuses more.
    workers : int, optional
        ``score_cohort``'s actor-pool size.
    default_profile : str, optional
        Profile of jobs submitted without one (None: the manifest's or the model's).
    runner : callable, optional
        Replaces :func:`somnray.serve.cohort.score_cohort` (tests of the registry alone).
    loopback_only : bool
        This registry is a replica of a service on a loopback address: keep the replica's
        internal gRPC port on loopback too (:mod:`somnray.serve.loopback`).
    storage_roots : sequence of str, optional
        Confine every job to these roots (``CohortScoringOptions.storage_roots``): its manifest,
        each row, each profile file and its output; an empty sequence refuses everything.  None
        (tests of the registry alone) does not confine.
    """

    def __init__(self, run_uri: str, *, max_running: int = 2, workers: int | None = None,
                 default_profile: str | None = None, runner: CohortRunner | None = None,
                 loopback_only: bool = False, storage_roots: Sequence[str] | None = None):
        if loopback_only:  # a replica of a loopback-only service (somnray.serve.loopback)
            bind_replica_grpc_to_loopback()
        self.run_uri = run_uri
        self.max_running = max_running
        self.workers = workers
        self.default_profile = default_profile
        self._runner = runner
        self.roots = None if storage_roots is None else StorageRoots(storage_roots)
        self._jobs: dict[str, CohortJob] = {}
        self._lock = threading.Lock()

    def submit(self, manifest_uri: str, output_uri: str, profile: str | None = None,
               plots: bool = False) -> str | None:
        """Start a job; returns its id, or None when ``max_running`` jobs are already running.

        (None rather than an exception: across a deployment handle an exception arrives wrapped
        in Ray's error text, and a busy registry is an ordinary answer, not a failure.)
        """
        with self._lock:
            if sum(j.status == RUNNING for j in self._jobs.values()) >= self.max_running:
                return None
            job = CohortJob(job_id=f"cohort-{uuid.uuid4().hex[:16]}", manifest_uri=manifest_uri,
                            output_uri=output_uri, profile=profile or self.default_profile, plots=plots)
            self._jobs[job.job_id] = job
            self._forget_old()
        threading.Thread(target=self._run, args=(job,), name=job.job_id, daemon=True).start()
        log.info("cohort job %s started: %s -> %s", job.job_id, manifest_uri, output_uri)
        return job.job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's public state, or None for an unknown id."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.public()

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every known job, newest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.submitted_at, reverse=True)
            return [j.public() for j in jobs]

    # -- internals -------------------------------------------------------------------------------
    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.status != RUNNING),
                          key=lambda j: j.finished_at or 0.0)
        for job in finished[:max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self._jobs[job.job_id]

    def _progress(self, job: CohortJob) -> Callable[[int, int, int], None]:
        def update(done: int, failed: int, total: int) -> None:
            with self._lock:
                # score_cohort counts `done` as nights with outputs; the API's `done` is every
                # night finished, rejected ones included, so that done == total at the end.
                job.done, job.failed, job.total = done + failed, failed, total
        return update

    def _run(self, job: CohortJob) -> None:
        runner = self._runner
        if runner is None:
            from .cohort import score_cohort as runner
        options = CohortScoringOptions(profile=job.profile, workers=self.workers, plots=job.plots,
                                       progress=False, progress_callback=self._progress(job),
                                       storage_roots=self.roots)
        try:
            result = runner(self.run_uri, job.manifest_uri, job.output_uri, options)
        except Exception as exc:  # the job fails, the service goes on
            log.warning("cohort job %s failed: %s: %s", job.job_id, type(exc).__name__, exc)
            with self._lock:
                job.status, job.error, job.finished_at = FAILED, f"{type(exc).__name__}: {exc}", time.time()
            return
        with self._lock:
            job.total = int(result.total)
            job.failed = int(result.rejected)
            job.done = int(result.scored + result.skipped + result.rejected)
            job.rejects = [dict(r) for r in result.rejects]
            job.status, job.finished_at = SUCCEEDED, time.time()
        log.info("cohort job %s succeeded: %d scored, %d skipped, %d rejected", job.job_id,
                 result.scored, result.skipped, result.rejected)


__all__ = ["CohortJob", "CohortJobs", "FAILED", "RUNNING", "SUCCEEDED"]
