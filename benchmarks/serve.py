"""Serving speed on this machine: the service vs the tutorial FastAPI server vs LitServe vs the bare model.

    python benchmarks/serve.py                       # 10 s per point at 1, 16 and 64 connections
    python benchmarks/serve.py --seconds 5 --only service --connections 64
    python benchmarks/serve.py --only litserve --litserve-args "--max-batch-size 32 --batch-timeout 0.005"

Every server serves models/digitsum.pt with app.preprocess.preprocess and gets the same load: wrk (one
thread) driving benchmarks/multipart.lua, which rotates through 1,000 multipart bodies built here from the
test split (PNG + number). Each server runs alone as a subprocess on 127.0.0.1: start, wait until ready,
check one answer, warm up until every worker answers 200, measure each connection count, stop.

    (a)  service   `make run`: app/serve.py with the Makefile's workers and the service's defaults
    (b)  naive     benchmarks/naive_server.py: decode and forward inside an async handler, no batching
    (b1) naive     the same with OMP_NUM_THREADS=1, to show how much of (a)/(b) is torch's thread default
    (c)  litserve  benchmarks/litserve_server.py: LitServe's batching (settings: --litserve-args)
    (d)  floor     the TorchScript forward alone on preprocessed tensors, no HTTP, batch 1 and 64

Writes a markdown table to stdout and to benchmarks/results/serve.md. The machine is shared: the report
states the load average, and CPU ms per request (CPU time of the server's processes / requests) is the
figure that other load disturbs least.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.preprocess import preprocess  # noqa: E402
from training.data import load_sample  # noqa: E402

LUA = ROOT / "benchmarks" / "multipart.lua"
MODEL = ROOT / "models" / "digitsum.pt"
BOUNDARY = "digitsumbenchmark7MA4YWxkTrZu0gW"
MAX_PIXELS = 40_000_000
# LitServe's best at 64 connections on this machine, the default for (c); --sweep tries these and (c) then uses the
# best of them (benchmarks/results/serve.md has the last sweep)
LITSERVE_BEST = "--max-batch-size 16 --batch-timeout 0.002 --torch-threads 1 --workers 2 --api-servers 2"
LITSERVE_SWEEP = [
    LITSERVE_BEST,
    "--max-batch-size 8 --batch-timeout 0.001 --torch-threads 1 --workers 2 --api-servers 2",
    "--max-batch-size 32 --batch-timeout 0.005 --torch-threads 1 --workers 2 --api-servers 2",
    "--max-batch-size 64 --batch-timeout 0.002 --torch-threads 1 --workers 2 --api-servers 2",
    "--max-batch-size 16 --batch-timeout 0.002 --torch-threads 1 --workers 2 --api-servers 2 --fast-queue",
    "--max-batch-size 16 --batch-timeout 0.002 --torch-threads 1 --workers 2 --api-servers 1",
    "--max-batch-size 16 --batch-timeout 0.002 --workers 2 --api-servers 2",  # torch's default threads
    "--max-batch-size 16 --batch-timeout 0.002 --torch-threads 1 --workers 1 --api-servers 1",
    "--max-batch-size 4 --batch-timeout 0.001 --torch-threads 1 --workers 1 --api-servers 1",
    "--max-batch-size 32 --batch-timeout 0.005 --torch-threads 1 --workers 1 --api-servers 1",
    "--max-batch-size 16 --batch-timeout 0.002 --workers 1 --api-servers 1",
]
SERVERS = ("service", "before", "naive", "naive1", "litserve")
LABELS = {"service": "(a) service", "before": "(a0) service before", "naive": "(b) naive FastAPI",
          "naive1": "(b1) naive, 1 torch thread", "litserve": "(c) LitServe"}  # fmt: skip


@dataclass
class Point:
    server: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers + socket errors (connect, read, write, timeout)
    cpu_cores: float  # CPU time of the server's processes per wall second
    load: float  # 1-minute load average right after the point

    @property
    def cpu_ms(self) -> float:
        return self.cpu_cores * 1000 / self.rps if self.rps else float("nan")


# --- the load -----------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart_body(png: bytes, number: int) -> bytes:
    """The body a browser form sends: the image file, then the number field."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n")  # fmt: skip
    tail = f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="number"\r\n\r\n{number}\r\n--{BOUNDARY}--\r\n'
    return head.encode() + png + tail.encode()


