"""Hostile traffic against the service as `make run` starts it: what each attack costs the server, and whether
/healthz stays quick meanwhile.

    python benchmarks/hostile.py --label after                 # every attack, about 8 minutes
    python benchmarks/hostile.py --label before --root /tmp/digitsum-before   # a checkout of an older commit
    python benchmarks/hostile.py --only huge-url --only idle-10k --seconds 10

The service runs as `python -m app.serve --workers 2` on a free port of 127.0.0.1 with PROMETHEUS_MULTIPROC_DIR
set to a temporary folder (the Makefile's `run`), from --root. Each attack runs in turn, bounded in time; for
each the report gives the HTTP statuses the attacker got, the server's CPU-seconds (all its processes, decoders
included, from /proc, over the attack and SETTLE_S after), each worker's peak RSS during the attack and its RSS
SETTLE_S after, and the p50 / p99 / max of /healthz measured by a separate process (a fresh connection every
PROBE_EVERY_S, as a load balancer's check does; a failed or timed-out probe counts as PROBE_TIMEOUT_S).
Workers that died or were replaced are reported too.

Results go to benchmarks/results/hostile.json (one entry per --label, kept across runs) and hostile.md (all
labels, regenerated from the JSON). The machine is shared: the report states the load average.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http.client
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import hostile_inputs as hi  # noqa: E402
from tests.support import raw_http  # noqa: E402
from tests.support.live_server import children  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SETTLE_S = 5.0  # RSS and CPU are read this long after an attack ends
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 5.0
HEALTHZ_TARGET_MS = 50.0
MB = 1024 * 1024
Outcome = tuple[Counter[str], list[str]]  # what an attack saw: statuses, notes


# --- the server and /proc ------------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def workers(self) -> list[int]:
        """The uvicorn processes (multiprocessing's resource tracker is a child too)."""
        return [pid for pid in children(self.process.pid) if b"resource_tracker" not in cmdline(pid)]

    def pids(self) -> list[int]:
        """Every process of the server: launcher, workers, and theirs (decoder processes and their forkserver)."""
        return [self.process.pid, *descendants(self.process.pid)]

    def helpers(self) -> list[int]:
        """The processes under the workers: decoder processes and their forkserver."""
        return [pid for worker in self.workers() for pid in descendants(worker)]


def descendants(pid: int) -> list[int]:
    return [d for child in children(pid) for d in (child, *descendants(child))]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(map(int, fields[11:15]))  # utime, stime, and those of its children that have ended (ticks)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(root: Path, log: Path, fd_limit: int) -> Server:
    """The Makefile's `run` recipe with WORKERS=2 on a free port of 127.0.0.1, started with fd_limit descriptors
    (soft; the hard limit stays)."""
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="digitsum-hostile-"),
           "DIGITSUM_DEVICE": "cpu"}  # fmt: skip
    command = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
               "--log-config", "app/log_config.json"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: soft_fd_limit(fd_limit))  # fmt: skip
    server = Server(process, port, log)
    deadline = time.monotonic() + 120
    while not all_workers_ready(server):
        assert process.poll() is None, f"the server exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not ready after 120 s:\n{log.read_text()}"
        time.sleep(0.5)
    return server


def soft_fd_limit(soft: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))


