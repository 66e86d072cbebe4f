"""Soak: real uvicorn under a steady mix of good and hostile requests; no 5xx, no memory creep.

    python benchmarks/soak.py                  # 3 minutes: 6 windows of 30 s, 32 connections
    python benchmarks/soak.py --seconds 60 --window 15

Starts one `uvicorn app.main:app --no-access-log` process (as the Dockerfile does; `make run` starts one per
core) on 127.0.0.1 with the shipped model on the CPU, drives it with wrk (benchmarks/bodies.lua) in consecutive
windows, samples the server's resident memory (VmRSS in /proc/PID/status) every 2 s, and reports per window: throughput,
latency percentiles, statuses and RSS. The first window is the warm-up. Targets: no 5xx at all, and RSS
after the warm-up grows by less than 50 MB. Writes markdown to stdout and to benchmarks/results/soak.md.

Each 20 requests of the rotation: 14 real test-split digits (PNG + number, 200), 2 garbage files (415),
2 numbers out of range (422), 1 blank page (422) and 1 JSON body (415).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serve import FORM, free_port, multipart_body, png_bytes, run_wrk, socket_errors, write_bodies  # noqa: E402
from training.data import load_sample  # noqa: E402

GROWTH_TARGET_MB = 50.0
# (kind, requests per 20, expected status)
MIX = [("digit", 14, 200), ("garbage", 2, 415), ("bad number", 2, 422), ("blank", 1, 422), ("json", 1, 415)]


def body(kind: str, digit: np.ndarray, number: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """One request of a MIX kind: (body, Content-Type)."""
    if kind == "digit":
        return multipart_body(png_bytes(digit), str(number)), FORM
    if kind == "garbage":
        return multipart_body(rng.bytes(2048), "3"), FORM
    if kind == "bad number":
        return multipart_body(png_bytes(digit), str(rng.choice(["10", "-1", "3.5", "x"]))), FORM
    if kind == "blank":
        return multipart_body(png_bytes(np.full((64, 64), 255, np.uint8)), "3"), FORM
    assert kind == "json", kind
    return json.dumps({"image": "x", "number": 3}).encode(), "application/json"


def write_mix(directory: Path, rounds: int = 50) -> None:
    """`rounds` x 20 request bodies in MIX proportions, in rotation order, as bodies.lua reads them."""
    digits = load_sample().test.images.numpy()  # (1000, 28, 28) uint8, never seen in training
    rng = np.random.default_rng(0)
    kinds = [kind for kind, count, _ in MIX for _ in range(count)] * rounds
    requests = [body(kind, digits[k % len(digits)], k % 10, rng) for k, kind in enumerate(kinds)]
    write_bodies([data for data, _ in requests], directory, [content_type for _, content_type in requests])


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    env = {**os.environ, "DIGITSUM_DEVICE": "cpu"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"uvicorn did not become ready:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match, f"no VmRSS for process {pid}"
    return int(match.group(1)) / 1024


class RssSampler(threading.Thread):
    """(seconds since start, RSS in MB) every `interval_s`, until stop()."""

    def __init__(self, pid: int, interval_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self.start_time = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.monotonic() - self.start_time, rss_mb(self.pid)))
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Window:
    """One wrk run, from what bodies.lua's done() prints (latencies there in microseconds)."""

    requests: int
    seconds: float
    statuses: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int

    @classmethod
    def from_wrk(cls, data: dict[str, Any]) -> Window:
        ms = {key: data[f"{key}_us"] / 1000 for key in ("p50", "p90", "p99", "max")}
        return cls(
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            statuses=data["statuses"],
            p50_ms=ms["p50"],
            p90_ms=ms["p90"],
            p99_ms=ms["p99"],
            max_ms=ms["max"],
            socket_errors=socket_errors(data),
        )

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


def run_window(url: str, bodies: Path, seconds: int, connections: int, threads: int) -> Window:
    return Window.from_wrk(run_wrk(url + "/predict", bodies, None, connections, seconds, threads, timeout_s=10))