def write_bodies(images: np.ndarray, out: Path) -> list[bytes]:
    """(N, 28, 28) uint8 -> N body files for multipart.lua; image i is sent with number i % 10."""
    bodies = [multipart_body(png_bytes(pixels), i % 10) for i, pixels in enumerate(images)]
    for i, body in enumerate(bodies):
        (out / f"body_{i:04d}.bin").write_bytes(body)
    (out / "boundary.txt").write_text(BOUNDARY)
    return bodies


def run_wrk(url: str, body_dir: Path, count: int, connections: int, seconds: int) -> dict[str, object]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url,
               "--", str(body_dir), str(count)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    assert line is not None, f"wrk printed no result:\n{result.stdout}\n{result.stderr}"
    return dict(json.loads(line.removeprefix("WRK_RESULT ")))


def errors_of(result: dict[str, object]) -> int:
    statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
    return sum(n for code, n in statuses.items() if not code.startswith("2")) + int(result["socket_errors"])  # type: ignore[call-overload]


# --- the servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run_command(port: int, workers: str, root: Path = ROOT) -> tuple[list[str], dict[str, str]]:
    """The Makefile's `run` recipe, read from the Makefile so the benchmark follows it: (argv, its VAR=value env)."""
    recipe = re.search(r"^run:.*\n((?:\t.*\\\n)*\t.*)$", (root / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "Makefile has no run target"
    line = re.sub(r"\\\n\t*", " ", recipe.group(1)).replace("$$(mktemp -d)", tempfile.mkdtemp(prefix="digitsum-"))
    variables = {"BIN": str(Path(sys.executable).parent), "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": workers}
    words = shlex.split(re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], line))
    env = dict(word.split("=", 1) for word in itertools.takewhile(lambda w: re.fullmatch(r"\w+=.*", w), words))
    return words[len(env) :], env


def makefile_default(name: str, root: Path = ROOT) -> str:
    found = re.search(rf"^{name} \?= (\S+)$", (root / "Makefile").read_text(), re.MULTILINE)
    return found.group(1) if found else "1"


def server_command(name: str, port: int, args: argparse.Namespace) -> tuple[list[str], str, dict[str, str]]:
    """The command line, its readiness path and its extra environment."""
    if name == "service":
        command, env = make_run_command(port, args.workers)
        return command, "/readyz", {**env, **dict(kv.split("=", 1) for kv in args.service_env)}
    if name == "before":  # `make run` as it was at --before, in a worktree, on the same checkpoint
        command, env = make_run_command(port, makefile_default("WORKERS", args.before_dir), args.before_dir)
        return command, "/readyz", {**env, "DIGITSUM_MODEL_PATH": str(MODEL)}
    if name in ("naive", "naive1"):
        command = [sys.executable, "-m", "uvicorn", "benchmarks.naive_server:app", "--host", "127.0.0.1",
                   "--port", str(port), "--no-access-log"]  # fmt: skip
        return command, "/healthz", {"OMP_NUM_THREADS": "1"} if name == "naive1" else {}
    assert name == "litserve", name
    script = str(ROOT / "benchmarks" / "litserve_server.py")
    return [sys.executable, script, "--port", str(port), *shlex.split(args.litserve_args)], "/health", {}


def get_status(port: int, path: str) -> int:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return 0


