"""Typed configuration of the scoring service (``somnray serve`` and the Serve app builder) and of
cohort scoring runs.

One frozen pydantic model, :class:`ServeConfig`, carries everything the HTTP app needs: which model
to load, where to listen, request limits, the bearer token, which storage roots cohort jobs may
read from and write to, and the batching and replica settings of each deployment.  The CLI builds
it from flags; a Serve config file (KubeRay RayService) passes the same fields as ``args`` to
``somnray.serve.app:app_builder``.

:class:`CohortScoringOptions` says how one :func:`~somnray.serve.cohort.score_cohort` run goes
(``somnray score`` and the app's cohort jobs build it).  It lives here, away from the scoring
code, so that the job registry can build one without importing torch.

Defaults keep the service private: it listens on 127.0.0.1, and cohort jobs are refused until at
least one storage root is configured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from somnray.core.config import validation_lines
from somnray.core.errors import ConfigError
from somnray.core.storage import StorageRoots, resolve

if TYPE_CHECKING:
    from somnray.data.profiles import CohortProfile
    from somnray.scoring.domain import DomainThresholds

#: ``progress_callback(done, failed, total)`` of a cohort run.
ProgressCallback = Callable[[int, int, int], None]
#: Environment variable read for the bearer token when the config gives none.
DEFAULT_TOKEN_ENV = "SOMNRAY_SERVE_TOKEN"
#: Default upload limit: a 24-h PSG at a few hundred Hz is a few hundred MB.
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024


def review_name(uri: str) -> str:
    """How the review page names a scored output root: its last path component."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


