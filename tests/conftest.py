"""Shared fixtures: the real test split, and a live app with the shipped checkpoint (lifespan running)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.digits import Sample, load_sample
from tests.support.service import SHIPPED_MODEL, wait_ready


@pytest.fixture(scope="session")
def sample() -> Sample:
    """The 5k MNIST sample, split 4,000 / 1,000 exactly as training used it."""
    return load_sample()


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The service with the shipped model on CPU, ready (warmed up, self-test passed)."""
    app = create_app(Settings(model_path=SHIPPED_MODEL, device="cpu"))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client
