"""Serving speed on this machine: the service vs the tutorial FastAPI server vs LitServe, BentoML and Ray Serve
vs the framework alone vs the bare model, and the service's cost curve.

    python benchmarks/serve.py                       # 10 s per point at 1, 16, 64 and 256 connections
    python benchmarks/serve.py --seconds 5 --only service --connections 64
    python benchmarks/serve.py --only litserve --litserve-args "--max-batch-size 32 --batch-timeout 0.005"
    python benchmarks/serve.py --sweep 5 --profile 8  # tune the three peers first, then py-spy every server
    python benchmarks/serve.py --from-json benchmarks/results/serve.json  # the report and plot again

Every server serves models/digitsum.pt with app.preprocess.preprocess and gets the same load: wrk (one
thread) driving benchmarks/bodies.lua, which rotates through 1,000 multipart bodies built here from the
test split (PNG + number). Each server runs alone as a subprocess on 127.0.0.1: start, wait until ready,
check one answer, warm up until every worker answers 200, measure each connection count, stop.

    (a)  service   `make run`: app/serve.py with the Makefile's workers and the service's defaults
    (b)  naive     benchmarks/naive_server.py: decode and forward inside an async handler, no batching
    (b1) naive     the same with OMP_NUM_THREADS=1, to show how much of (a)/(b) is torch's thread default
    (c)  litserve  benchmarks/litserve_server.py: LitServe's batching (settings: --litserve-args)
    (c2) bentoml   benchmarks/bentoml_server.py: BentoML's adaptive batching (settings: --bentoml-args)
    (c3) rayserve  benchmarks/rayserve_server.py: Ray Serve, @serve.batch behind its HTTP proxy (--rayserve-args)
    (e)  framework benchmarks/floor_server.py: FastAPI + uvicorn as `make run` lays them out, the same form,
                   a constant answer: what the framework alone costs
    (d)  floor     the TorchScript forward alone on preprocessed tensors, no HTTP, batch 1 and 64

--sweep tries each peer's settings (LITSERVE_SWEEP, BENTOML_SWEEP, RAYSERVE_SWEEP) at the most connections
first and then measures it with its best. A peer that cannot start here is reported with its error, not
dropped. The cost curve of (a) adds upload sizes (--sizes, at --size-connections; (e) too, for the
framework's share) and images/s of POST /predict/batch at 1, 16 and 64 images per request (--batches),
and plots it all to benchmarks/results/cost_curve.png. The batch endpoint's target compares it with the bare
forward in --rounds alternating rounds (each right after the other), because the machine's speed drifts by a
third within minutes: two figures taken minutes apart would measure the drift.

Writes a markdown table to stdout and to benchmarks/results/serve.md. The machine is shared: the report
states the load average, and CPU ms per request (CPU time of the server's processes / requests) is the
figure that other load disturbs least.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.client
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.decoder import Decoder  # noqa: E402
from app.preprocess import preprocess  # noqa: E402
from app.upload import open_checked  # noqa: E402
from training.data import load_sample  # noqa: E402

LUA = ROOT / "benchmarks" / "bodies.lua"
SOCKET_ERRORS = ("connect_errors", "read_errors", "write_errors", "timeouts")  # as bodies.lua reports them
MODEL = ROOT / "models" / "digitsum.pt"
BOUNDARY = "digitsumbenchmark7MA4YWxkTrZu0gW"
FORM = f"multipart/form-data; boundary={BOUNDARY}"  # the Content-Type of every body built here
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
# BentoML's and Ray Serve's settings tried by --sweep (on 2 cores: a few, each a restart of the whole stack)
BENTOML_BEST = "--max-batch-size 32 --max-latency-ms 1000 --api-workers 2 --model-workers 1"
BENTOML_SWEEP = [
    BENTOML_BEST,
    "--max-batch-size 64 --max-latency-ms 60000 --api-workers 2 --model-workers 1",
    "--max-batch-size 16 --max-latency-ms 1000 --api-workers 1 --model-workers 1",
    "--max-batch-size 100 --max-latency-ms 60000 --api-workers 1 --model-workers 1",  # BentoML's defaults
]
RAYSERVE_BEST = "--max-batch-size 16 --batch-wait-timeout-s 0.002 --replicas 2"
RAYSERVE_SWEEP = [
    RAYSERVE_BEST,
    "--max-batch-size 32 --batch-wait-timeout-s 0.005 --replicas 2",
    "--max-batch-size 16 --batch-wait-timeout-s 0.002 --replicas 1",
    "--max-batch-size 64 --batch-wait-timeout-s 0.01 --replicas 1",
]
PEERS = {"litserve": LITSERVE_SWEEP, "bentoml": BENTOML_SWEEP, "rayserve": RAYSERVE_SWEEP}
SERVERS = ("service", "before", "naive", "naive1", "litserve", "bentoml", "rayserve", "framework")
LABELS = {"service": "(a) service", "before": "(a0) service before", "naive": "(b) naive FastAPI",
          "naive1": "(b1) naive, 1 torch thread", "litserve": "(c) LitServe", "bentoml": "(c2) BentoML",
          "rayserve": "(c3) Ray Serve", "framework": "(e) framework floor"}  # fmt: skip
SCRIPTS = {"litserve": "litserve_server.py", "bentoml": "bentoml_server.py", "rayserve": "rayserve_server.py"}
READY = {"litserve": "/health", "bentoml": "/readyz", "rayserve": "/healthz"}


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
    upload: str = "28x28 PNG"  # what each request carries (UPLOADS)
    images: int = 1  # images per request: 1 for /predict, the batch for /predict/batch
    series: str = "connections"  # which table it belongs to: connections, size (upload sizes) or batch

    @property
    def cpu_ms(self) -> float:
        return self.cpu_cores * 1000 / self.rps if self.rps else float("nan")


# --- the load -----------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def file_part(name: str, data: bytes) -> bytes:
    kind = "jpeg" if data[:2] == b"\xff\xd8" else "png"
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="digit.{kind}"\r\n'
            f"Content-Type: image/{kind}\r\n\r\n")  # fmt: skip
    return head.encode() + data + b"\r\n"


def field_part(name: str, value: int | str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def multipart_body(image: bytes, number: int | str) -> bytes:
    """The body a browser form sends: the image file, then the number field."""
    return file_part("image", image) + field_part("number", number) + f"--{BOUNDARY}--\r\n".encode()


def batch_body(images: list[bytes], numbers: list[int]) -> bytes:
    """POST /predict/batch's form: the `images` files, then one `numbers` field per image, in order."""
    parts = [file_part("images", image) for image in images] + [field_part("numbers", n) for n in numbers]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def digit_bodies(images: np.ndarray) -> list[bytes]:
    """(N, 28, 28) uint8 -> POST /predict bodies: image i as a PNG, sent with the number i % 10."""
    return [multipart_body(png_bytes(pixels), i % 10) for i, pixels in enumerate(images)]


