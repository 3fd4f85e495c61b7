"""Shared session fixtures: a loopback-only local Ray cluster, a local S3 server (moto), small
synthetic cohorts, and a ``tmp_uri`` helper.

Each expensive resource starts at most once per pytest session, on first use:

* ``ray_local`` — ``ray.init(address="local", num_cpus=2)`` bound to 127.0.0.1, token auth off, its
  own short temp dir (Unix socket paths must stay under ~107 characters);
* ``s3_server`` — ``moto_server`` on 127.0.0.1 with fake credentials exported as the standard
  ``AWS_*`` variables, so :mod:`somnray.core.storage` finds it with no extra options;
* ``mlflow_server`` — ``mlflow server`` on 127.0.0.1 with a SQLite backend store and a bucket of
  ``s3_server`` as its artifact store (clients reach artifacts through the server);
* ``synth_cohort`` — a factory of synthetic cohorts written by :mod:`somnray.data.synth` (real EDF
  files), cached per argument set; ``sleep_edf_cohort`` and ``shhs_cohort`` are the usual ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from loopback import free_port  # this folder is on sys.path (rootdir conftest)

# Loopback only, whatever a test starts (Ray, its workers, gloo): Ray otherwise binds every
# interface and advertises the machine's address (docs/architecture.md, "Loopback by default").
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["GLOO_SOCKET_IFNAME"] = "lo"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Data's per-operator progress bars flood the captured output of every test.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


# -- torch ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids spin-wait contention.

    Module-scoped, so a module's own module-scoped fixtures (in-process training) run under it too:
    request it from an autouse fixture of the module.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- Ray --------------------------------------------------------------------------------------------
@dataclass
class RayLocal:
    """The session's local Ray cluster."""

    temp_dir: str
    address: str

    @property
    def logs_dir(self) -> Path:
        """Folder of the session's Ray logs (worker stdout/stderr included)."""
        return Path(self.temp_dir) / "session_latest" / "logs"


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray cluster on 127.0.0.1 (dashboard on, auth off), shut down at session end."""
    import ray

    if ray.is_initialized():  # started by someone else in this process: reuse, do not own
        yield RayLocal(temp_dir=ray._private.worker._global_node.get_temp_dir_path(),
                       address=ray.get_runtime_context().gcs_address)
        return
    from somnray.core.session import own_dashboard

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # Its own dashboard port, named to every worker: Ray Train's placement-group cleaner would
    # otherwise fail on a machine where another Ray instance runs (somnray.core.session).
    dashboard_port, runtime_env = own_dashboard()
    ctx = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        configure_logging=False,
        runtime_env=runtime_env,
    )
    try:
        yield RayLocal(temp_dir=temp_dir, address=ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


# -- S3 ---------------------------------------------------------------------------------------------
@dataclass
class S3Server:
    """A running moto S3 server."""

    endpoint_url: str
    access_key: str = "somnray-test-key"
    secret_key: str = "somnray-test-secret"
    _buckets: list[str] = field(default_factory=list)

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options reaching this server (also usable with ``somnray.core.storage``)."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key}

    def make_bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket; returns ``s3://<name>``."""
        import s3fs

        name = name or f"somnray-{uuid.uuid4().hex[:12]}"
        fs = s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)
        fs.mkdir(name)
        self._buckets.append(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1:<free port>; endpoint and fake credentials exported."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not found: install the dev extra (pip install -e '.[dev]')")
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    server = S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(server.endpoint_url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"moto_server did not start: {log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.1)
        saved = {k: os.environ.get(k) for k in (
            "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        os.environ.update({
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        })
        try:
            yield server
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- MLflow -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``."""

    uri: str
    artifacts: str


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1:<free port>, SQLite backend, artifacts in a moto bucket."""
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.fail("mlflow not found: install the mlflow extra (pip install -e '.[dev,mlflow]')")
    home = tmp_path_factory.mktemp("mlflow")
    artifacts = s3_server.make_bucket() + "/artifacts"
    port = free_port()
    log = tempfile.TemporaryFile()
    # The server writes the artifacts: it gets the S3 endpoint (boto3 reads MLFLOW_S3_ENDPOINT_URL).
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{home}/mlflow.db", "--artifacts-destination", artifacts],
        stdout=log, stderr=log, cwd=home, env=env, start_new_session=True)
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", artifacts=artifacts)
    try:
        # Creating the SQLite schema takes ~30 s on a loaded 2-core machine.
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(server.uri + "/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"mlflow server did not start: {log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.5)
        yield server
    finally:
        # The server forks workers in its own session: end the whole group it leads, nothing else.
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


# -- synthetic cohorts ---------------------------------------------------------------------------
@dataclass
class SynthCohort:
    """A synthetic cohort on local disk."""

    path: Path
    profile: Any
    entries: list

    @property
    def manifest(self) -> Path:
        """The cohort's ``manifest.csv``."""
        return self.path / "manifest.csv"


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory) -> Callable[..., SynthCohort]:
    """Factory ``synth_cohort(profile, n_nights=4, hours=1.0, seed=0, **kw)``, cached per arguments.

    ``profile`` is a shipped profile name (``sleep-edf``, ``shhs``, ``generic``): the layout synth
    writes, and the profile loaded into ``SynthCohort.profile`` to prepare it.

    The folder must be treated as read-only by tests: copy it before damaging files.
    """
    from somnray.data.manifest import format_manifest_csv
    from somnray.data.profiles import load_profile
    from somnray.data.synth import synthesize_cohort

    cache: dict[tuple, SynthCohort] = {}

    def make(profile: str = "sleep-edf", n_nights: int = 4, hours: float = 1.0, seed: int = 0,
             **kwargs: Any) -> SynthCohort:
        key = (profile, n_nights, hours, seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            prof = load_profile(profile)
            out = tmp_path_factory.mktemp(f"synth-{prof.name}")
            # synth writes the file layout of a shipped profile, named as such.
            entries = synthesize_cohort(profile, out, n_nights, seed=seed, hours=hours, **kwargs)
            if not (out / "manifest.csv").exists():
                (out / "manifest.csv").write_text(format_manifest_csv(entries))
            cache[key] = SynthCohort(path=out, profile=prof, entries=list(entries))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def sleep_edf_cohort(synth_cohort) -> SynthCohort:
    """4 Sleep-EDF-like nights of 1 h (several subjects, some with two nights)."""
    return synth_cohort("sleep-edf", n_nights=4, hours=1.0)


@pytest.fixture(scope="session")
def shhs_cohort(synth_cohort) -> SynthCohort:
    """4 SHHS-like nights of 1 h (one night per subject)."""
    return synth_cohort("shhs", n_nights=4, hours=1.0)


# -- URIs ---------------------------------------------------------------------------------------
@pytest.fixture
def tmp_uri(tmp_path, request) -> Callable[..., str]:
    """Factory ``tmp_uri(kind="local", name="")``: a fresh, empty URI of kind ``local`` (file://)
    or ``s3`` (a new bucket on the session's moto server)."""

    def make(kind: str = "local", name: str = "") -> str:
        if kind == "local":
            path = tmp_path / (name or f"store-{uuid.uuid4().hex[:8]}")
            return f"file://{path}"
        if kind == "s3":
            server = request.getfixturevalue("s3_server")
            return server.make_bucket() + (f"/{name}" if name else "/data")
        raise ValueError(f"tmp_uri kind must be 'local' or 's3', got {kind!r}")

    return make
