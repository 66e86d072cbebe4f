"""`make run`'s shape (app/serve.py): worker processes that share the port evenly, stop together, and whose
/metrics add up through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.support.digits import Sample
from tests.support.fakes import ConstantDigit, write_checkpoint
from tests.support.live_server import (
    MAKE_RUN,
    LiveServer,
    alive,
    children,
    free_port,
    live_server,
    read_cmdline,
    refused,
    until,
)
from tests.support.service import ROOT, SHIPPED_MODEL, png_bytes

WORKERS = 2


def predict_count(metrics: str) -> float:
    pattern = r'^digitsum_request_duration_seconds_count\{[^}]*route="/predict"[^}]*status="200"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


def test_metrics_of_all_workers_add_up(tmp_path: Path, sample: Sample) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"), "DIGITSUM_TORCH_THREADS": "1"}
    (tmp_path / "prometheus").mkdir()
    with live_server(tmp_path / "serve.log", env, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        png = png_bytes(sample.test.images[0])
        statuses = [server.post_digit(png, n % 10)[0] for n in range(40)]
        assert statuses == [200] * 40
        metrics = server.get("/metrics")[1]
        assert predict_count(metrics) == 40  # whichever worker answered the scrape, it counts both
        assert len(set(re.findall(r'pid="(\d+)"', metrics))) == 0  # summed, not listed per process
        assert re.search(r'^digitsum_model_info\{.*device="cpu".*\} 1\.0$', metrics, re.MULTILINE)


def test_each_worker_listens_on_its_own_socket_so_connections_spread_and_sigterm_stops_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # the launcher makes its own
    with live_server(tmp_path / "serve.log", {}, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        workers = server.worker_pids()
        assert len(workers) == WORKERS
        metrics_dirs = {environment(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in workers}
        assert len(metrics_dirs) == 1 and Path(*metrics_dirs).is_dir()
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
    assert not Path(*metrics_dirs).exists()
    assert server.log_text().count(" drained and stopped") == WORKERS


def test_a_workers_decoder_processes_load_the_decoder_not_the_service(tmp_path: Path) -> None:
    """Decoder processes fork from a small forkserver (app/decoder.py); multiprocessing would first import the
    worker's __main__, app.serve, into each (uvicorn, FastAPI, pydantic), unless the worker says it need not."""
    env = {"DIGITSUM_DECODE_PROCESSES": "2"}
    with live_server(tmp_path / "serve.log", env, ["--workers", "1"], launcher=MAKE_RUN) as server:
        wait_all_ready(server, workers=1)
        (worker,) = server.worker_pids()
        until(lambda: len(decoders(worker)) == 2)  # started in the background at startup
        for decoder in decoders(worker):
            maps = Path(f"/proc/{decoder}/maps").read_text()
            assert "numpy" in maps and "PIL" in maps  # the decoder's own compiled modules are loaded...
            assert "pydantic_core" not in maps and "httptools" not in maps  # ...and not the service's


def decoders(worker: int) -> list[int]:
    """The children of the worker's forkserver."""
    forkservers = [pid for pid in children(worker) if b"multiprocessing.forkserver" in read_cmdline(pid)]
    return [pid for forkserver in forkservers for pid in children(forkserver)]


def environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


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


def wait_all_ready(server: LiveServer, workers: int = WORKERS) -> None:
    """/readyz answered for one worker; the launcher says when all are (each listens only once it is ready)."""
    server.wait_for_log(rf"INFO digitsum ready: {workers} workers serving on http://127\.0\.0\.1:{server.port}$")


LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them