class ServeConfig(BaseModel):
    """Settings of the somnray scoring service.

    Parameters
    ----------
    run_uri : str
        Training run or model bundle to serve (anything
        :meth:`somnray.scoring.scorer.Scorer.load` accepts).
    host : str
        Interface the HTTP proxy binds to; loopback by default (expose it deliberately).
    port : int
        HTTP port.
    max_upload_bytes : int
        Largest accepted request body for ``POST /v1/score``; larger → 413.
    token : SecretStr, optional
        Bearer token every request except ``/healthz`` must carry.  When None, the environment
        variable named by ``token_env`` is read when the app is built; when both are empty the
        service runs without authentication (fine on loopback only).
    token_env : str
        Name of the environment variable holding the token.
    storage_roots : tuple of str
        URI prefixes (``file:///data/psg``, ``s3://bucket/cohorts``) under which cohort jobs may
        read manifests and write outputs.  Empty: cohort jobs are refused.
    review_roots : tuple of str
        Scored output roots (``somnray score``/``somnray review`` outputs) the review page
        (``/review``) serves, each under one of ``storage_roots``; the page names each by its last
        path component, so those must differ.  Empty: the review page has nothing to show.
    default_profile : str, optional
        Cohort profile (shipped name) used when a request names none; None lets the scorer pick
        the profile recorded with the model, else ``generic``.
    max_batch_windows : int
        Most windows of ``L`` epochs the model deployment runs in one forward pass, gathered from
        concurrent requests (``@serve.batch`` with a window-counting ``batch_size_fn``).
    batch_wait_timeout_s : float
        How long the model deployment waits for more requests to fill a batch.
    model_replicas, preprocess_replicas, ingress_replicas : int
        Replicas of each deployment.
    model_num_cpus, model_num_gpus, preprocess_num_cpus, ingress_num_cpus : float
        Ray resources reserved per replica (scheduling hints, not limits).
    model_threads : int, optional
        torch threads of each model replica on CPU.  None: the CPUs of the replica's node divided
        by ``model_replicas`` (at least 1) — Ray would otherwise give an actor reserving less than
        two CPUs one thread, and a night would take as long as on one core however idle the rest.
    device : str
        Torch device of the model replicas (``auto``, ``cpu``, ``cuda``, ``cuda:1``).
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:mod:`somnray.scoring.device`'s policy).
    max_concurrent_requests : int
        Scoring requests (``POST /v1/score``) each ingress replica runs at once (each may hold an
        upload in memory, so this times ``max_upload_bytes`` bounds its memory).
    max_cohort_requests : int
        Cohort-job requests (``/v1/cohorts``) each ingress replica runs at once, on top of the
        scoring ones: a flood of uploads never blocks following or cancelling a job.
    max_waiting_requests : int
        Requests of each kind that may wait for a slot on an ingress replica (before reading their
        body); more are answered 503 with ``Retry-After`` at once.
    ingress_max_queued_requests : int
        Requests the HTTP proxy holds for the ingress while all its replicas are full (-1: no
        limit); beyond, Serve answers 503 with ``Retry-After``.
    preprocess_max_ongoing_requests, model_max_ongoing_requests : int, optional
        Requests a preprocessing or model replica takes at once (None: Serve's default of 5 for
        preprocessing; twice ``max_batch_windows``, at least 8, for the model, so that windows of
        several requests wait in its batch queue together).
    preprocess_max_queued_requests, model_max_queued_requests : int
        Requests each caller (an ingress replica) queues for a full deployment (-1: no limit);
        beyond, the request is answered 503 with ``Retry-After``.
    retry_after_s : float
        Seconds a 503 answer's ``Retry-After`` header asks the client to wait.
    max_cohort_jobs : int
        Cohort jobs allowed to run at once; further submissions get 429.
    cohort_workers : int, optional
        Actor-pool size of each cohort job (``CohortScoringOptions.workers``); None: its default.
    cohort_num_cpus : float, optional
        CPUs each cohort job may hold (its prepare tasks and scoring actors together); None: what
        the replicas leave of the cluster's CPUs (:meth:`replica_cpus`), split between
        ``max_cohort_jobs``.
    domain_shift : dict
        Thresholds of the domain-shift check of every night, uploaded or in a cohort job
        (:class:`somnray.scoring.domain.DomainThresholds` fields: ``amplitude_factor``,
        ``band_power_distance``, ``ignore``); empty: the defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_uri: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, gt=0)
    token: SecretStr | None = None
    token_env: str = DEFAULT_TOKEN_ENV
    storage_roots: tuple[str, ...] = ()
    review_roots: tuple[str, ...] = ()
    default_profile: str | None = None
    max_batch_windows: int = Field(default=64, ge=1)
    batch_wait_timeout_s: float = Field(default=0.05, ge=0.0)
    model_replicas: int = Field(default=1, ge=1)
    preprocess_replicas: int = Field(default=1, ge=1)
    ingress_replicas: int = Field(default=1, ge=1)
    model_num_cpus: float = Field(default=0.5, ge=0.0)
    model_num_gpus: float = Field(default=0.0, ge=0.0)
    model_threads: int | None = Field(default=None, ge=1)
    preprocess_num_cpus: float = Field(default=0.5, ge=0.0)
    ingress_num_cpus: float = Field(default=0.1, ge=0.0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_concurrent_requests: int = Field(default=16, ge=1)
    max_cohort_requests: int = Field(default=4, ge=1)
    max_waiting_requests: int = Field(default=32, ge=0)
    ingress_max_queued_requests: int = Field(default=32, ge=-1)
    preprocess_max_ongoing_requests: int | None = Field(default=None, ge=1)
    preprocess_max_queued_requests: int = Field(default=-1, ge=-1)
    model_max_ongoing_requests: int | None = Field(default=None, ge=1)
    model_max_queued_requests: int = Field(default=-1, ge=-1)
    retry_after_s: float = Field(default=5.0, ge=0.0)
    max_cohort_jobs: int = Field(default=2, ge=1)
    cohort_workers: int | None = Field(default=None, ge=1)
    cohort_num_cpus: float | None = Field(default=None, gt=0.0)
    domain_shift: dict[str, Any] = Field(default_factory=dict)

    @field_validator("domain_shift")
    @classmethod
    def _domain_thresholds(cls, value: dict[str, Any]) -> dict[str, Any]:
        from somnray.scoring.domain import DomainThresholds

        try:
            return DomainThresholds.from_mapping(value).to_dict()
        except ConfigError as exc:
            raise ValueError("; ".join(exc.errors)) from None

    @field_validator("storage_roots", "review_roots")
    @classmethod
    def _canonical_roots(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Stored in resolve()'s canonical form, so the prefix test in allowed_uri() compares like
        # with like (a plain path and its file:// URI are the same root).
        roots = []
        for root in value:
            try:
                roots.append(resolve(root).uri.rstrip("/"))
            except ConfigError as exc:
                raise ValueError(f"storage root {root!r}: {'; '.join(exc.errors)}") from None
        return tuple(roots)

    @model_validator(mode="after")
    def _reviews_inside_storage_roots(self) -> "ServeConfig":
        # Every file the review page opens is confined to the storage roots, so a review root
        # outside them could never be read: refuse it here rather than on every request.
        outside = [uri for uri in self.review_roots if self.roots.locate(uri) is None]
        if outside:
            raise ValueError(f"review root(s) {outside} lie outside the storage roots: add a "
                             "storage root that holds each")
        names = [review_name(uri) for uri in self.review_roots]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"review roots must end in different folder names (the page names them "
                             f"so); repeated: {repeated}")
        return self

    @field_validator("ingress_max_queued_requests", "preprocess_max_queued_requests",
                     "model_max_queued_requests")
    @classmethod
    def _queue_limit(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be at least 1, or -1 for no limit, got 0")
        return value

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not value or not value.replace("_", "a").isalnum() or value[0].isdigit():
            raise ValueError(f"must be an environment variable name, got {value!r}")
        return value

    @classmethod
    def from_mapping(cls, args: dict, source: str = "serve config") -> "ServeConfig":
        """Validate a mapping (a Serve config file's ``args``), every problem reported at once.

        Raises
        ------
        ConfigError
            One line per invalid or unknown field.
        """
        try:
            return cls.model_validate(dict(args))
        except ValidationError as exc:
            raise ConfigError(source, validation_lines(exc)) from None

    def resolved_token(self) -> str | None:
        """The bearer token: ``token`` if set, else the ``token_env`` variable, else None."""
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        return os.environ.get(self.token_env) or None

    @property
    def reviews(self) -> dict[str, str]:
        """Review name (the last path component of a review root) → the root's URI."""
        return {review_name(uri): uri for uri in self.review_roots}

    @property
    def roots(self) -> StorageRoots:
        """:attr:`storage_roots` as the :class:`~somnray.core.storage.StorageRoots` that check URIs."""
        return StorageRoots(self.storage_roots)

    def model_replica_threads(self, node_cpus: float) -> int:
        """torch threads of a CPU model replica on a node of ``node_cpus`` CPUs (:attr:`model_threads`)."""
        if self.model_threads is not None:
            return self.model_threads
        return max(1, int(node_cpus // self.model_replicas))

    def replica_cpus(self) -> float:
        """CPUs every replica of the service reserves together (the cohort-job registry: none)."""
        return (self.model_replicas * self.model_num_cpus + self.preprocess_replicas * self.preprocess_num_cpus
                + self.ingress_replicas * self.ingress_num_cpus)

    def allowed_uri(self, uri: str) -> bool:
        """Whether ``uri`` lies under one of :attr:`storage_roots` (same protocol, path prefix).

        A URI with a ``..`` segment is refused outright: local paths would normalise it away, but
        object stores treat it as a literal key, and neither should be able to leave a root.
        Percent-encoded and symbolically linked escapes are refused too
        (:meth:`StorageRoots.locate <somnray.core.storage.StorageRoots.locate>`).
        """
        return self.roots.locate(uri) is not None


@dataclass(frozen=True)
class CohortScoringOptions:
    """How :func:`score_cohort` runs (every field has a default).

    Attributes
    ----------
    profile : CohortProfile or str, optional
        Cohort profile of every recording; default: each manifest entry's own profile, else the
        bundle's, else ``generic``.
    channel_map : mapping, optional
        Modality → EDF signal label, derivation ``{"signal", "reference"}`` or a list of them tried
        in order, for every recording (overrides the profile's channel; see
        :func:`somnray.serve.inference.channel_map_alternatives`).
    stride : int, optional
        Window stride in epochs (default: the model's window length).
    workers : int, optional
        Scoring actors (each holds the model); default one per GPU, or one per CPU (one torch
        thread each).
    cpus : float, optional
        CPUs the run may hold at once, its read + prepare tasks and its scoring actors together
        (fractions allowed); default: the cluster's.  A service's cohort jobs run on what its
        replicas leave free.
    device, precision : str
        For the actors (:mod:`somnray.scoring.device`: ``auto`` by default).
    threads_per_worker : int, optional
        torch threads per actor (default on CPUs: the run's CPUs divided among its actors, so
        the cores reserved for reading and preparing score too; on GPUs: what Ray gives it).
    plots : bool
        Write each night's hypnogram PNG and the cohort PNG.
    progress : bool
        Show a progress bar on the driver.
    progress_callback : callable, optional
        Called as ``progress_callback(done, failed, total)`` when the run starts and after each
        recording: ``done`` counts nights with outputs (scored or skipped), ``failed`` rejected
        ones, ``total`` every recording of the inputs.
    storage_options : mapping, optional
        Filesystem options of the inputs, the bundle and the outputs.
    id_from : str
        How a single PSG file given as input is named: ``name`` (the profile's pairing rules on
        its file name) or ``hash`` (a short SHA-256 of its content, so no output carries the file
        name).
    storage_roots : StorageRoots, optional
        Confine the run (the service's cohort jobs): every input, every manifest row, every
        profile file and the output must lie under these roots, checked before anything is
        opened; a location outside gets the same message whether it exists or not.
    domain : DomainThresholds, optional
        Thresholds of each night's domain-shift check (default: the defaults of
        :class:`~somnray.scoring.domain.DomainThresholds`).
    """

    profile: CohortProfile | str | None = None
    channel_map: Mapping[str, Any] | None = None
    stride: int | None = None
    workers: int | None = None
    cpus: float | None = None
    device: str = "auto"
    precision: str = "auto"
    threads_per_worker: int | None = None
    plots: bool = False
    progress: bool = True
    progress_callback: ProgressCallback | None = None
    storage_options: Mapping[str, Any] | None = None
    id_from: Literal["name", "hash"] = "name"
    storage_roots: StorageRoots | None = None
    domain: DomainThresholds | None = None