def write_bodies(bodies: list[bytes], out: Path, content_types: list[str] | None = None) -> Path:
    """bodies.lua's BODY_DIR in `out` (made here): the body files and manifest.txt, which names each with its
    Content-Type: this module's multipart form, unless `content_types` gives one per body."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (body, content_type) in enumerate(zip(bodies, content_types or [FORM] * len(bodies), strict=True)):
        (out / f"body_{i:04d}.bin").write_bytes(body)
        lines.append(f"body_{i:04d}.bin\t{content_type}")
    (out / "manifest.txt").write_text("\n".join(lines) + "\n")
    return out


# upload name -> (width, height, format, bodies): the test split's own PNGs, a canvas drawing, phone photos
UPLOADS = {
    "28x28 PNG": (28, 28, "PNG", 1000),
    "280x280 PNG": (280, 280, "PNG", 100),
    "1 MP JPEG": (1152, 864, "JPEG", 16),
    "12 MP JPEG": (4032, 3024, "JPEG", 6),
}


def upload_bytes(digit: np.ndarray, name: str, rng: np.random.Generator) -> bytes:
    """A test digit as the upload `name`: 28x28 as MNIST has it; 280x280 upscaled, white on black, like a
    canvas; a photo: dark ink over a third of the frame on lit, grainy paper, JPEG quality 90 (a 12 MP one
    is ~2.5 MB, like a phone's at its default quality)."""
    width, height, kind, _ = UPLOADS[name]
    if kind == "PNG":
        return png_bytes(np.asarray(Image.fromarray(digit).resize((width, height), Image.Resampling.BICUBIC)))
    side = height // 3
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    light = np.linspace(215, 175, width, dtype=np.float32)[None, :] + np.zeros((height, 1), np.float32)  # (H, W)
    top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
    light[top : top + side, left : left + side] *= 1 - 0.8 * ink
    grain = rng.standard_normal((height, width, 3), dtype=np.float32) * 6
    photo = np.clip(light[..., None] * np.array([1.0, 0.97, 0.9], np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def run_wrk(
    url: str, body_dir: Path, count: int | None, connections: int, seconds: int, threads: int = 1, timeout_s: int = 5
) -> dict[str, object]:
    """wrk with bodies.lua over the first `count` bodies of `body_dir` (None: all): what its done() printed."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout_s}s", "-s",
               str(LUA), url, "--", str(body_dir), *([str(count)] if count else [])]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    assert line is not None, f"wrk printed no result:\n{result.stdout}\n{result.stderr}"
    return dict(json.loads(line.removeprefix("WRK_RESULT ")))


def errors_of(result: dict[str, object]) -> int:
    statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
    return sum(n for code, n in statuses.items() if not code.startswith("2")) + socket_errors(result)


def socket_errors(result: dict[str, object]) -> int:
    return sum(int(result[key]) for key in SOCKET_ERRORS)  # type: ignore[call-overload]


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
    if name == "framework":  # as many processes as (a)
        script = str(ROOT / "benchmarks" / "floor_server.py")
        return [sys.executable, script, "--port", str(port), "--workers", args.workers], "/healthz", {}
    script = str(ROOT / "benchmarks" / SCRIPTS[name])
    return [sys.executable, script, "--port", str(port), *shlex.split(getattr(args, f"{name}_args"))], READY[name], {}


def get_status(port: int, path: str) -> int:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return 0


def post(port: int, body: bytes, path: str = "/predict") -> tuple[int, object]:
    """(status, the JSON answer, or its text where it is not JSON)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", path, body, {"Content-Type": FORM})
    response = connection.getresponse()
    data = response.read()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data[:200].decode(errors="replace")


class ServerFailed(Exception):
    """A server that did not start or did not answer right; the message ends with its log's tail."""


def start(name: str, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command, ready_path, env = server_command(name, port, args)
    cwd = args.before_dir if name == "before" else ROOT
    with log.open("wb") as out:  # its own session, so stop() reaches LitServe's and uvicorn's worker processes
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                   start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while get_status(port, ready_path) != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise ServerFailed(f"{name} did not become ready; its log ends:\n{log_tail(log)}")
        time.sleep(0.2)
    return process, port


def log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever is left of it (LitServe can leave a child),
    and to any process it started in a session of its own (Ray's)."""
    family = processes_of(process.pid)
    for sig, timeout in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # let the workers exit on their own before the SIGKILL round
    for pid in processes_of(process.pid) | (family & processes_of(None)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, session id, user + system CPU seconds, its reaped children's included) of every live
    process."""
    table, tick = {}, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
        except OSError:
            continue
        if fields and fields[0] != "Z":  # a zombie has no CPU left to count and nothing to stop
            # its own user + system time and that of its children it has reaped (a decoder process that exited)
            table[int(entry.name)] = (int(fields[1]), int(fields[3]), sum(map(int, fields[11:15])) / tick)
    return table


def processes_of(pid: int | None, table: dict[int, tuple[int, int, float]] | None = None) -> set[int]:
    """The live processes of server `pid`: its session and every descendant; None: every live process."""
    table = proc_table() if table is None else table
    if pid is None:
        return set(table)
    found = {p for p, (_, sid, _) in table.items() if sid == pid} | {pid} & set(table)
    while grown := {p for p, (parent, _, _) in table.items() if parent in found} - found:
        found |= grown
    return found


def session_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server: every live process of its session and descendants, and the
    children they have reaped."""
    table = proc_table()
    return sum(table[p][2] for p in processes_of(pid, table))


@dataclass
class Load:
    """What the servers are sent: bodies (the 1,000 test PNGs) and their labels in `dir`, the other upload sizes
    ({name: (folder, count)}) and the batch bodies ({images per request: (folder, count)})."""

    dir: Path
    bodies: list[bytes]
    labels: np.ndarray
    sizes: dict[str, tuple[Path, int]]
    batches: dict[int, tuple[Path, int]]
    images: np.ndarray  # (N, 28, 28) uint8: the test images, for the bare forward beside the batch endpoint


def make_load(images: np.ndarray, labels: np.ndarray, tmp: Path, args: argparse.Namespace) -> Load:
    """(N, 28, 28) uint8 -> the bodies; image i is sent with number i % 10."""
    rng = np.random.default_rng(0)
    bodies = digit_bodies(images)
    sizes = {}
    for name in args.sizes:
        if name == "28x28 PNG":
            sizes[name] = (tmp, len(bodies))
            continue
        count = UPLOADS[name][3]
        files = [multipart_body(upload_bytes(images[i], name, rng), i % 10) for i in range(count)]
        sizes[name] = (write_bodies(files, tmp / f"upload-{len(sizes)}"), count)
    batches = {}
    for n in args.batches:
        pngs = [png_bytes(pixels) for pixels in images]
        files = [batch_body(pngs[i : i + n], [j % 10 for j in range(i, i + n)]) for i in range(0, len(pngs) - n + 1, n)]
        batches[n] = (write_bodies(files[:200], tmp / f"batch-{n}"), min(len(files), 200))
    return Load(write_bodies(bodies, tmp), bodies, labels, sizes, batches, images)


def warm_up(name: str, port: int, url: str, load: Load, args: argparse.Namespace) -> None:
    """One right answer, then load until a warm-up run is error-free (with several workers, all must be ready)."""
    deadline = time.monotonic() + 120
    while (answer := post(port, load.bodies[0]))[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    right = answer[0] == 200 and isinstance(answer[1], dict)
    if not (right and (name == "framework" or answer[1]["digit"] == load.labels[0])):  # type: ignore[index]
        raise ServerFailed(f"{name} answered {answer} to the first test digit (a {load.labels[0]})")
    for _ in range(10):
        if errors_of(run_wrk(url, load.dir, len(load.bodies), max(args.connections), args.warmup)) == 0:
            return
    raise ServerFailed(f"{name} still answers errors after 10 warm-up runs")


def point(name: str, pid: int, url: str, body_dir: Path, count: int, connections: int, seconds: int,
          upload: str = "28x28 PNG", images: int = 1, series: str = "connections") -> Point:  # fmt: skip
    """One wrk run: its requests/s, latency, errors and the server's CPU."""
    cpu, wall = session_cpu_s(pid), time.perf_counter()
    r = run_wrk(url, body_dir, count, connections, seconds)
    cores = (session_cpu_s(pid) - cpu) / (time.perf_counter() - wall)
    rps = int(r["requests"]) / (int(r["duration_us"]) / 1e6)  # type: ignore[call-overload]
    p50, p99 = (int(r["p50_us"]) / 1000, int(r["p99_us"]) / 1000) if rps else (math.nan, math.nan)  # type: ignore[call-overload]
    p = Point(name, connections, rps, p50, p99, errors_of(r), cores, os.getloadavg()[0], upload, images, series)
    print(f"  {name:9s} c={connections:3d} {upload:11s} x{images:<2d}: {p.rps:6.0f} req/s  p50 {p.p50_ms:6.1f} ms  "
          f"p99 {p.p99_ms:6.1f} ms  errors {p.errors}  {cores:.2f} cores  {p.cpu_ms:.2f} CPU ms/req  "
          f"load {p.load:.2f}  {r['statuses']}",
          file=sys.stderr, flush=True)  # fmt: skip
    return p


BATCH_NOTE: list[str] = []  # why the batch points are missing, if they are
FAILURES: dict[str, str] = {}  # server -> why it could not run here


def batch_points(pid: int, port: int, load: Load, args: argparse.Namespace) -> list[Point]:
    """images/s of POST /predict/batch at each batch size, if the service has it."""
    first = next(iter(load.batches.values()))[0] / "body_0000.bin"
    status, answer = post(port, first.read_bytes(), "/predict/batch")
    if status != 200:
        why = "this branch has no batch endpoint yet." if status in (404, 405) else "not measured."
        BATCH_NOTE.append(f"POST /predict/batch answered {status} {json.dumps(answer)[:160]}: {why}")
        print(f"  {BATCH_NOTE[-1]}", file=sys.stderr)
        return []
    url = f"http://127.0.0.1:{port}/predict/batch"
    points = []
    for n, (body_dir, count) in load.batches.items():
        run_wrk(url, body_dir, count, args.batch_connections, 1)  # warm-up at this size
        points.append(point("service", pid, url, body_dir, count, args.batch_connections, args.seconds, images=n,
                            series="batch"))  # fmt: skip
    if args.rounds:
        batch = max(load.batches)
        alternate(pid, url, *load.batches[batch], batch, bare_inputs(load.images), args)
    return points


@dataclass
class Round:
    """One alternating round: (a)'s POST /predict/batch images/s at `batch` images per request, then the bare
    forward's images/s at that batch by torch threads."""

    batch: int
    served: float
    bare: dict[int, float]

    def ratio(self) -> float:
        return self.served / self.bare[max(self.bare)]  # against the bare forward on every core


ROUNDS: list[Round] = []


def alternate(pid: int, url: str, body_dir: Path, count: int, batch: int,
              inputs: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> None:  # fmt: skip
    """--rounds rounds of POST /predict/batch at `batch` images per request, each followed at once by the bare
    forward at that batch (channels-last, as app/model.py runs it) on 1 thread and on every core, while the service
    idles: each round's ratio compares figures taken seconds apart."""
    model = bare_model("channels-last")
    for _ in range(args.rounds):
        served = point("service", pid, url, body_dir, count, args.batch_connections, args.seconds, images=batch,
                       series="batch")  # fmt: skip
        bare = {threads: images_per_s(model, *inputs, batch, args.seconds) for threads in thread_counts()}
        ROUNDS.append(Round(batch, served.rps * batch, bare))
        print(f"  round {len(ROUNDS)}: bare forward at batch {batch}: "
              + ", ".join(f"{rate:,.0f} images/s on {t} thread{'s' * (t > 1)}" for t, rate in bare.items()),
              file=sys.stderr, flush=True)  # fmt: skip


def measure(name: str, args: argparse.Namespace, load: Load) -> list[Point]:
    process, port = start(name, args, load.dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}/predict"
    try:
        warm_up(name, port, url, load, args)
        points = [point(name, process.pid, url, load.dir, len(load.bodies), c, args.seconds) for c in args.connections]
        if name in args.size_servers:
            for upload, (body_dir, count) in load.sizes.items():
                run_wrk(url, body_dir, count, args.size_connections, 1)  # warm-up at this size
                points.append(point(name, process.pid, url, body_dir, count, args.size_connections, args.seconds,
                                    upload, series="size"))  # fmt: skip
        if name == "service" and load.batches:
            points += batch_points(process.pid, port, load, args)
        if args.profile:
            PROFILES[name] = profile(process.pid, url, load.dir, len(load.bodies), args.target, args.profile)
            if name == "service" and len(load.sizes) > 1:  # and where a photo's time goes
                upload, (body_dir, count) = list(load.sizes.items())[-1]
                key = f"(a) service, {upload}, {args.size_connections} connections"
                PROFILES[key] = profile(process.pid, url, body_dir, count, args.size_connections, args.profile)
        return points
    except ServerFailed as exc:
        raise ServerFailed(f"{exc}\nits log ends:\n{log_tail(load.dir / f'{name}.log')}") from None
    finally:
        stop(process)


SWEEPS: dict[str, list[tuple[str, Point | str]]] = {}  # peer -> (its arguments, its point at the most connections
#                                                       or why it failed)


def sweep(name: str, args: argparse.Namespace, load: Load) -> None:
    """The peer under each of its PEERS settings (the first --sweep-settings) at args.target connections; its
    arguments become the best error-free of them by requests/s."""
    settings = argparse.Namespace(**{**vars(args), "connections": [args.target], "seconds": args.sweep,
                                     "profile": 0, "size_servers": [], "batches": []})  # fmt: skip
    tried = SWEEPS.setdefault(name, [])
    for peer_args in PEERS[name][: args.sweep_settings]:
        setattr(settings, f"{name}_args", peer_args)
        try:
            tried.append((peer_args, measure(name, settings, load)[0]))
        except (ServerFailed, AssertionError) as exc:
            tried.append((peer_args, str(exc)))
            print(f"  {name} `{peer_args}` failed: {exc}", file=sys.stderr)
    good = [(a, p) for a, p in tried if isinstance(p, Point) and p.errors == 0]
    if good:
        setattr(args, f"{name}_args", max(good, key=lambda t: t[1].rps)[0])


# --- the profile --------------------------------------------------------------------------------

# py-spy frames read "function (package/file.py:line)". A sample is charged to the stage of its innermost frame
# that names one; waiting threads (a worker blocked on its queue, the loop in epoll) are not counted.
STAGES = [
    ("preprocess (app.preprocess)", ("(app/preprocess.py",)),
    ("forward (TorchScript)", ("(torch/", "network (app/model.py", "network (benchmarks/answer.py",
                               "network (answer.py")),
    ("multipart form parsing", ("(python_multipart/", "(starlette/formparsers.py", "(multipart/")),
    ("multiprocessing (LitServe's queues, uvicorn's supervisor)", ("(multiprocessing/", "(litserve/transport/",
                                                                   "(pickle.py", "(copyreg.py")),
    ("validation and JSON (pydantic, json)", ("(pydantic", "(json/")),
    ("metrics (prometheus_client)", ("(prometheus_client/",)),
    ("batching and results (app/batching, predictor, model; LitServe loops)", ("(app/batching.py", "(app/predictor.py",
                                                                             "(app/model.py", "(litserve/loops/")),
    ("peer runtime (Ray actors and RPC, BentoML's dispatcher, clients and supervisor)",
     ("(ray/", "(_raylet", "(grpc/", "(_bentoml_impl/", "(_bentoml_sdk/", "(bentoml/", "(circus/", "(httpx/",
      "(httpcore/", "(aiohttp/", "(h11/")),
    ("thread hops (anyio, concurrent.futures)", ("(anyio/", "(concurrent/futures/", "(threading.py")),
    ("framework and handler (fastapi, starlette, app, litserve)", ("(fastapi/", "(starlette/", "(app/", "(litserve/",
                                                                   "(naive_server.py", "(litserve_server.py",
                                                                   "(floor_server.py", "(bentoml_server.py",
                                                                   "(rayserve_server.py")),
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


NATIVE = "native code under a bare thread (Ray's C++ core worker, its RPC and event threads)"


def stage_of(frames: list[str]) -> str | None:
    if any(frames[-1].startswith(idle) for idle in IDLE):
        return None
    if frames[-1].startswith("Thread.run (threading.py"):  # running a C target: no Python frame to charge it to
        return NATIVE
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


def thread_counts() -> Iterator[int]:
    """Runs torch on 1 thread, then on its default (every core), yielding each count; the default again after."""
    default = torch.get_num_threads()
    try:
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            yield threads
    finally:
        torch.set_num_threads(default)


def images_per_s(
    model: torch.jit.ScriptModule, images: torch.Tensor, numbers: torch.Tensor, batch: int, seconds: float
) -> float:
    """Forward passes over the preprocessed test images, `batch` at a time, for about `seconds`: the checkpoint's
    `answer`, the digit network and the non-digit detector, as the service calls it."""
    with torch.inference_mode():
        for _ in range(5):  # past the profiling executor's first runs at this shape
            model.answer(images[:batch], numbers[:batch])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            i = done % (len(images) - batch + 1)
            model.answer(images[i : i + batch], numbers[i : i + batch])
            done += batch
        return done / (time.perf_counter() - start)


def preprocess_costs(pngs: list[bytes], rounds: int = 5) -> dict[str, float]:
    """CPU ms per 28x28 PNG, the fewest of `rounds` interleaved passes: `preprocess` one at a time (bytes -> 28x28),
    and as the batch thread finishes thumbnails whose header the event loop checked (`Decoder.finish`, 64 at a time)."""
    costs: dict[str, list[float]] = {"one": [], "batch": []}
    for _ in range(rounds):
        start = time.process_time()
        for png in pngs:
            preprocess(png, MAX_PIXELS)
        costs["one"].append(time.process_time() - start)
        thumbnails = [open_checked(png, MAX_PIXELS) for png in pngs]
        start = time.process_time()
        for i in range(0, len(thumbnails), 64):
            Decoder.finish(thumbnails[i : i + 64])
        costs["batch"].append(time.process_time() - start)
    return {way: min(seconds) / len(pngs) * 1000 for way, seconds in costs.items()}


def bare_inputs(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 test images -> what the network sees of their PNGs (N, 1, 28, 28), and numbers (N,)."""
    pixels = np.stack([preprocess(png_bytes(image), MAX_PIXELS) for image in images])
    return torch.from_numpy(pixels).unsqueeze(1), torch.arange(len(images)) % 10


def bare_model(layout: str) -> torch.jit.ScriptModule:
    model = torch.jit.load(str(MODEL), map_location="cpu").eval()
    if layout == "channels-last":  # as app/model.py loads it on the CPU
        model.to(memory_format=torch.channels_last)
    return model


def floor(images: np.ndarray, seconds: float) -> tuple[dict[tuple[str, int, int], float], dict[str, float]]:
    """{(layout, torch threads, batch): images/s} for the bare model, and preprocessing's CPU ms per 28x28 PNG."""
    preprocess_ms = preprocess_costs([png_bytes(pixels) for pixels in images])
    tensors = bare_inputs(images)
    rates = {}
    for layout in ("as saved", "channels-last"):
        model = bare_model(layout)
        for threads in thread_counts():
            for batch in (1, 16, 64) if layout == "channels-last" and threads == 1 else (1, 64):
                rates[layout, threads, batch] = images_per_s(model, *tensors, batch, seconds)
    return rates, preprocess_ms


# --- the report ---------------------------------------------------------------------------------


def ratio(x: float, y: float | None) -> str:
    return f"{x / y:.2f}" if y else "-"


def report(points: list[Point], rates: dict[tuple[str, int, int], float], preprocess_ms: dict[str, float],
           args: argparse.Namespace, loads: tuple[float, float]) -> str:  # fmt: skip
    command = " ".join(["python benchmarks/serve.py", *args.argv])
    peers = ", ".join(f"({LABELS[s].split()[0][1:-1]}) `benchmarks/{SCRIPTS[s]} {getattr(args, f'{s}_args')}`"
                      for s in PEERS if s in args.only)  # fmt: skip
    lines = [
        f"Serving benchmark, {datetime.date.today()}, {os.cpu_count()} CPU cores shared with other jobs, `{command}`: "
        f"wrk -t1, {args.seconds} s per point after warm-up, 1,000 test-split PNGs rotated. Each server runs alone. "
        f"Load average (1 min) {loads[0]:.2f} at the start, {loads[1]:.2f} at the end.",
        "",
        f"(a) `make run` with {args.workers} worker{'s' * (args.workers != '1')}"
        + (f" and `{' '.join(args.service_env)}`" if args.service_env else "")
        + (f". (a0) `make run` as it was at `{args.before}`" if args.before else "")
        + (f". {peers}" if peers else "")
        + f". (e) `benchmarks/floor_server.py --workers {args.workers}`. Errors: non-2xx answers plus socket errors. "
        "cores: CPU time of the server's processes (its session and every descendant) per second; CPU ms/request: "
        "that time per answered request. load: the 1-minute load average after the point, which counts the "
        "benchmark's own runnable threads too.",
        "",
        "| server | connections | requests/s | p50 ms | p99 ms | errors | cores | CPU ms/request | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = [p for p in points if p.series == "connections"]
    for p in plain:
        lines.append(f"| {LABELS[p.server]} | {p.connections} | {p.rps:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
                     f"{p.errors} | {p.cpu_cores:.2f} | {p.cpu_ms:.2f} | {p.load:.2f} |")  # fmt: skip
    for (layout, threads, batch), rate in sorted(rates.items()):
        cpu_ms = f"{1000 / rate:.2f}" if threads == 1 else "-"
        lines.append(f"| (d) forward {layout}, batch {batch}, {threads} thread{'s' * (threads > 1)} | - | "
                     f"{rate:,.0f} images/s | - | - | - | - | {cpu_ms} | - |")  # fmt: skip
    for server, why in FAILURES.items():
        first = why.splitlines()[0] if why else "failed"
        lines.append(f"| {LABELS[server]} | - | could not run here: {first} (below) | - | - | - | - | - | - |")
    by = {(p.server, p.connections): p for p in plain}
    lines += ratios(by, rates, args) + targets(by, points, rates) + cost_curve(points, rates, args)
    if rates:
        one_ms, batch_ms = preprocess_ms["one"], preprocess_ms["batch"]
        lines += ["", f"Preprocessing a 28x28 test PNG (fewest CPU ms of 5 passes over the 1,000): "
                  f"`app.preprocess.preprocess` one at a time {one_ms:.2f} ms; as the batch thread does it, 64 "
                  f"header-checked thumbnails at a time (`Decoder.finish`) {batch_ms:.2f} ms."]  # fmt: skip
    lines += sweeps(args) + failures() + profiles(args)
    return "\n".join(lines) + "\n"


def ratios(by: dict[tuple[str, int], Point], rates: dict[tuple[str, int, int], float],
           args: argparse.Namespace) -> list[str]:  # fmt: skip
    others = [s for s in SERVERS[2:] if any(k[0] == s for k in by)]
    if not any(server == "service" for server, _ in by):
        return []
    tag = {s: LABELS[s].split()[0] for s in others}
    lines = ["", "| connections | " + " | ".join(f"(a)/{tag[s]} req/s" for s in others) + " | (a)/(d) | "
             + " | ".join(f"(a)/{tag[s]} p99" for s in others) + " |",
             "|---:|" + "---:|" * (2 * len(others) + 1)]  # fmt: skip
    for c in args.connections:
        a = by.get(("service", c))
        if a is None:
            continue
        floor_rate = rates.get(("channels-last", 1, 1 if c == 1 else 64))
        got = [by.get((s, c)) for s in others]
        cells = [ratio(a.rps, o.rps if o else None) for o in got] + [ratio(a.rps, floor_rate)]
        cells += [ratio(a.p99_ms, o.p99_ms if o else None) for o in got]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines + [
        "",
        "(a)/(d): the service's requests/s over the bare channels-last forward's images/s on one "
        "thread (batch 1 for 1 connection, else 64). Latency ratios under 1 mean (a) is faster.",
    ]


def targets(
    by: dict[tuple[str, int], Point], points: list[Point], rates: dict[tuple[str, int, int], float]
) -> list[str]:
    """The issue's targets at 64 and 1 connections and for the batch endpoint, each met or missed, from this run."""
    a64, a1 = by.get(("service", 64)), by.get(("service", 1))
    peers64 = [by[(s, 64)] for s in PEERS if (s, 64) in by]
    peers1 = [by[(s, 1)] for s in PEERS if (s, 1) in by]
    if a64 is None or not peers64:
        return []
    best = max(peers64, key=lambda p: p.rps)
    lines = ["", "Targets (this run):", "", "| target | measured | met |", "|---|---|---|"]

    def row(target: str, measured: str, met: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")

    row("64 connections: (a) >= 2x the requests/s of the best-tuned peer", f"(a) {a64.rps:,.0f} / "
        f"{LABELS[best.server]} {best.rps:,.0f} = {ratio(a64.rps, best.rps)}x", a64.rps >= 2 * best.rps)  # fmt: skip
    row(
        "64 connections: (a)'s p99 lower than that peer's, no errors",
        f"{a64.p99_ms:.1f} vs {best.p99_ms:.1f} ms, {a64.errors} errors",
        a64.p99_ms < best.p99_ms and a64.errors == 0,
    )
    if a1 is not None and peers1:
        fastest = min(peers1, key=lambda p: p.p50_ms)
        row(
            "1 connection: (a)'s p50 no higher than the fastest peer's",
            f"{a1.p50_ms:.2f} vs {LABELS[fastest.server]} {fastest.p50_ms:.2f} ms",
            a1.p50_ms <= fastest.p50_ms,
        )
        if (naive := by.get(("naive", 1))) is not None:
            row("1 connection: (a)'s p50 within 1.1x of the tutorial server's (b)",
                f"{a1.p50_ms:.2f} / {naive.p50_ms:.2f} ms = {ratio(a1.p50_ms, naive.p50_ms)}x",
                a1.p50_ms <= 1.1 * naive.p50_ms)  # fmt: skip
    row("64 connections: (a) CPU ms per request <= 1.0", f"{a64.cpu_ms:.2f}", a64.cpu_ms <= 1.0)
    batch64 = next((p for p in points if p.series == "batch" and p.images == 64), None)
    if rounds := [r for r in ROUNDS if r.batch == 64]:
        cores, median = max(rounds[0].bare), statistics.median(r.ratio() for r in rounds)
        each = ", ".join(f"{r.served:,.0f} / {r.bare[cores]:,.0f} = {r.ratio():.2f}x" for r in rounds)
        row(f"POST /predict/batch at 64 images: >= 50% of the bare forward's images/s on the same {cores} cores",
            f"median of {len(rounds)} alternating rounds {median:.2f}x ({each}; channels-last, {cores} threads)",
            median >= 0.5)  # fmt: skip
    elif batch64 is not None and (bare := best_bare_forward(rates, 64)) is not None:
        (layout, threads), rate = bare
        row(f"POST /predict/batch at 64 images: >= 50% of the bare forward's images/s on the same {threads} cores",
            f"{batch64.rps * 64:,.0f} / {rate:,.0f} ({layout}, batch 64, {threads} threads) = "
            f"{ratio(batch64.rps * 64, rate)}x", batch64.rps * 64 >= 0.5 * rate)  # fmt: skip
    return lines


README_NAMES = {
    "service": "(a) this service (`make run`)",
    "naive": "(b) tutorial FastAPI",
    "naive1": "(b1) tutorial, 1 torch thread",
    "litserve": "(c) LitServe, tuned",
    "bentoml": "(c2) BentoML, adaptive batching, tuned",
    "rayserve": "(c3) Ray Serve, `@serve.batch`, tuned",
    "framework": "(e) framework floor (FastAPI + uvicorn, constant answer)",
}


def readme_tables(points: list[Point], rates: dict[tuple[str, int, int], float]) -> str:
    """The README's three tables: every server at 64 connections, the targets, and (a)'s cost curve."""
    lines = ["| server, 64 connections | requests/s | p50 ms | p99 ms | errors | CPU ms / request |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in points:
        if p.series == "connections" and p.connections == 64 and p.server in README_NAMES:
            lines.append(f"| {README_NAMES[p.server]} | {p.rps:,.0f} | {p.p50_ms:,.0f} | {p.p99_ms:,.0f} | "
                         f"{p.errors} | {p.cpu_ms:.2f} |")  # fmt: skip
    for (layout, threads, batch), rate in sorted(rates.items()):
        if layout == "channels-last" and batch == 64:
            cpu_ms = f"{1000 / rate:.2f}" if threads == 1 else ""
            lines.append(f"| (d) bare forward, batch 64, {threads} thread{'s' * (threads > 1)} | {rate:,.0f} images/s "
                         f"| | | | {cpu_ms} |")  # fmt: skip
    by = {(p.server, p.connections): p for p in points if p.series == "connections"}
    if goals := targets(by, points, rates)[3:]:  # the table alone
        lines += ["", *goals]
    floor = {p.upload: p for p in points if p.series == "size" and p.server == "framework"}
    lines += ["", "| load | requests/s | images/s | p50 ms | p99 ms | errors | CPU ms / request | CPU ms / image |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in points:
        if p.server != "service":
            continue
        if p.series == "connections":
            what = f"{p.connections} connection{'s' * (p.connections > 1)}"
        elif p.series == "size":
            what = f"{p.upload}, {p.connections} connections" + (
                f" (e: {floor[p.upload].cpu_ms:.2f} ms)" if p.upload in floor else ""
            )
        else:
            what = f"`/predict/batch`, {p.images} image{'s' * (p.images > 1)} per request"
        lines.append(f"| {what} | {p.rps:,.0f} | {p.rps * p.images:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:,.1f} | "
                     f"{p.errors} | {p.cpu_ms:.2f} | {p.cpu_ms / p.images:.2f} |")  # fmt: skip
    batches = sorted({p.images for p in points if p.series == "batch"})
    bare = [rates[("channels-last", 1, b)] for b in batches if ("channels-last", 1, b) in rates]
    if bare:
        images_s, cpu_ms = " / ".join(f"{r:,.0f}" for r in bare), " / ".join(f"{1000 / r:.2f}" for r in bare)
        lines.append(f"| (d) bare forward, batch {' / '.join(map(str, batches))}, 1 thread | | {images_s} | | | | "
                     f"| {cpu_ms} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def best_bare_forward(rates: dict[tuple[str, int, int], float], batch: int) -> tuple[tuple[str, int], float] | None:
    """The fastest (layout, threads) of the bare forward at this batch on every core, and its images/s."""
    cores = max((threads for _, threads, _ in rates), default=0)
    found = {(layout, threads): r for (layout, threads, b), r in rates.items() if b == batch and threads == cores}
    return max(found.items(), key=lambda item: item[1]) if found else None


def cost_curve(points: list[Point], rates: dict[tuple[str, int, int], float], args: argparse.Namespace) -> list[str]:
    """(a)'s cost by connections, by upload size (and (e)'s beside it) and by images per request."""
    curve = [p for p in points if p.server == "service" and p.series == "connections"]
    sizes = [p for p in points if p.series == "size"]
    batches = [p for p in points if p.series == "batch"]
    if not curve:
        return []
    lines = ["", "Cost curve of (a) (benchmarks/results/cost_curve.png plots it), with (e) at each upload size:", "",
             "| load | requests/s | images/s | p50 ms | p99 ms | errors | cores | CPU ms/request | CPU ms/image "
             "| load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip

    def row(what: str, p: Point) -> None:
        lines.append(
            f"| {what} | {p.rps:,.0f} | {p.rps * p.images:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
            f"{p.errors} | {p.cpu_cores:.2f} | {p.cpu_ms:.2f} | {p.cpu_ms / p.images:.2f} | {p.load:.2f} |"
        )

    for p in curve:
        row(f"(a) {p.connections} connections, 28x28 PNG", p)
    for p in sizes:
        row(f"{LABELS[p.server].split()[0]} {p.connections} connections, {p.upload}", p)
    for p in batches:
        row(f"(a) POST /predict/batch, {p.images} image{'s' * (p.images > 1)} per request, "
            f"{p.connections} connections", p)  # fmt: skip
    for batch in sorted({p.images for p in batches}):
        if (rate := rates.get(("channels-last", 1, batch))) is not None:
            lines.append(f"| (d) bare forward, batch {batch}, 1 thread | - | {rate:,.0f} | - | - | - | 1.00 | - | "
                         f"{1000 / rate:.2f} | - |")  # fmt: skip
    if ROUNDS:
        lines += ["", f"(a)'s POST /predict/batch against the bare forward, {len(ROUNDS)} alternating rounds of "
                  f"{args.seconds} s each (--rounds): the machine's speed drifts within minutes, so the target takes "
                  "each round's ratio of figures measured seconds apart, and their median.", "",
                  "| round | images per request | (a) images/s | (d) 1 thread | (d) every core | (a) / (d) |",
                  "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for i, r in enumerate(ROUNDS, 1):
            lines.append(f"| {i} | {r.batch} | {r.served:,.0f} | {r.bare[min(r.bare)]:,.0f} | "
                         f"{r.bare[max(r.bare)]:,.0f} | {r.ratio():.2f} |")  # fmt: skip
    if BATCH_NOTE:
        lines += ["", BATCH_NOTE[0]]
    return lines


def sweeps(args: argparse.Namespace) -> list[str]:
    lines = []
    for name, tried in SWEEPS.items():
        lines += ["", f"{LABELS[name]} settings tried first, {args.sweep} s each at {args.target} "
                  f"connections; {LABELS[name].split()[0]} is the best error-free of them by requests/s "
                  f"(`{getattr(args, f'{name}_args')}`):", "",
                  f"| {SCRIPTS[name]} arguments | requests/s | p50 ms | p99 ms | errors | cores | CPU ms/request "
                  "| load |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for peer_args, p in tried:
            if isinstance(p, Point):
                lines.append(f"| `{peer_args}` | {p.rps:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.errors} | "
                             f"{p.cpu_cores:.2f} | {p.cpu_ms:.2f} | {p.load:.2f} |")  # fmt: skip
            else:
                lines.append(f"| `{peer_args}` | failed: {p.splitlines()[0]} | - | - | - | - | - | - |")
    return lines


def failures() -> list[str]:
    lines = []
    for server, why in FAILURES.items():
        lines += ["", f"{LABELS[server]} could not run here:", "", "```", why.strip(), "```"]
    return lines


def profiles(args: argparse.Namespace) -> list[str]:
    if not PROFILES:
        return []
    servers = [s for s in SERVERS if s in PROFILES] + [s for s in PROFILES if s not in SERVERS]
    lines = ["", f"Where the CPU goes at {args.target} connections: py-spy (100 Hz, every process of "
             f"the server) during one more {args.profile} s run: CPU ms per request = the run's CPU ms per "
             "request x the stage's share of samples of threads not idle (running, or waiting for the GIL, which "
             "overstates GIL-bound stages in a crowded single process). Processes that run no Python (Ray's raylet and "
             "GCS) are in the run's CPU but in no sample, so Ray Serve's stages are spread over more than they "
             "used.", "",
             "| stage | " + " | ".join(LABELS.get(s, s) for s in servers) + " |",
             "|---|" + "---:|" * len(servers)]  # fmt: skip
    shares = {server: {**PROFILES[server][0], "total": 1.0} for server in servers}
    for stage in sorted(set().union(*shares.values()), key=lambda st: (-shares[servers[0]].get(st, 0), st)):
        cells = [f"{shares[sv].get(stage, 0) * PROFILES[sv][1]:.2f} ({100 * shares[sv].get(stage, 0):.0f}%)"
                 for sv in servers]  # fmt: skip
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


# --- the plot -----------------------------------------------------------------------------------


def plot(points: list[Point], rates: dict[tuple[str, int, int], float], args: argparse.Namespace, out: Path) -> None:
    """cost_curve.png: requests/s, p50, p99 and CPU ms/request by connections for every server; (a) and (e) by
    upload size; (a)'s images/s by images per request against the bare forward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    plain = [p for p in points if p.series == "connections"]
    panels = [("requests/s", lambda p: p.rps), ("p50 ms", lambda p: p.p50_ms), ("p99 ms", lambda p: p.p99_ms),
              ("CPU ms / request", lambda p: p.cpu_ms)]  # fmt: skip
    for ax, (title, value) in zip(axes.flat, panels, strict=False):
        for server in SERVERS:
            mine = sorted((p for p in plain if p.server == server), key=lambda p: p.connections)
            if mine:
                ax.plot([p.connections for p in mine], [value(p) for p in mine], "o-", label=LABELS[server],
                        linewidth=3 if server == "service" else 1.2)  # fmt: skip
        ax.set(xscale="log", title=f"{title} by connections (28x28 PNG)", xlabel="connections")
        ax.set_xticks(args.connections, [str(c) for c in args.connections])
        if title.startswith("p"):
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    ax = axes[1, 1]
    for server, shift in (("service", -0.2), ("framework", 0.2)):
        mine = [p for p in points if p.server == server and p.series == "size"]
        xs = [args.sizes.index(p.upload) + shift for p in mine]
        ax.bar(xs, [p.cpu_ms for p in mine], width=0.4, label=LABELS[server])
    ax.set_xticks(range(len(args.sizes)), args.sizes)
    ax.set(yscale="log", title=f"CPU ms / request by upload, {args.size_connections} connections")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    mine = sorted((p for p in points if p.series == "batch"), key=lambda p: p.images)
    if mine:
        ax.bar([str(p.images) for p in mine], [p.rps * p.images for p in mine], label="(a) POST /predict/batch")
        ax.plot([str(p.images) for p in mine], [rates.get(("channels-last", 1, p.images), float("nan")) for p in mine],
                "k^", markersize=10, label="(d) bare forward, 1 thread")  # fmt: skip
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, textwrap.fill(BATCH_NOTE[0] if BATCH_NOTE else "not measured", 45), ha="center", va="center",
                fontsize=9, transform=ax.transAxes)  # fmt: skip
    ax.set(title=f"images/s by images per request, {args.batch_connections} connections",
           xlabel="images per request")  # fmt: skip
    fig.suptitle(f"DigitSum serving cost, {datetime.date.today()}, {os.cpu_count()} shared CPU cores "
                 "(benchmarks/results/serve.md)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="measurement per point")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before the first point of each server")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*SERVERS, "floor"],
        default=[*SERVERS, "floor"],
        help="(a0) 'before' runs only with --before; 'floor' is (d), the bare forward",
    )
    parser.add_argument("--workers", default=makefile_default("WORKERS"), help="WORKERS for `make run` (and (e))")
    parser.add_argument("--service-env", nargs="*", default=[], help="env to try on (a), e.g. DIGITSUM_TORCH_THREADS=0")
    parser.add_argument("--litserve-args", default=LITSERVE_BEST, help="for benchmarks/litserve_server.py")
    parser.add_argument("--bentoml-args", default=BENTOML_BEST, help="for benchmarks/bentoml_server.py")
    parser.add_argument("--rayserve-args", default=RAYSERVE_BEST, help="for benchmarks/rayserve_server.py")
    parser.add_argument("--before", metavar="GIT_REF", help="also measure `make run` as it was at this commit, as (a0)")
    parser.add_argument(
        "--sweep",
        type=int,
        default=0,
        metavar="SECONDS",
        help="first try each peer's settings (PEERS) this long at 64 connections (or the most); each uses its best",
    )
    parser.add_argument("--sweep-settings", type=int, default=None, metavar="N", help="only the first N of each")
    parser.add_argument("--sizes", nargs="*", default=list(UPLOADS), choices=list(UPLOADS), help="upload sizes")
    parser.add_argument("--size-servers", nargs="*", default=["service", "framework"], choices=SERVERS)
    parser.add_argument("--size-connections", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64], help="images per POST /predict/batch")
    parser.add_argument("--batch-connections", type=int, default=4, help="64 images x 4: batches fill")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the largest batch and (d)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="after the points, py-spy each server this long at 64 connections (or the most)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.md")
    parser.add_argument("--from-json", type=Path, help="render the report and plot of an earlier run's .json again")
    parser.add_argument("--readme", action="store_true", help="with --from-json: print the README's tables only")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "cost_curve.png")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.from_json:  # the run's own settings, written to this command's --out and --plot
        raw = json.loads(args.from_json.read_text())
        args = argparse.Namespace(**{**vars(parser.parse_args(raw["argv"])), **raw["args"], "from_json": args.from_json,
                                     "out": args.out, "plot": args.plot, "argv": raw["argv"],
                                     "readme": args.readme})  # fmt: skip
    args.target = 64 if 64 in args.connections else max(args.connections)  # the targets', sweeps' and profile's
    assert all(re.fullmatch(r"\w+=.*", kv) for kv in args.service_env), "--service-env takes NAME=value"
    if args.from_json:
        points, rates, preprocess_ms, loads = from_json(args.from_json)
    else:
        points, rates, preprocess_ms, loads = run(args)
    if args.readme:
        print(readme_tables(points, rates), end="")
        return
    text = report(points, rates, preprocess_ms, args, (loads[0], loads[1]))
    print(text)
    args.out.write_text(text)
    if args.plot and points:
        plot(points, rates, args, args.plot)


def run(
    args: argparse.Namespace,
) -> tuple[list[Point], dict[tuple[str, int, int], float], dict[str, float], list[float]]:
    """Every server and the bare forward; the figures are also written to args.out's .json as soon as they exist."""
    split = load_sample().test
    images, labels = split.images.numpy(), split.labels.numpy()  # (1000, 28, 28) uint8, (1000,)
    loads = [os.getloadavg()[0]]
    print(f"load average at start: {loads[0]:.2f}", file=sys.stderr)
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="digitsum-bench-") as tmp:
        load = make_load(images, labels, Path(tmp), args)
        if args.sweep:
            for name in PEERS:
                if name in args.only:
                    sweep(name, args, load)
                    save(args, [], {}, {}, [*loads, os.getloadavg()[0]])
        if args.before:
            args.before_dir = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(args.before_dir), args.before], cwd=ROOT,
                           check=True, capture_output=True)  # fmt: skip
        try:
            for name in SERVERS:
                if name in args.only and (name != "before" or args.before):
                    try:
                        points += measure(name, args, load)
                    except (ServerFailed, AssertionError, OSError) as exc:  # reported, and the run goes on
                        FAILURES[name] = str(exc)
                        print(f"  {name} failed: {exc}", file=sys.stderr)
                    save(args, points, {}, {}, [*loads, os.getloadavg()[0]])  # so far, in case the run is cut short
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(args.before_dir)], cwd=ROOT, check=True)
    rates, preprocess_ms = floor(images, min(args.seconds, 3)) if "floor" in args.only else ({}, {})
    loads.append(os.getloadavg()[0])
    save(args, points, rates, preprocess_ms, loads)
    return points, rates, preprocess_ms, loads


PEER_ARGS = ("litserve_args", "bentoml_args", "rayserve_args")


def save(args: argparse.Namespace, points: list[Point], rates: dict[tuple[str, int, int], float],
         preprocess_ms: dict[str, float], loads: list[float]) -> None:  # fmt: skip
    """Every figure so far to args.out's .json (--from-json renders it)."""
    args.out.parent.mkdir(exist_ok=True)
    sweeps = {k: [(a, dataclasses.asdict(p) if isinstance(p, Point) else p) for a, p in v] for k, v in SWEEPS.items()}
    raw = {"argv": args.argv, "points": [dataclasses.asdict(p) for p in points], "sweeps": sweeps,
           "rates": [[*k, v] for k, v in rates.items()], "preprocess_ms": preprocess_ms, "loads": loads,
           "failures": FAILURES, "profiles": PROFILES, "batch_note": BATCH_NOTE,
           "rounds": [dataclasses.asdict(r) for r in ROUNDS],
           "args": {k: getattr(args, k) for k in PEER_ARGS}}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))


def from_json(path: Path) -> tuple[list[Point], dict[tuple[str, int, int], float], dict[str, float], list[float]]:
    """The figures of an earlier run (its .json), to render the report and the plot again."""
    raw = json.loads(path.read_text())
    for name, tried in raw["sweeps"].items():
        SWEEPS[name] = [(a, Point(**p) if isinstance(p, dict) else p) for a, p in tried]
    FAILURES.update(raw["failures"])
    BATCH_NOTE.extend(raw["batch_note"])
    ROUNDS[:] = [  # runs before --rounds have none
        Round(r["batch"], r["served"], {int(threads): rate for threads, rate in r["bare"].items()})
        for r in raw.get("rounds", [])
    ]
    PROFILES.update({k: (v[0], v[1]) for k, v in raw["profiles"].items()})
    rates = {(layout, threads, batch): rate for layout, threads, batch, rate in raw["rates"]}
    preprocess_ms = raw["preprocess_ms"]  # one figure in runs before the batch thread's was measured
    preprocess_ms = preprocess_ms if isinstance(preprocess_ms, dict) else {"one": preprocess_ms, "batch": math.nan}
    return [Point(**p) for p in raw["points"]], rates, preprocess_ms, raw["loads"]


if __name__ == "__main__":
    main()
