"""Shared fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_name() -> str:
    """A registered ``*_tiny`` model (the tests need one real model from the registry)."""
    from somnray.models import list_models

    names = list_models("*_tiny")
    if not names:
        pytest.skip("no *_tiny model is registered yet")
    return "cimsleepnet_tiny" if "cimsleepnet_tiny" in names else names[0]
