"""Shared fixtures: the real test split, the shipped checkpoint, and a live app (lifespan running)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from training.data import DigitData, load_sample

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "models" / "digitsum.pt"


@pytest.fixture(scope="session")
def sample() -> DigitData:
    """The 5k MNIST sample, split 4,000 / 1,000 exactly as training used it."""
    return load_sample()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_ready(client: TestClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The service with the shipped model on CPU, ready (warmed up, self-test passed)."""
    app = create_app(Settings(model_path=SHIPPED_MODEL, device="cpu"))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client