def sockets_held(pids: list[int], port: int, state: str) -> dict[int, set[str]]:
    """pid -> the TCP sockets on local `port` in `state` that process holds (from /proc)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(f"socket:[{fields[9]}]")
    return {pid: {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()} & inodes for pid in pids}


class Load(threading.Thread):
    """POST /predict one request after another, each on a new connection, until told to stop (bounded)."""

    def __init__(self, server: LiveServer, png: bytes, most: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.server, self.png, self.most = server, png, most
        self.answers: list[tuple[int, str | None]] = []  # (status, X-Model-SHA256)
        self.failures: list[str] = []  # no answer at all: refused, reset...
        self.halt = threading.Event()

    def run(self) -> None:
        for n in range(self.most):
            if self.halt.is_set():
                return
            try:
                status, model, _ = self.server.post_digit(self.png, n % 10)
                self.answers.append((status, model))
            except OSError as exc:
                self.failures.append(repr(exc))

    def done(self) -> int:
        return len(self.answers) + len(self.failures)

    def wait_for(self, more: int) -> None:
        target = self.done() + more
        until(lambda: self.done() >= target or not self.is_alive(), timeout_s=120)

    def finish(self, more: int) -> None:
        """`more` requests more, then stop."""
        self.wait_for(more)
        self.halt.set()
        self.join(timeout=60)


def test_a_ready_worker_that_dies_is_replaced_with_backoff_and_the_replacement_gets_no_connection_until_ready(
    tmp_path: Path, sample: Sample
) -> None:
    with live_server(tmp_path / "serve.log", {}, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        first, sibling = server.worker_pids()
        os.kill(first, signal.SIGKILL)
        died = server.wait_for_log(
            rf"ERROR digitsum worker {first} was killed by SIGKILL after it was ready; starting a replacement in 1 s$"
        )
        load = Load(server, png_bytes(sample.test.images[0]))
        load.start()  # from here on, only the sibling and, once ready, the replacement may answer
        second = server.wait_for_log(r"started worker (\d+)$", after=died.end())
        os.kill(int(second.group(1)), signal.SIGKILL)  # still loading its model: a crash loop backs off
        again = server.wait_for_log(
            rf"ERROR digitsum worker {second.group(1)} was killed by SIGKILL before it was ready: .*; "
            r"starting a replacement in 2 s$"
        )
        third = int(server.wait_for_log(r"started worker (\d+)$", after=again.end()).group(1))
        server.wait_for_log(rf"worker {third} ready: listening", after=again.end())
        load.finish(more=40)  # now served by both
        assert sorted(server.worker_pids()) == sorted([sibling, third])
    assert load.failures == []
    assert len(load.answers) >= 40 and {status for status, _ in load.answers} == {200}  # not one 503 "not ready"
    assert "startup failed" not in server.log_text()


def test_sighup_swaps_the_checkpoint_one_worker_at_a_time_without_failing_a_request(
    tmp_path: Path, sample: Sample
) -> None:
    model = tmp_path / "digitsum.pt"
    shutil.copy(SHIPPED_MODEL, model)
    shutil.copy(SHIPPED_MODEL.with_suffix(".json"), model.with_suffix(".json"))
    old = sha12(model)
    env = {"DIGITSUM_MODEL_PATH": str(model)}
    with live_server(tmp_path / "serve.log", env, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        old_workers = server.worker_pids()
        load = Load(server, png_bytes(sample.test.images[0]))
        load.start()
        load.wait_for(20)
        retrained(model)
        new = sha12(model)
        mark = len(server.log_text())
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log(
            rf"INFO digitsum restart complete: {WORKERS} workers serving model sha256 {new} on ", after=mark
        )
        until(lambda: not any(alive(pid) for pid in old_workers))  # drained: what they accepted is answered
        load.finish(more=40)
        new_workers = server.worker_pids()

        write_checkpoint(ConstantDigit(3), model)  # fails the self-test: refused, the workers keep serving `new`
        refusal = refuse_on_sighup(server, f"self-test failed: .*expected digit 7, sum 9; got 3, 5; .* model {new}$")
        model.write_bytes(model.read_bytes() + b"\0")  # no longer the file its card describes
        refuse_on_sighup(server, "does not match its card digitsum.json", after=refusal.end())
        after_refusals = [server.post_digit(png_bytes(sample.test.images[k]), 1) for k in range(10)]
        assert server.worker_pids() == new_workers
    assert not set(old_workers) & set(new_workers)
    assert load.failures == [] and {status for status, _ in load.answers} == {200}
    models = [model for _, model in load.answers]
    assert models[:20] == [old] * 20 and models[-40:] == [new] * 40 and set(models) == {old, new}
    assert [(status, model) for status, model, _ in after_refusals] == [(200, new)] * 10


def refuse_on_sighup(server: LiveServer, reason: str, after: int = 0) -> re.Match[str]:
    server.process.send_signal(signal.SIGHUP)
    return server.wait_for_log(
        rf"ERROR digitsum restart abandoned: new worker \d+ exited with status 3 before it was ready: .*{reason}",
        after=after,
    )


def retrained(path: Path) -> None:
    """The shipped network as another checkpoint (its metadata differs): it passes the self-test, has a new sha256."""
    card = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    metadata = {key: value for key, value in card.items() if key != "sha256"}
    write_checkpoint(torch.jit.load(str(SHIPPED_MODEL)), path, {**metadata, "created": "test_workers.py"})


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_workers_die_with_the_launcher_even_when_it_is_killed(tmp_path: Path) -> None:
    with live_server(tmp_path / "serve.log", {}, ["--workers", str(WORKERS)], launcher=MAKE_RUN) as server:
        wait_all_ready(server)
        workers = server.worker_pids()
        server.process.kill()  # SIGKILL: no chance to stop anyone
        server.process.wait(timeout=30)
        until(lambda: not any(alive(pid) for pid in workers), timeout_s=60)
        assert refused(server.port)


def test_an_internal_port_serves_metrics_and_the_card_and_the_public_port_does_not(tmp_path: Path) -> None:
    internal = free_port()
    env = {"DIGITSUM_INTERNAL_PORT": str(internal)}
    with live_server(tmp_path / "serve.log", env=env, args=["--workers", "2"], launcher=MAKE_RUN) as server:
        assert server.get("/metrics")[0] == 404 and server.get("/model")[0] == 404
        assert server.get("/healthz")[0] == 200
        for path in ("/metrics", "/model"):
            with urllib.request.urlopen(f"http://127.0.0.1:{internal}{path}", timeout=10) as response:
                assert response.status == 200
