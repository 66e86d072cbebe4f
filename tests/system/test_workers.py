"""`make run`'s shape (app/serve.py): worker processes that share the port evenly, stop together, and whose
/metrics add up through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from tests.support.digits import Sample
from tests.support.live_server import MAKE_RUN, LiveServer, free_port, live_server
from tests.support.service import ROOT, png_bytes

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


def test_metrics_of_all_workers_add_up(tmp_path: Path, sample: Sample) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"), "DIGITSUM_TORCH_THREADS": "1"}
    (tmp_path / "prometheus").mkdir()
    with live_server(tmp_path / "serve.log", env, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        png = png_bytes(sample.test.images[0])
        statuses = [post_digit(server, png, n % 10) for n in range(40)]
        assert statuses == [200] * 40
        metrics = server.get("/metrics")[1]
        assert predict_count(metrics) == 40  # whichever worker answered the scrape, it counts both
        assert len(set(re.findall(r'pid="(\d+)"', metrics))) == 0  # summed, not listed per process
        assert re.search(r'^digitsum_model_info\{.*device="cpu".*\} 1\.0$', metrics, re.MULTILINE)


def test_each_worker_listens_on_its_own_socket_so_connections_spread_and_sigterm_stops_them_all(
    tmp_path: Path,
) -> None:
    with live_server(tmp_path / "serve.log", {}, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        workers = worker_pids(server.process.pid)
        assert len(workers) == WORKERS
        # One shared socket (`uvicorn --workers`) lets the first process to wake take every waiting connection;
        # a socket per process (SO_REUSEPORT) has the kernel spread them by address hash.
        listening = sockets_held(workers, server.port, LISTEN)
        assert all(len(held) == 1 for held in listening.values()) and len(set.union(*listening.values())) == WORKERS
        connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(32)]
        for connection in connections:
            connection.connect()
        for connection in connections:  # answered, so accepted by whichever worker holds it
            connection.request("GET", "/healthz")
            assert connection.getresponse().read()
        held = {pid: len(sockets) for pid, sockets in sockets_held(workers, server.port, ESTABLISHED).items()}
        for connection in connections:
            connection.close()
        assert sum(held.values()) == 32
        assert all(n > 0 for n in held.values()), held  # all 32 on one of 2 sockets: probability 2**-31
    assert server.process.returncode == 0, server.log_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # drained and reaped, none left behind


def test_a_port_in_use_is_refused_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port := free_port()))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", *MAKE_RUN, "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def wait_all_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + 60  # /readyz answered for one worker; wait for the others' self-tests too
    while server.log_text().count("ready: self-test passed") < WORKERS:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)


def worker_pids(pid: int) -> list[int]:
    """The launcher's worker processes (not multiprocessing's resource tracker)."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them


def sockets_held(pids: list[int], port: int, state: str) -> dict[int, set[str]]:
    """pid -> the TCP sockets on local `port` in `state` that process holds (from /proc)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(f"socket:[{fields[9]}]")
    return {pid: {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()} & inodes for pid in pids}
