"""The registry tests' environment: the session's MLflow server (tests/conftest.py) and a model cache."""

from __future__ import annotations

import pytest


@pytest.fixture
def registry_env(mlflow_server, tmp_path, monkeypatch):
    """``MLFLOW_TRACKING_URI`` names the test server; registered versions cache in a fresh folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("SOMNRAY_MODEL_CACHE", str(tmp_path / "model-cache"))
    return mlflow_server
