"""The service as it runs in production: real uvicorn in a subprocess, on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.service import ROOT, SHIPPED_MODEL

UVICORN = ("uvicorn", "app.main:app")
MAKE_RUN = ("app.serve", "--log-config", "app/log_config.json")  # + --workers N


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout_s: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str) -> float:
        """One unlabelled sample from GET /metrics, e.g. digitsum_requests_in_flight."""
        match = re.search(rf"^{name} (\S+)$", self.get("/metrics")[1], re.MULTILINE)
        assert match, f"{name} is not in /metrics"
        return float(match.group(1))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(
    log: Path,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    ready_timeout_s: float = 90,
    launcher: Sequence[str] = UVICORN,
) -> Iterator[LiveServer]:
    """Start uvicorn (or `make run`'s MAKE_RUN) with the shipped model on the CPU, wait for /readyz, and stop it
    with SIGTERM after."""
    port = free_port()
    command = [sys.executable, "-m", *launcher, "--host", "127.0.0.1", "--port", str(port), *args]
    environment = {**os.environ, "DIGITSUM_DEVICE": "cpu", "DIGITSUM_MODEL_PATH": str(SHIPPED_MODEL), **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(process, port, log)
    try:
        wait_ready(server, ready_timeout_s)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(server: LiveServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.process.poll() is None, f"uvicorn exited with {server.process.returncode}:\n{server.log_text()}"
        assert time.monotonic() < deadline, f"not ready after {timeout_s} s:\n{server.log_text()}"
        try:
            if server.get("/readyz", timeout_s=2)[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.1)