def post(port: int, body: bytes) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def start(name: str, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command, ready_path, env = server_command(name, port, args)
    cwd = args.before_dir if name == "before" else ROOT
    with log.open("wb") as out:  # its own session, so stop() reaches LitServe's and uvicorn's worker processes
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                   start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while get_status(port, ready_path) != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise SystemExit(f"{name} did not become ready; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever is left of it (LitServe can leave a child)."""
    for sig, timeout in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # let the workers exit on their own before the SIGKILL round


def session_cpu_s(sid: int) -> float:
    """User + system CPU seconds of every live process in session `sid` (the server and its workers)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
        except OSError:
            continue
        if fields and int(fields[3]) == sid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def warm_up(
    name: str, port: int, url: str, body_dir: Path, bodies: list[bytes], labels: np.ndarray, args: argparse.Namespace
) -> None:
    """One right answer, then load until a warm-up run is error-free (with several workers, all must be ready)."""
    deadline = time.monotonic() + 120
    while (answer := post(port, bodies[0]))[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert answer[0] == 200 and answer[1]["digit"] == labels[0], (name, answer)
    for _ in range(10):
        if errors_of(run_wrk(url, body_dir, len(bodies), max(args.connections), args.warmup)) == 0:
            return
    raise SystemExit(f"{name} still answers errors after 10 warm-up runs")


def measure(
    name: str, args: argparse.Namespace, body_dir: Path, bodies: list[bytes], labels: np.ndarray
) -> list[Point]:
    process, port = start(name, args, body_dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}/predict"
    try:
        warm_up(name, port, url, body_dir, bodies, labels, args)
        points = []
        for connections in args.connections:
            cpu, wall = session_cpu_s(process.pid), time.perf_counter()
            r = run_wrk(url, body_dir, len(bodies), connections, args.seconds)
            cores = (session_cpu_s(process.pid) - cpu) / (time.perf_counter() - wall)
            rps = int(r["requests"]) / (int(r["duration_us"]) / 1e6)  # type: ignore[call-overload]
            p = Point(name, connections, rps, int(r["p50_us"]) / 1000, int(r["p99_us"]) / 1000,  # type: ignore[call-overload]
                      errors_of(r), cores, os.getloadavg()[0])  # fmt: skip
            points.append(p)
            print(f"  {name:9s} c={connections:3d}: {p.rps:6.0f} req/s  p50 {p.p50_ms:6.1f} ms  "
                  f"p99 {p.p99_ms:6.1f} ms  errors {p.errors}  {cores:.2f} cores  {p.cpu_ms:.2f} CPU ms/req  "
                  f"load {p.load:.2f}  {r['statuses']}",
                  file=sys.stderr, flush=True)  # fmt: skip
        if args.profile:
            PROFILES[name] = profile(process.pid, url, body_dir, len(bodies), max(args.connections), args.profile)
        return points
    finally:
        stop(process)


SWEEP: list[tuple[str, Point]] = []  # (LitServe arguments, its point at the most connections)


def sweep(args: argparse.Namespace, body_dir: Path, bodies: list[bytes], labels: np.ndarray) -> None:
    """LitServe under each setting of LITSERVE_SWEEP at the most connections, for --litserve-args."""
    settings = argparse.Namespace(**{**vars(args), "connections": [max(args.connections)], "seconds": args.sweep,
                                     "profile": 0})  # fmt: skip
    for litserve_args in LITSERVE_SWEEP:
        settings.litserve_args = litserve_args
        SWEEP.append((litserve_args, measure("litserve", settings, body_dir, bodies, labels)[0]))


# --- the profile --------------------------------------------------------------------------------

# py-spy frames read "function (package/file.py:line)". A sample is charged to the stage of its innermost frame
# that names one; waiting threads (a worker blocked on its queue, the loop in epoll) are not counted.
STAGES = [
    ("preprocess (app.preprocess)", ("(app/preprocess.py",)),
    ("forward (TorchScript)", ("(torch/",)),
    ("multipart form parsing", ("(python_multipart/", "(starlette/formparsers.py", "(multipart/")),
    ("multiprocessing (LitServe's queues, uvicorn's supervisor)", ("(multiprocessing/", "(litserve/transport/",
                                                                   "(pickle.py", "(copyreg.py")),
    ("validation and JSON (pydantic, json)", ("(pydantic", "(json/")),
    ("metrics (prometheus_client)", ("(prometheus_client/",)),
    ("batching and results (app/batching, predictor, model; LitServe loops)", ("(app/batching.py", "(app/predictor.py",
                                                                             "(app/model.py", "(litserve/loops/")),
    ("thread hops (anyio, concurrent.futures)", ("(anyio/", "(concurrent/futures/", "(threading.py")),
    ("framework and handler (fastapi, starlette, app, litserve)", ("(fastapi/", "(starlette/", "(app/", "(litserve/",
                                                                   "(naive_server.py", "(litserve_server.py")),
    ("HTTP server (uvicorn, httptools)", ("(uvicorn/",)),
    ("event loop (asyncio, uvloop)", ("(asyncio/", "(uvloop/")),
]  # fmt: skip
IDLE = (
    "Condition.wait (",
    "Event.wait (",
    "Queue.get (",
    "select (",
    "poll (",
    "Connection._recv (",
    "_recv_bytes (",
    "accept (",
    "_worker (",
)
PROFILES: dict[str, tuple[dict[str, float], float]] = {}  # server -> ({stage: share of busy samples}, CPU ms/request)


def stage_of(frames: list[str]) -> str | None:
    if any(frames[-1].startswith(idle) for idle in IDLE):
        return None
    for frame in reversed(frames):
        for stage, markers in STAGES:
            if any(marker in frame for marker in markers):
                return stage
    return "other (interpreter, C extensions)"


def profile(
    pid: int, url: str, body_dir: Path, count: int, connections: int, seconds: int
) -> tuple[dict[str, float], float]:
    """py-spy on every process of the server during one more run at `connections`: where its CPU goes."""
    raw = body_dir / f"profile-{pid}.txt"
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--subprocesses", "--rate", "100",
           "--duration", str(seconds), "--format", "raw", "--output", str(raw)]  # fmt: skip
    with subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as recorder:
        cpu = session_cpu_s(pid)
        r = run_wrk(url, body_dir, count, connections, seconds + 1)
        cpu_ms = (session_cpu_s(pid) - cpu) / max(int(r["requests"]), 1) * 1000  # type: ignore[call-overload]
        recorder.wait()
    samples: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if (stage := stage_of(stack.split(";"))) is not None:
            samples[stage] = samples.get(stage, 0) + int(n)
    total = sum(samples.values()) or 1
    return {stage: n / total for stage, n in samples.items()}, cpu_ms


# --- the floor ----------------------------------------------------------------------------------


def images_per_s(
    model: torch.jit.ScriptModule, images: torch.Tensor, numbers: torch.Tensor, batch: int, seconds: float
) -> float:
    """Forward passes over the preprocessed test images, `batch` at a time, for about `seconds`."""
    with torch.inference_mode():
        for _ in range(5):  # past the profiling executor's first runs at this shape
            model(images[:batch], numbers[:batch])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            i = done % (len(images) - batch + 1)
            model(images[i : i + batch], numbers[i : i + batch])
            done += batch
        return done / (time.perf_counter() - start)


def floor(images: np.ndarray, seconds: float) -> tuple[dict[tuple[str, int, int], float], float]:
    """{(layout, torch threads, batch): images/s} for the bare model, and preprocess ms per 28x28 PNG."""
    pngs = [png_bytes(pixels) for pixels in images]
    start = time.process_time()
    pixels = np.stack([preprocess(png, MAX_PIXELS) for png in pngs])  # (N, 28, 28)
    preprocess_ms = (time.process_time() - start) / len(pngs) * 1000
    tensors = torch.from_numpy(pixels).unsqueeze(1), torch.arange(len(pngs)) % 10  # (N, 1, 28, 28), (N,)
    default_threads, rates = torch.get_num_threads(), {}
    for layout in ("as saved", "channels-last"):
        model = torch.jit.load(str(MODEL), map_location="cpu").eval()
        if layout == "channels-last":  # as app/model.py loads it on the CPU
            model.to(memory_format=torch.channels_last)
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            for batch in (1, 64):
                rates[layout, threads, batch] = images_per_s(model, *tensors, batch, seconds)
    torch.set_num_threads(default_threads)
    return rates, preprocess_ms


# --- the report ---------------------------------------------------------------------------------


def ratio(x: float, y: float | None) -> str:
    return f"{x / y:.2f}" if y else "-"


def report(points: list[Point], rates: dict[tuple[str, int, int], float], preprocess_ms: float,
           args: argparse.Namespace, loads: tuple[float, float]) -> str:  # fmt: skip
    command = " ".join(["python benchmarks/serve.py", *args.argv])
    lines = [
        f"Serving benchmark, {datetime.date.today()}, {os.cpu_count()} CPU cores shared with other jobs, `{command}`: "
        f"wrk -t1, {args.seconds} s per point after warm-up, 1,000 test-split PNGs rotated. "
        f"Load average (1 min) {loads[0]:.2f} at the start, {loads[1]:.2f} at the end.",
        "",
        f"(a) `make run` with {args.workers} worker{'s' * (args.workers != '1')}"
        + (f" and `{' '.join(args.service_env)}`" if args.service_env else "")
        + (f". (a0) `make run` as it was at `{args.before}`" if args.before else "")
        + f". (c) `benchmarks/litserve_server.py {args.litserve_args}`. Errors: non-2xx answers plus socket errors. "
        "cores: CPU time of the server's processes per second; CPU ms/request: that time per answered request. "
        "load: the 1-minute load average after the point, which counts the benchmark's own runnable threads too.",
        "",
        "| server | connections | requests/s | p50 ms | p99 ms | errors | cores | CPU ms/request | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(f"| {LABELS[p.server]} | {p.connections} | {p.rps:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
                     f"{p.errors} | {p.cpu_cores:.2f} | {p.cpu_ms:.2f} | {p.load:.2f} |")  # fmt: skip
    for (layout, threads, batch), rate in sorted(rates.items()):
        cpu_ms = f"{1000 / rate:.2f}" if threads == 1 else "-"
        lines.append(f"| (d) forward {layout}, batch {batch}, {threads} thread{'s' * (threads > 1)} | - | "
                     f"{rate:,.0f} images/s | - | - | - | - | {cpu_ms} | - |")  # fmt: skip
    by = {(p.server, p.connections): p for p in points}
    if any(server == "service" for server, _ in by):
        lines += ["", "| connections | (a)/(b) req/s | (a)/(b1) req/s | (a)/(c) req/s | (a)/(d) | (a)/(b) p50 "
                  "| (a)/(b) p99 | (a)/(c) p99 |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for c in args.connections:
            a, b, b1, lit = (by.get((s, c)) for s in ("service", "naive", "naive1", "litserve"))
            if a is None:
                continue
            floor_rate = rates.get(("channels-last", 1, 1 if c == 1 else 64))
            lines.append(f"| {c} | {ratio(a.rps, b and b.rps)} | {ratio(a.rps, b1 and b1.rps)} | "
                         f"{ratio(a.rps, lit and lit.rps)} | {ratio(a.rps, floor_rate)} | "
                         f"{ratio(a.p50_ms, b and b.p50_ms)} | "
                         f"{ratio(a.p99_ms, b and b.p99_ms)} | {ratio(a.p99_ms, lit and lit.p99_ms)} |")  # fmt: skip
        lines += ["", "(a)/(d): the service's requests/s over the bare channels-last forward's images/s on one thread "
                  "(batch 1 for 1 connection, else 64). Latency ratios under 1 mean (a) is faster."]  # fmt: skip
    if rates:
        lines += ["", f"`app.preprocess.preprocess` on a 28x28 test PNG: {preprocess_ms:.2f} CPU ms per image."]
    if SWEEP:
        lines += ["", f"LitServe settings tried first, {args.sweep} s each at {max(args.connections)} connections "
                  "(c) is the best of them by requests/s:", "",
                  "| litserve_server.py arguments | requests/s | p50 ms | p99 ms | errors | cores | CPU ms/request |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for litserve_args, p in SWEEP:
            lines.append(f"| `{litserve_args}` | {p.rps:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.errors} | "
                         f"{p.cpu_cores:.2f} | {p.cpu_ms:.2f} |")  # fmt: skip
    if PROFILES:
        servers = [s for s in SERVERS if s in PROFILES]
        lines += ["", f"Where the CPU goes at {max(args.connections)} connections: py-spy (100 Hz, every process of "
                  f"the server) during one more {args.profile} s run: CPU ms per request = the run's CPU ms per "
                  "request x the "
                  "stage's share of samples of threads not idle (running, or waiting for the GIL, which overstates "
                  "GIL-bound stages in a crowded single process).", "",
                  "| stage | " + " | ".join(LABELS[s] for s in servers) + " |",
                  "|---|" + "---:|" * len(servers)]  # fmt: skip
        shares = {server: {**PROFILES[server][0], "total": 1.0} for server in servers}
        for stage in sorted(set().union(*shares.values()), key=lambda st: -shares[servers[0]].get(st, 0)):
            cells = [f"{shares[sv].get(stage, 0) * PROFILES[sv][1]:.2f} ({100 * shares[sv].get(stage, 0):.0f}%)"
                     for sv in servers]  # fmt: skip
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="measurement per point")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before the first point of each server")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*SERVERS, "floor"],
        default=[*SERVERS, "floor"],
        help="(a0) 'before' runs only with --before",
    )
    parser.add_argument("--workers", default=makefile_default("WORKERS"), help="WORKERS for `make run`")
    parser.add_argument("--service-env", nargs="*", default=[], help="env to try on (a), e.g. DIGITSUM_TORCH_THREADS=0")
    parser.add_argument("--litserve-args", default=LITSERVE_BEST, help="for benchmarks/litserve_server.py")
    parser.add_argument("--before", metavar="GIT_REF", help="also measure `make run` as it was at this commit, as (a0)")
    parser.add_argument(
        "--sweep",
        type=int,
        default=0,
        metavar="SECONDS",
        help="first try each LitServe setting of LITSERVE_SWEEP this long at the most connections; (c) is the best",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="after the points, py-spy each server this long at the most connections",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.md")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    assert all(re.fullmatch(r"\w+=.*", kv) for kv in args.service_env), "--service-env takes NAME=value"
    split = load_sample().test
    images, labels = split.images.numpy(), split.labels.numpy()  # (1000, 28, 28) uint8, (1000,)
    loads = [os.getloadavg()[0]]
    print(f"load average at start: {loads[0]:.2f}", file=sys.stderr)
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="digitsum-bench-") as tmp:
        bodies = write_bodies(images, Path(tmp))
        if args.sweep:
            sweep(args, Path(tmp), bodies, labels)
            args.litserve_args = max(SWEEP, key=lambda tried: tried[1].rps)[0]
        if args.before:
            args.before_dir = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(args.before_dir), args.before], cwd=ROOT,
                           check=True, capture_output=True)  # fmt: skip
        try:
            for name in SERVERS:
                if name in args.only and (name != "before" or args.before):
                    points += measure(name, args, Path(tmp), bodies, labels)
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(args.before_dir)], cwd=ROOT, check=True)
    rates, preprocess_ms = floor(images, min(args.seconds, 3)) if "floor" in args.only else ({}, 0.0)
    loads.append(os.getloadavg()[0])
    text = report(points, rates, preprocess_ms, args, (loads[0], loads[1]))
    print(text)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
