"""The service as it runs in production: real uvicorn in a subprocess, on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import hostile_inputs as hi
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

    def wait_for_log(self, pattern: str, timeout_s: float = 90, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log from character `after` on, once it is there."""
        deadline = time.monotonic() + timeout_s
        while not (match := re.compile(pattern, re.MULTILINE).search(self.log_text(), after)):
            assert time.monotonic() < deadline, f"no {pattern!r} in the log after {timeout_s} s:\n{self.log_text()}"
            time.sleep(0.1)
        return match

    def post_digit(self, png: bytes, number: int) -> tuple[int, str | None, bytes]:
        """POST /predict on a new connection: (status, X-Model-SHA256, body); a 4xx/5xx is returned, not raised."""
        body = hi.multipart([("image", png, "d.png"), ("number", str(number).encode(), None)])
        headers = {"Content-Type": f"multipart/form-data; boundary={hi.BOUNDARY}"}
        request = urllib.request.Request(self.url + "/predict", body, headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers.get("X-Model-SHA256"), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("X-Model-SHA256"), error.read()

    def worker_pids(self) -> list[int]:
        """The launcher's worker processes (not multiprocessing's resource tracker)."""
        return [child for child in children(self.process.pid) if b"spawn_main" in read_cmdline(child)]


def until(condition: Callable[[], object], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def children(pid: int) -> list[int]:
    """Of every thread of `pid` (a process started from a thread is that thread's child); a thread may end meanwhile."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def read_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it has just exited
        return b""


def alive(pid: int) -> bool:
    """Running, not a zombie left for its parent to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
