"""Where things are, and the small helpers every kind of test uses to talk to the service."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "digitsum.pt"


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_ready(client: TestClient, timeout_s: float = 60) -> None:
    """Until /readyz is 200 (warm-up and self-test run in the background after startup)."""
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)