def all_workers_ready(server: Server) -> bool:
    """/readyz 200 on 8 fresh connections in a row (connections spread over both workers' sockets)."""
    return len(server.workers()) == 2 and all(status(server.port, "GET", "/readyz", 2) == 200 for _ in range(8))


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def status(port: int, method: str, path: str, timeout_s: float, body: bytes = b"", headers: dict[str, str] | None = None
           ) -> int | str:  # fmt: skip
    """The status of one request on a fresh connection, or the error's name."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        connection.close()


# --- /healthz, probed from another process ---------------------------------------------------------------------


def probe(port: int, stop: multiprocessing.synchronize.Event, out: multiprocessing.queues.Queue[list[float]]) -> None:
    """GET /healthz on a fresh connection every PROBE_EVERY_S until stop; latencies in ms (a failure counts as
    PROBE_TIMEOUT_S, negated so the report can count failures)."""
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        ok = status(port, "GET", "/healthz", PROBE_TIMEOUT_S) == 200
        elapsed_ms = (time.perf_counter() - started) * 1000
        latencies.append(elapsed_ms if ok else -max(elapsed_ms, PROBE_TIMEOUT_S * 1000))
        time.sleep(max(PROBE_EVERY_S - elapsed_ms / 1000, 0))
    out.put(latencies)


@dataclass
class Result:
    attack: str
    what: str
    statuses: dict[str, int]
    cpu_s: float
    peak_rss_mb: list[float]
    rss_after_mb: list[float]
    healthz_p50_ms: float
    healthz_p99_ms: float
    healthz_max_ms: float
    healthz_failed: int
    healthz_probes: int
    attack_s: float
    notes: list[str] = field(default_factory=list)


def measure(server: Server, name: str, what: str, attack: Callable[[], tuple[Counter[str], list[str]]]) -> Result:
    workers = server.workers()
    for pid in workers:
        reset_peak_rss(pid)
    cpu_before = cpu_seconds(server.pids())
    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    prober = context.Process(target=probe, args=(server.port, stop, out), daemon=True)
    prober.start()
    peaks = {pid: rss_mb(pid) for pid in workers}
    sampling = threading.Event()

    def sample() -> None:  # VmHWM covers the peak; sampling covers a kernel without clear_refs
        while not sampling.wait(0.1):
            for pid in workers:
                peaks[pid] = max(peaks[pid], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    statuses, notes = attack()
    attack_s = time.monotonic() - started
    stop.set()
    latencies = out.get(timeout=PROBE_TIMEOUT_S * 4)
    prober.join()
    time.sleep(SETTLE_S)
    sampling.set()
    sampler.join()
    cpu = cpu_seconds(server.pids()) - cpu_before
    if server.workers() != workers:
        notes.append(f"workers changed: {workers} -> {server.workers()} (one died or was replaced)")
    peak = [round(max(peaks[pid], rss_mb(pid, "VmHWM")), 1) for pid in workers]
    if helpers := server.helpers():
        notes.append(
            f"decoder processes after: {len(helpers)}, {sum(rss_mb(pid) for pid in helpers):.0f} MB RSS in all"
        )
    times = sorted(abs(x) for x in latencies) or [float("nan")]
    return Result(
        name, what, dict(statuses), round(cpu, 2), peak, [round(rss_mb(pid), 1) for pid in workers],
        round(percentile(times, 50), 1), round(percentile(times, 99), 1), round(times[-1], 1),
        sum(1 for x in latencies if x < 0), len(latencies), round(attack_s, 1), notes,
    )  # fmt: skip


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q / 100))]


def recover(server: Server, timeout_s: float = 60) -> float:
    """Seconds until /healthz answers 200 in under 50 ms again (a wedged worker would skew the next attack)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        t = time.perf_counter()
        if status(server.port, "GET", "/healthz", 5) == 200 and time.perf_counter() - t < HEALTHZ_TARGET_MS / 1000:
            break
        time.sleep(0.2)
    return time.monotonic() - started


# --- the attacks ---------------------------------------------------------------------------------------------


def answers(port: int, requests: list[bytes], timeout_s: float, hang_up_after_s: float | None = None) -> Counter[str]:
    """Send the raw requests at once (a connection each) and count what came back."""

    def one(request: bytes) -> str:
        try:
            with raw_http.connect(port, timeout_s) as sock:
                sock.sendall(request)
                if hang_up_after_s is not None:
                    time.sleep(hang_up_after_s)
                    return "hung up"
                answer = raw_http.read_answer(sock)
                return str(answer.status) if answer.status else "closed without answer"
        except TimeoutError:
            return f"no answer in {timeout_s:g} s"
        except OSError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=min(len(requests), 128)) as pool:
        return Counter(pool.map(one, requests))


