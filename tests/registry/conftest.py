"""A real MLflow tracking server for the registry tests.

``mlflow_server`` runs ``mlflow server`` on 127.0.0.1 (a free port, its own temp folder) with a
SQLite backend store and the session's S3-compatible server (moto) as its artifact store; clients
reach the artifacts through the server (``mlflow-artifacts:/``), so they need no S3 credentials.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback import free_port  # tests/ is on sys.path (rootdir conftest)


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


@pytest.fixture
def registry_env(mlflow_server, tmp_path, monkeypatch):
    """``MLFLOW_TRACKING_URI`` names the test server; registered versions cache in a fresh folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("SOMNRAY_MODEL_CACHE", str(tmp_path / "model-cache"))
    return mlflow_server
