"""`make run`'s shape: several uvicorn workers whose /metrics add up through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from pathlib import Path

from tests.conftest import png_bytes
from tests.live_server import LiveServer, live_server
from training.data import DigitData

WORKERS = 2


def post_digit(server: LiveServer, png: bytes, number: int) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="number"\r\n\r\n{number}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.url + "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def predict_count(metrics: str) -> float:
    pattern = r'^digitsum_request_duration_seconds_count\{[^}]*route="/predict"[^}]*status="200"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


def test_metrics_of_all_workers_add_up(tmp_path: Path, sample: DigitData) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"), "DIGITSUM_TORCH_THREADS": "1"}
    (tmp_path / "prometheus").mkdir()
    with live_server(tmp_path / "uvicorn.log", env, ["--workers", str(WORKERS)]) as server:
        deadline = time.monotonic() + 60  # /readyz answered for one worker; wait for the other's self-test too
        while server.log_text().count("ready: self-test passed") < WORKERS:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        png = png_bytes(sample.test.images[0].numpy())
        statuses = [post_digit(server, png, n % 10) for n in range(40)]
        assert statuses == [200] * 40
        metrics = server.get("/metrics")[1]
        assert predict_count(metrics) == 40  # whichever worker answered the scrape, it counts both
        assert len(set(re.findall(r'pid="(\d+)"', metrics))) == 0  # summed, not listed per process
        assert re.search(r'^digitsum_model_info\{.*device="cpu".*\} 1\.0$', metrics, re.MULTILINE)