def upload(data: bytes, filename: str, number: str = "3") -> bytes:
    body = hi.multipart([("image", data, filename), ("number", number.encode(), None)])
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={hi.BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def streamed(port: int, prefix: bytes, chunk: bytes, total: int, suffix: bytes, seconds: float) -> Outcome:
    """prefix, chunk repeated up to total bytes, then suffix (ending the request), sent while the answer is read;
    bounded by seconds: when the time is up the request is ended there, so a server that reads it all answers."""
    deadline = time.monotonic() + seconds

    def chunks() -> Iterator[bytes]:
        for piece in raw_http.repeat(chunk, total):
            if time.monotonic() > deadline:
                return
            yield piece

    answer, sent = raw_http.stream(port, prefix, chunks(), timeout_s=seconds + 5, suffix=suffix)
    if answer.timed_out:
        label = f"no answer in {seconds + 5:.0f} s"
    else:
        label = str(answer.status) if answer.status else "closed without answer"
    return Counter({label: 1}), [f"{sent / MB:.1f} MB sent before the answer (of {total / MB:.0f} MB)"]


def idle_connections(port: int, count: int, hold_s: float) -> tuple[Counter[str], list[str]]:
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError as exc:
            return Counter({f"connect failed after {len(sockets)}: {type(exc).__name__}": 1}), []
    try:
        time.sleep(hold_s / 2)
        predict = status(port, "POST", "/predict", 10, *multipart_args(digit_png()))
        time.sleep(hold_s / 2)
        closed = sum(1 for sock in sockets if closed_by_server(sock))
    finally:
        for sock in sockets:
            sock.close()
    return Counter({f"/predict from a new client: {predict}": 1}), [
        f"{count} connections held {hold_s:g} s; the server closed {closed} of them"
    ]


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def slowloris(port: int, count: int, seconds: float) -> tuple[Counter[str], list[str]]:
    """count connections that send a request line, then a header line every second, never finishing."""
    return trickle(port, count, seconds, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: a\r\n")


def slow_body(port: int, count: int, seconds: float) -> tuple[Counter[str], list[str]]:
    """count uploads that announce 4 MB and send 100 bytes a second."""
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={hi.BOUNDARY}"
            f"\r\nContent-Length: {4 * MB}\r\n\r\n--{hi.BOUNDARY}\r\n").encode()  # fmt: skip
    return trickle(port, count, seconds, head, b"a" * 100)


def trickle(port: int, count: int, seconds: float, head: bytes, piece: bytes) -> tuple[Counter[str], list[str]]:
    """count connections that send `head`, then `piece` every second: what each got within `seconds`."""
    results: Counter[str] = Counter()
    sockets = []
    for _ in range(count):
        sock = raw_http.connect(port, timeout_s=seconds + 10)
        sock.sendall(head)
        sock.setblocking(False)
        sockets.append(sock)
    deadline = time.monotonic() + seconds
    alive = list(sockets)
    while alive and time.monotonic() < deadline:
        for sock in list(alive):
            try:
                data = sock.recv(4096)
                results[str(raw_http.parse(data, True).status or "closed without answer")] += 1
                alive.remove(sock)
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                results[type(exc).__name__] += 1
                alive.remove(sock)
                continue
            try:
                sock.send(piece)
            except OSError as exc:
                results[type(exc).__name__] += 1
                alive.remove(sock)
        time.sleep(1)
    results[f"still open after {seconds:g} s"] += len(alive)
    for sock in sockets:
        sock.close()
    return results, []


def metrics_cardinality(port: int, methods: int, seconds: float) -> tuple[Counter[str], list[str]]:
    """methods requests, each with a new made-up method, then 4 clients scraping /metrics for seconds."""
    statuses: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for result in pool.map(lambda i: status(port, f"M{i:05d}", "/healthz", 10), range(methods)):
            statuses[f"made-up method: {result}"] += 1
    sizes, scrapes = [], Counter[str]()
    deadline = time.monotonic() + seconds

    def scrape() -> None:
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                sizes.append(len(response.read()))
                scrapes[f"/metrics: {response.status}"] += 1
            except (OSError, http.client.HTTPException) as exc:
                scrapes[f"/metrics: {type(exc).__name__}"] += 1
            finally:
                connection.close()

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    notes = [f"/metrics body: {max(sizes) / 1024:.0f} KB, {len(sizes)} scrapes"] if sizes else []
    return statuses + scrapes, notes


@functools.cache
def digit_png(side: int = 112) -> bytes:
    """A real handwritten 3 (the first test digit), side x side on paper."""
    from tests.support.digits import load_sample

    return hi.encode(hi.paper(load_sample().test.images[0], side), "PNG")


def multipart_args(png: bytes) -> tuple[bytes, dict[str, str]]:
    body = hi.multipart([("image", png, "d.png"), ("number", b"3", None)])
    return body, {"Content-Type": f"multipart/form-data; boundary={hi.BOUNDARY}"}


@dataclass
class Attack:
    name: str
    what: str
    run: Callable[[int, float], tuple[Counter[str], list[str]]]  # (port, seconds) -> statuses, notes


def repeated(
    once: Callable[[float], tuple[Counter[str], list[str]]],
) -> Callable[[int, float], tuple[Counter[str], list[str]]]:
    """An attack sent again each time it is answered, until `seconds` have passed (at least once): one client
    keeping up the pressure, so that /healthz is probed throughout."""

    def run(port: int, seconds: float) -> tuple[Counter[str], list[str]]:
        deadline = time.monotonic() + seconds
        statuses: Counter[str] = Counter()
        notes: list[str] = []
        rounds = 0
        while not rounds or time.monotonic() < deadline:
            got, notes = once(max(deadline - time.monotonic(), 1.0))
            statuses += got
            rounds += 1
        return statuses, [f"{rounds} in a row", *notes]

    return run  # type: ignore[return-value]


def decode_attack(name: str, what: str, build: Callable[[], bytes], filename: str, copies: int = 1) -> Attack:
    data = b""

    def once(port: int, seconds: float) -> tuple[Counter[str], list[str]]:
        nonlocal data
        data = data or build()
        statuses = answers(port, [upload(data, filename)] * copies, timeout_s=seconds + 30)
        return statuses, [f"file: {len(data) / 1024:.0f} KB"]

    return Attack(name, what, lambda p, s: repeated(lambda left: once(p, left))(p, s))


def queue_attack(port: int, seconds: float) -> tuple[Counter[str], list[str]]:
    """2 BMP bombs, then 60 uploads of 4.8 MB at once: do the big ones wait behind the bombs' decoding?"""
    bomb = upload(hi.bmp_rle8_bomb(), "bomb.bmp")
    big = upload(hi.padded_png(digit_png(), int(4.8 * MB)), "big.png")
    statuses: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        bombs = pool.submit(answers, port, [bomb, bomb], seconds + 30)
        time.sleep(0.3)
        started = time.monotonic()
        for label, n in answers(port, [big] * 60, timeout_s=seconds + 30).items():
            statuses[f"4.8 MB upload: {label}"] += n
        big_s = time.monotonic() - started
        for label, n in bombs.result().items():
            statuses[f"bomb: {label}"] += n
    return statuses, [f"the 60 uploads took {big_s:.1f} s"]


def hang_up_attack(port: int, seconds: float) -> tuple[Counter[str], list[str]]:
    """4 clients send the BMP bomb and hang up 0.2 s later, then nothing for the rest of `seconds`: does the server
    decode them anyway (CPU) and is /healthz slow meanwhile?"""
    started = time.monotonic()
    bomb = upload(hi.bmp_rle8_bomb(), "bomb.bmp")
    statuses = answers(port, [bomb] * 4, timeout_s=seconds, hang_up_after_s=0.2)
    time.sleep(max(seconds - (time.monotonic() - started), 0))
    return statuses, []


def hang_ups_attack(port: int, seconds: float) -> tuple[Counter[str], list[str]]:
    """4 clients at a time send a 280 x 280 picture of a real digit, which a decoder process decodes, and hang up
    5 ms later, again and again: each decode cancelled replaces its decoder process, so this is what that costs."""
    photo = upload(digit_png(280), "digit.png")

    def once(left: float) -> tuple[Counter[str], list[str]]:
        return answers(port, [photo] * 4, timeout_s=left, hang_up_after_s=0.005), []

    return repeated(once)(port, seconds)


def attacks(seconds: float, idle: int) -> list[Attack]:
    big = 128 * MB
    return [
        Attack("huge-header", "one header value of 128 MB", lambda p, s: repeated(lambda left: streamed(
            p, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, big, b"\r\n\r\n", left))(p, s)),
        Attack("many-headers", "4.2 million headers (32 MB)", lambda p, s: repeated(lambda left: streamed(
            p, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"a: bcd\r\n" * 8192, 32 * MB, b"\r\n", left))(p, s)),
        Attack("huge-url", "a URL of 32 MB", lambda p, s: repeated(lambda left: streamed(
            p, b"GET /", b"a" * 65536, 32 * MB, b" HTTP/1.1\r\nHost: x\r\n\r\n", left))(p, s)),
        Attack("idle-10k", f"{idle:,} connections that send nothing; a new client posts /predict meanwhile",
               lambda p, s: idle_connections(p, idle, s)),
        Attack("slowloris", "1,000 heads trickled a header line a second, never finished",
               lambda p, s: slowloris(p, 1000, s)),
        Attack("slow-body", "200 uploads announcing 4 MB, sent at 100 bytes a second",
               lambda p, s: slow_body(p, 200, s)),
        decode_attack("bmp-rle8", "a 26 KB RLE8 BMP (40 MP, pure-Python decoder)", hi.bmp_rle8_bomb, "x.bmp"),
        decode_attack("jpeg-scans", "a progressive JPEG of 1,000 scans (36 MP, 200 KB)", hi.progressive_jpeg_bomb,
                      "x.jpg"),
        decode_attack("png16-8000x5000", "a 16-bit PNG of 8000 x 5000 (78 KB)", lambda: hi.png16_bomb(8000, 5000),
                      "x.png"),
        decode_attack("webp-40mp", "a lossless WebP of 8000 x 5000", hi.webp_lossless, "x.webp"),
        decode_attack("float-tiff", "a 32-bit float TIFF of 6000 x 6000", hi.float_tiff, "x.tiff"),
        decode_attack("png16-x1-16", "16 uploads at once of a 16-bit PNG of 40,000,000 x 1 (78 KB)",
                      lambda: hi.png16_bomb(40_000_000, 1), "x.png", copies=16),
        Attack("queue", "60 uploads of 4.8 MB at once, behind 2 BMP bombs", queue_attack),
        Attack("hang-up", "4 clients send the BMP bomb and hang up after 0.2 s", hang_up_attack),
        Attack("hang-ups", "4 clients at a time send a 280 x 280 PNG of a digit and hang up 5 ms later, "
               "for the whole attack", hang_ups_attack),
        Attack("metrics-methods", "5,000 requests with made-up methods, then 4 scrapers of /metrics",
               lambda p, s: metrics_cardinality(p, 5000, s)),
    ]  # fmt: skip


# --- the report ----------------------------------------------------------------------------------------------


def quiet() -> tuple[Counter[str], list[str]]:
    time.sleep(5)
    return Counter(), []


def report(runs: dict[str, dict[str, object]]) -> str:
    lines = [
        "# Hostile traffic (benchmarks/hostile.py)",
        "",
        "`python benchmarks/hostile.py --label LABEL` regenerates a run. The service runs as `make run` starts it",
        "(2 workers). CPU: seconds of all server processes over the attack and the 5 s after. RSS: per worker, MB,",
        f"peak during the attack / {SETTLE_S:g} s after. /healthz: a fresh connection every "
        f"{PROBE_EVERY_S * 1000:g} ms from another process; a failure counts as {PROBE_TIMEOUT_S:g} s; the target is",
        f"p99 < {HEALTHZ_TARGET_MS:g} ms.",
    ]
    for label, run in runs.items():
        lines += ["", f"## {label}", "", f"{run['when']}, commit {run['commit']}, load average before: {run['load']}, "
                  f"attacks bounded at {run['seconds']} s, server started with a soft fd limit of "
                  f"{run.get('fd_limit')}.", "",
                  "| attack | statuses | CPU s | peak RSS MB | RSS after MB | /healthz p50 / p99 / max ms | "
                  "failed probes | notes |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in run["results"]:  # type: ignore[attr-defined]
            statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
            p99 = f"**{r['healthz_p99_ms']}**" if r["healthz_p99_ms"] >= HEALTHZ_TARGET_MS else r["healthz_p99_ms"]
            lines.append(
                f"| {r['attack']}: {r['what']} | {statuses} | {r['cpu_s']} | "
                f"{' / '.join(map(str, r['peak_rss_mb']))} | {' / '.join(map(str, r['rss_after_mb']))} | "
                f"{r['healthz_p50_ms']} / {p99} / {r['healthz_max_ms']} | {r['healthz_failed']} of "
                f"{r['healthz_probes']} | {'; '.join(r['notes'])} |"
            )
    return "\n".join(lines) + "\n"


def compare(runs: dict[str, dict[str, object]], before: str, after: str) -> str:
    """The README's table: each attack's statuses, server CPU, /healthz p99 and RSS after, in two runs."""

    def cell(r: dict[str, object]) -> str:
        statuses: dict[str, int] = r["statuses"]  # type: ignore[assignment]
        answers = max(sum(statuses.values()), 1)
        cpu_s = float(r["cpu_s"])  # type: ignore[arg-type]
        rss = " / ".join(f"{mb:.0f}" for mb in r["rss_after_mb"])  # type: ignore[attr-defined]
        return (
            f"{', '.join(f'{k} ×{v:,}' for k, v in statuses.items())}; {cpu_s:g} CPU s "
            f"({cpu_s * 1000 / answers:,.0f} ms each); p99 {r['healthz_p99_ms']:,g} ms; {rss} MB"
        )

    old = {r["attack"]: r for r in runs[before]["results"]}  # type: ignore[attr-defined]
    lines = [
        f"| attack | {before}: statuses; server CPU; /healthz p99; workers' RSS after | {after} |",
        "|---|---|---|",
    ]
    for r in runs[after]["results"]:  # type: ignore[attr-defined]
        if r["attack"] != "baseline" and r["attack"] in old:
            lines.append(f"| {r['what']} | {cell(old[r['attack']])} | {cell(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="the run's name in the results, e.g. before, after")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app/ is served")
    parser.add_argument("--seconds", type=float, default=20, help="bound on each attack")
    parser.add_argument("--idle", type=int, default=10_000, help="connections in idle-10k")
    parser.add_argument(
        "--fd-limit",
        type=int,
        default=1024,
        help="the soft RLIMIT_NOFILE the server starts with (1,024: Docker's and many shells' default)",
    )
    parser.add_argument("--only", action="append", help="attack names to run (all when absent)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print the README's table of two saved runs only"
    )
    args = parser.parse_args()
    if args.compare:
        print(compare(json.loads((args.results / "hostile.json").read_text()), *args.compare), end="")
        return
    if not args.label:
        parser.error("--label is required to run the attacks")
    raw_http.raise_fd_limit()
    chosen = [a for a in attacks(args.seconds, args.idle) if not args.only or a.name in args.only]
    load = os.getloadavg()[0]
    log = Path(tempfile.mkdtemp(prefix="digitsum-hostile-")) / "serve.log"
    server = start_server(args.root.resolve(), log, args.fd_limit)
    results = []
    try:
        results.append(measure(server, "baseline", "no attack: the probe alone for 5 s", quiet))
        for attack in chosen:
            print(f"{attack.name}: {attack.what}", flush=True)
            result = measure(server, attack.name, attack.what, lambda a=attack: a.run(server.port, args.seconds))  # type: ignore[misc]
            took = recover(server)
            if took > 1:
                result.notes.append(f"/healthz took {took:.0f} s to be quick again after")
            print(f"  {result}", flush=True)
            results.append(result)
    finally:
        stop_server(server)
    print(f"server log: {log}")
    save(args, load, results)


def save(args: argparse.Namespace, load: float, results: list[Result]) -> None:
    path = args.results / "hostile.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    commit = subprocess.run(["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or args.root.name  # fmt: skip
    if args.only and args.label in runs:  # a partial rerun replaces those attacks and keeps the others
        new = {r.attack: asdict(r) for r in results if r.attack != "baseline"}
        results_json = [new.pop(r["attack"], r) for r in runs[args.label]["results"]] + list(new.values())
    else:
        results_json = [asdict(r) for r in results]
    runs[args.label] = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "load": round(load, 2),
        "seconds": args.seconds,
        "fd_limit": args.fd_limit,
        "results": results_json,
    }
    path.write_text(json.dumps(runs, indent=1) + "\n")
    (args.results / "hostile.md").write_text(report(runs))
    print(report({args.label: runs[args.label]}))


if __name__ == "__main__":
    main()