def server_5xx(url: str) -> int:
    """5xx answers of /predict the server itself counted, whatever wrk saw (/readyz is 503 while warming up)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = re.findall(r'_duration_seconds_count\{[^}]*route="/predict",status="5\d\d"\} (\S+)', text)
    return int(sum(float(count) for count in counts))


def rss_at(samples: list[tuple[float, float]], seconds: float) -> float:
    """The last RSS sample taken by `seconds` after the load started."""
    return [mb for t, mb in samples if t <= seconds + 0.5][-1]


def table(windows: list[Window], samples: list[tuple[float, float]], window_s: int) -> str:
    statuses = sorted({status for w in windows for status in w.statuses}, key=int)
    lines = [
        "| window | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | "
        + " | ".join(statuses)
        + " | socket errors | RSS MB at end |",
        "|" + "---|" * (9 + len(statuses)),
    ]
    for i, w in enumerate(windows):
        end = (i + 1) * window_s
        cells = [
            f"{i * window_s}-{end} s" + (" (warm-up)" if i == 0 else ""),
            f"{w.requests:,}",
            f"{w.requests / w.seconds:.0f}",
            *(f"{ms:.1f}" for ms in (w.p50_ms, w.p90_ms, w.p99_ms, w.max_ms)),
            *(f"{w.statuses.get(status, 0):,}" for status in statuses),
            str(w.socket_errors),
            f"{rss_at(samples, end):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=180, help="total load time, including the warm-up window")
    parser.add_argument("--window", type=int, default=30, help="seconds per reported window (the first is warm-up)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine skews latency, not correctness or memory
    with tempfile.TemporaryDirectory(prefix="digitsum-soak-") as tmp:
        bodies = Path(tmp)
        write_mix(bodies)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(port, bodies / "uvicorn.log")
        sampler = RssSampler(process.pid)
        sampler.start()
        start_rss = rss_mb(process.pid)
        windows: list[Window] = []
        try:
            for _ in range(max(1, args.seconds // args.window)):
                windows.append(run_window(url, bodies, args.window, args.connections, args.threads))
            server_errors = server_5xx(url)
        finally:
            try:
                sampler.stop()
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        log_errors = [line for line in (bodies / "uvicorn.log").read_text().splitlines() if " ERROR " in line]

    samples = sampler.samples
    after = [mb for t, mb in samples if t > args.window]
    at_warm_end = rss_at(samples, args.window)
    growth, peak_growth = after[-1] - at_warm_end, max(after) - at_warm_end
    total = sum(w.requests for w in windows)
    wrk_5xx = sum(w.server_errors for w in windows)
    all_ms = [w.p50_ms for w in windows[1:]], [w.p99_ms for w in windows[1:]]
    expected = ", ".join(f"{kind} {count / 20:.0%} -> {status}" for kind, count, status in MIX)
    meta = (
        f"# Soak: {len(windows)} x {args.window} s, {args.connections} connections, wrk {args.threads} threads\n\n"
        f"{datetime.date.today()}, {os.cpu_count()} CPU cores, load average {load_before:.1f} before the run and "
        f"{os.getloadavg()[0]:.1f} at the end; "
        f"server on the CPU with its defaults (`uvicorn app.main:app --no-access-log`).\n"
        f"Mix: {expected}.\n\n"
        f"- requests: {total:,}; 5xx seen by wrk: {wrk_5xx}; 5xx counted by the server: {server_errors}; "
        f"ERROR log lines: {len(log_errors)}\n"
        f"- RSS: {start_rss:.1f} MB when ready, {at_warm_end:.1f} MB after the warm-up window, "
        f"{after[-1]:.1f} MB at the end (peak {max(after):.1f} MB): growth after warm-up {growth:+.1f} MB "
        f"(peak {peak_growth:+.1f} MB), target < {GROWTH_TARGET_MB:.0f} MB\n"
        f"- latency after warm-up: p50 {min(all_ms[0]):.1f}-{max(all_ms[0]):.1f} ms, "
        f"p99 {min(all_ms[1]):.1f}-{max(all_ms[1]):.1f} ms across windows\n"
        f"- verdict: {'PASS' if wrk_5xx == server_errors == 0 and peak_growth < GROWTH_TARGET_MB else 'FAIL'}"
    )
    text = meta + "\n\n" + table(windows, samples, args.window) + "\n"
    rss_line = " ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in samples[:: max(1, len(samples) // 30)])
    text += f"\nRSS samples (s: MB): {rss_line}\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
