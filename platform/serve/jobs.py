"""Cohort scoring jobs started over HTTP: a registry that runs them, reports their progress and
cancels them.

:class:`CohortJobs` is a plain class — the Serve app deploys it as the single-replica
``CohortJobs`` deployment, so every ingress replica talks to the same registry and the registry
lives and dies with the application (``serve.shutdown`` or a redeploy ends it; no detached actor is
left behind).  Each job runs :func:`somnray.serve.cohort.score_cohort` in its own Ray actor (no
CPU of its own: ``score_cohort`` fans the work out as Ray Data batch inference over the cluster),
watched by a thread of the registry that copies the actor's progress into the job.  Cancelling a
job kills its actor, and with it every task and scoring actor the run started; what it had
written stays complete (outputs are atomic), so a resubmitted job resumes.

Each job may hold a share of the cluster's CPUs (:func:`cohort_cpu_share`): what the service's
replicas leave free, split between the jobs allowed to run at once.  Single-night requests keep
their replicas' CPUs, and a job never waits for CPUs the replicas hold.

Job state lives in memory: a restarted replica forgets its jobs (their outputs stay on storage,
and a resubmitted job skips the nights already scored, since ``score_cohort`` is resumable).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from somnray.core.storage import StorageRoots
from somnray.scoring.domain import DomainThresholds

from .config import CohortScoringOptions
from .loopback import bind_replica_grpc_to_loopback

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
#: Finished jobs kept for status queries; the oldest are forgotten beyond this.
MAX_FINISHED_JOBS = 1000
#: How often (seconds) a job's watcher copies its progress and looks for a cancel request.
POLL_S = 1.0

#: ``score_cohort``'s signature ``(run_uri, manifest_uri, output_uri, CohortScoringOptions)``,
#: injectable for tests of the registry alone.
CohortRunner = Callable[..., Any]


def cohort_cpu_share(cluster_cpus: float, reserved_cpus: float, max_running: int) -> float:
    """CPUs one cohort job may hold: what the service's replicas leave free, per job slot.

    Parameters
    ----------
    cluster_cpus : float
        CPUs of the cluster.
    reserved_cpus : float
        CPUs the service's replicas reserve (:meth:`ServeConfig.replica_cpus
        <somnray.serve.config.ServeConfig.replica_cpus>`).
    max_running : int
        Jobs allowed at once.

    Returns
    -------
    float
        The share, rounded down to Ray's CPU granularity (1e-4); 0 when nothing is left.
    """
    free = max(0.0, cluster_cpus - reserved_cpus)
    return int(free / max_running * 1e4) / 1e4


@dataclass
class CohortJob:
    """State of one cohort job (what ``GET /v1/cohorts/{job_id}`` returns).

    ``started_at`` is when the run began; ``last_progress_at`` when the counts last changed (or
    the start): a running job whose ``last_progress_at`` stays old is stuck.
    """

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
    #: ``recording_id`` and ``reasons`` of each night the job scored outside the model's training data.
    domain_shifts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    last_progress_at: float | None = None
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The JSON answer: progress, rejects (id and reason only), where outputs go."""
        doc = asdict(self)
        doc["rejects"] = [{"recording_id": r["recording_id"], "reason": r["reason"]} for r in self.rejects]
        for private in ("manifest_uri", "profile", "plots"):
            doc.pop(private)
        return doc


class CohortRun:
    """The Ray actor running one job's :func:`~somnray.serve.cohort.score_cohort` (threaded:
    :meth:`progress` answers while :meth:`run` works)."""

    def __init__(self) -> None:
        self._progress: tuple[int, int, int | None] = (0, 0, None)

    def _update(self, done: int, failed: int, total: int) -> None:
        self._progress = (done, failed, total)

    def run(self, run_uri: str, manifest_uri: str, output_uri: str, options: CohortScoringOptions) -> Any:
        """Score the cohort; the :class:`~somnray.serve.cohort.CohortScoreResult`."""
        from .cohort import score_cohort

        return score_cohort(run_uri, manifest_uri, output_uri,
                            dataclasses.replace(options, progress_callback=self._update))

    def progress(self) -> tuple[int, int, int | None]:
        """``(done, failed, total)`` as ``score_cohort`` last reported them."""
        return self._progress


class CohortJobs:
    """Registry of cohort scoring jobs: each runs in its own actor, watched by a thread.

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
    cpus_per_job : float, optional
        CPUs each job may hold; None: :func:`cohort_cpu_share` of the cluster when the job starts.
    reserved_cpus : float
        CPUs the service's replicas hold (what :func:`cohort_cpu_share` leaves them).
    runner : callable, optional
        Replaces :func:`somnray.serve.cohort.score_cohort`, run in a thread of this process
        instead of an actor (tests of the registry alone).
    loopback_only : bool
        This registry is a replica of a service on a loopback address: keep the replica's
        internal gRPC port on loopback too (:mod:`somnray.serve.loopback`).
    domain_shift : mapping, optional
        Thresholds of the domain-shift check of every night
        (:meth:`somnray.scoring.domain.DomainThresholds.from_mapping`; default: the defaults).
    storage_roots : sequence of str, optional
        Confine every job to these roots (``CohortScoringOptions.storage_roots``): its manifest,
        each row, each profile file and its output; an empty sequence refuses everything.  None
        (tests of the registry alone) does not confine.
    """

    def __init__(self, run_uri: str, *, max_running: int = 2, workers: int | None = None,
                 default_profile: str | None = None, cpus_per_job: float | None = None,
                 reserved_cpus: float = 0.0, runner: CohortRunner | None = None,
                 loopback_only: bool = False, storage_roots: Sequence[str] | None = None,
                 domain_shift: Mapping[str, Any] | None = None):
        if loopback_only:  # a replica of a loopback-only service (somnray.serve.loopback)
            bind_replica_grpc_to_loopback()
        self.run_uri = run_uri
        self.max_running = max_running
        self.workers = workers
        self.default_profile = default_profile
        self.cpus_per_job = cpus_per_job
        self.reserved_cpus = reserved_cpus
        self._runner = runner
        self.roots = None if storage_roots is None else StorageRoots(storage_roots)
        self.domain = DomainThresholds.from_mapping(domain_shift)
        self._jobs: dict[str, CohortJob] = {}
        self._cancel: dict[str, threading.Event] = {}
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
            self._cancel[job.job_id] = threading.Event()
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

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a running job (a finished one is left as it is); its public state, or None for
        an unknown id.

        The job is ``cancelled`` at once and frees its slot; its actor, tasks and scoring actors
        are killed within :data:`POLL_S` seconds.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == RUNNING:
                job.status, job.finished_at = CANCELLED, time.time()
                self._cancel[job_id].set()
                log.info("cohort job %s cancelled", job_id)
            return job.public()

    # -- internals -------------------------------------------------------------------------------
    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.status != RUNNING),
                          key=lambda j: j.finished_at or 0.0)
        for job in finished[:max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self._jobs[job.job_id]
            self._cancel.pop(job.job_id, None)

    def _progress(self, job: CohortJob) -> Callable[[int, int, int], None]:
        def update(done: int, failed: int, total: int | None) -> None:
            with self._lock:
                # score_cohort counts `done` as nights with outputs; the API's `done` is every
                # night finished, rejected ones included, so that done == total at the end.
                counts = (done + failed, failed, total)
                if counts != (job.done, job.failed, job.total):
                    job.done, job.failed, job.total = counts
                    job.last_progress_at = time.time()
        return update

    def _options(self, job: CohortJob) -> CohortScoringOptions:
        """How the job's run goes; raises ValueError when the replicas leave it no CPU."""
        cpus = self.cpus_per_job
        if cpus is None and self._runner is None:
            import ray

            cluster = float(ray.cluster_resources().get("CPU", 0.0))
            cpus = cohort_cpu_share(cluster, self.reserved_cpus, self.max_running)
            if cpus <= 0:
                raise ValueError(
                    f"no CPU left for cohort jobs: the service's replicas reserve {self.reserved_cpus:g} "
                    f"of the cluster's {cluster:g} CPUs; lower the replicas' CPUs or give the jobs "
                    "their own (cohort_num_cpus)")
        return CohortScoringOptions(profile=job.profile, workers=self.workers, cpus=cpus,
                                    plots=job.plots, progress=False,
                                    progress_callback=self._progress(job), storage_roots=self.roots,
                                    domain=self.domain)

    def _run(self, job: CohortJob) -> None:
        with self._lock:
            job.started_at = job.last_progress_at = time.time()
        try:
            options = self._options(job)
            if self._runner is not None:
                result = self._runner(self.run_uri, job.manifest_uri, job.output_uri, options)
            else:
                result = self._run_in_actor(job, options)
        except Exception as exc:  # the job fails, the service goes on
            self._finish_failed(job, exc)
            return
        if result is None:  # cancelled
            return
        with self._lock:
            if job.status != RUNNING:  # cancelled meanwhile: the outcome is no longer wanted
                return
            job.total = int(result.total)
            job.failed = int(result.rejected)
            job.done = int(result.scored + result.skipped + result.rejected)
            job.rejects = [dict(r) for r in result.rejects]
            job.domain_shifts = [dict(d) for d in result.domain_shifts]
            job.status, job.finished_at = SUCCEEDED, time.time()
        log.info("cohort job %s succeeded: %d scored, %d skipped, %d rejected", job.job_id,
                 result.scored, result.skipped, result.rejected)

    def _run_in_actor(self, job: CohortJob, options: CohortScoringOptions) -> Any:
        """The job's result from its :class:`CohortRun` actor, or None once it was cancelled."""
        import ray

        cancelled = self._cancel[job.job_id]
        update = options.progress_callback
        # No CPU of its own: the run's tasks and scoring actors hold the job's share.
        actor = ray.remote(CohortRun).options(num_cpus=0, max_concurrency=2).remote()
        ref = actor.run.remote(self.run_uri, job.manifest_uri, job.output_uri,
                               dataclasses.replace(options, progress_callback=None))
        try:
            while not cancelled.is_set():
                ready, _ = ray.wait([ref], timeout=POLL_S)
                update(*ray.get(actor.progress.remote()))
                if ready:
                    try:
                        return ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if isinstance(exc.cause, Exception) else exc
                        raise cause from None
            return None
        finally:
            # Killing the actor ends the run's tasks and scoring actors too (they are its own).
            ray.kill(actor)

    def _finish_failed(self, job: CohortJob, exc: Exception) -> None:
        log.warning("cohort job %s failed: %s: %s", job.job_id, type(exc).__name__, exc)
        with self._lock:
            if job.status == RUNNING:
                job.status, job.error, job.finished_at = FAILED, f"{type(exc).__name__}: {exc}", time.time()


__all__ = ["CANCELLED", "CohortJob", "CohortJobs", "CohortRun", "FAILED", "POLL_S", "RUNNING",
           "SUCCEEDED", "cohort_cpu_share"]
