"""The service on a CUDA GPU, in one run of under 5 minutes: answers identical to the CPU's, and how fast.

    python benchmarks/gpu.py               # on a CUDA host; writes benchmarks/results/gpu.md
    python benchmarks/gpu.py --dry-run     # the same path on the CPU, small (tests/system/test_gpu_dry_run.py)

1. Serve as the container does (`python -m app.serve`, DIGITSUM_DEVICE=cuda, the shipped model) and check that
   GET /model says cuda.
2. Send the 1,000 test-split PNGs and compare every answer with the CPU's (the same model and preprocessing run
   in this process on the CPU): digits and sums must be identical; reports the largest probability difference.
3. Time the bare forward at batch 1, 64 and 512 in each variant: fp32 (what the service runs), channels-last,
   bf16 autocast, CUDA graphs. A variant is worth adopting only if it is faster *and* its digits and sums are
   identical to fp32's on the same 1,000 images; the report says which, and the service's defaults should follow.
4. The service under wrk (benchmarks/bodies.lua, the same bodies) at 1, 64 and 256 connections, with one worker
   process owning the GPU and with `--workers auto` (one per CPU of the quota, as the image runs) sharing it:
   which of the two scales the CPU side (HTTP, decoding, preprocessing) is the measurement the README's Deployment
   section waits for.

With --dry-run everything runs on the CPU (CUDA graphs are reported as not applicable), on 100 images, with
1-second wrk points, and the report goes to --out (default: a temporary file), never over results/gpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.model import DeviceChoice, Model  # noqa: E402
from app.preprocess import preprocess  # noqa: E402
from benchmarks.serve import (  # noqa: E402
    MAX_PIXELS,
    errors_of,
    free_port,
    get_status,
    multipart_body,
    png_bytes,
    post,
    run_wrk,
    stop,
    write_bodies,
)
from training.data import load_sample  # noqa: E402

MODEL = ROOT / "models" / "digitsum.pt"
RESULTS = ROOT / "benchmarks" / "results" / "gpu.md"
BATCHES = (1, 64, 512)
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU, small and short")
    parser.add_argument("--out", type=Path, help="report file (default: results/gpu.md; a temp file with --dry-run)")
    parser.add_argument("--seconds", type=int, default=8, help="wrk seconds per point")
    args = parser.parse_args()
    args.device = "cpu" if args.dry_run else "cuda"
    args.images = 100 if args.dry_run else 1000
    args.seconds = 1 if args.dry_run else args.seconds
    args.connections = (1, 64, 256)
    args.out = args.out or (Path(tempfile.mkdtemp()) / "gpu.md" if args.dry_run else RESULTS)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible here; --dry-run runs the same path on the CPU")
    return args


# --- 1 + 2: the service's answers against the CPU's ---------------------------------------------


def cpu_answers(pngs: list[bytes], numbers: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: preprocessing and the model in this process, on the CPU -> digits, sums, (N, 10) P(digit)."""
    model = Model(MODEL, DeviceChoice(torch.device("cpu"), "reference"))
    pixels = np.stack([preprocess(png, MAX_PIXELS) for png in pngs])
    predictions = model.predict(pixels, numbers)
    return (np.array([p.digit for p in predictions]), np.array([p.sum for p in predictions]),
            np.array([p.digit_probabilities for p in predictions]))  # fmt: skip


def start_service(device: str, workers: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m app.serve` as the image's CMD runs it, until /readyz answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", str(port), "--workers", workers,
               "--log-config", "app/log_config.json"]  # fmt: skip
    env = {**os.environ, "DIGITSUM_DEVICE": device, "DIGITSUM_MODEL_PATH": str(MODEL),
           "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="digitsum-")}  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while get_status(port, "/readyz") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise SystemExit(f"the service did not become ready on {device}; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process, port


def model_device(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=10) as response:
        return str(json.loads(response.read())["device"])


def compare(port: int, bodies: list[bytes], reference: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    digits, sums, probabilities = reference
    got: list[tuple[int, Any]] = [post(port, body) for body in bodies]
    assert all(status == 200 for status, _ in got), [answer for status, answer in got if status != 200][:3]
    served_digits = np.array([answer["digit"] for _, answer in got])
    served_sums = np.array([answer["sum"] for _, answer in got])
    served_p = np.array([answer["digit_probabilities"] for _, answer in got])
    return {"images": len(bodies), "digits_differ": int((served_digits != digits).sum()),
            "sums_differ": int((served_sums != sums).sum()),
            "max_p_diff": float(np.abs(served_p - probabilities).max())}  # fmt: skip


# --- 3: the bare forward ------------------------------------------------------------------------


def variants(device: torch.device) -> dict[str, Forward | None]:
    """Each variant's forward (None: not applicable on this device). fp32 as loaded is what the service runs on
    CUDA (on the CPU it runs channels-last: app/model.py)."""
    module = torch.jit.load(str(MODEL), map_location=device).eval()
    channels_last = torch.jit.load(str(MODEL), map_location=device).eval().to(memory_format=torch.channels_last)

    def fp32(x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return module(x, n)  # type: ignore[no-any-return]

    def nhwc(x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return channels_last(x.contiguous(memory_format=torch.channels_last), n)  # type: ignore[no-any-return]

    def bf16(x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            digit, total = module(x, n)
        return digit.float(), total.float()

    graphs = cuda_graphs(module) if device.type == "cuda" else None
    return {"fp32": fp32, "channels-last": nhwc, "bf16 autocast": bf16, "CUDA graphs": graphs}


def cuda_graphs(module: torch.jit.ScriptModule) -> Forward:
    """The forward captured once per batch size, replayed with the inputs copied into its static tensors."""
    captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] not in captured:
            static_x, static_n = x.clone(), n.clone()
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up on a side stream before capture, as torch's docs require
                    module(static_x, static_n)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = module(static_x, static_n)
            captured[x.shape[0]] = (graph, static_x, static_n, outputs)
        graph, static_x, static_n, outputs = captured[x.shape[0]]
        static_x.copy_(x)
        static_n.copy_(n)
        graph.replay()
        return outputs[0].clone(), outputs[1].clone()

    return forward


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def time_forward(forward: Forward, x: torch.Tensor, n: torch.Tensor, device: torch.device, budget_s: float) -> float:
    """Median microseconds per call over about budget_s, after a warm-up."""
    for _ in range(3):
        forward(x, n)
    sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        forward(x, n)
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


@torch.inference_mode()
def answers_of(forward: Forward, pixels: torch.Tensor, numbers: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    digits, sums = [], []
    for start in range(0, len(pixels), 512):  # the graph variant needs a fixed size per capture: 512 and the rest
        d, s = forward(pixels[start : start + 512], numbers[start : start + 512])
        digits.append(d.argmax(1).cpu().numpy())
        sums.append(s.argmax(1).cpu().numpy())
    return np.concatenate(digits), np.concatenate(sums)


def forward_table(pixels: np.ndarray, numbers: list[int], device: torch.device, budget_s: float) -> list[dict]:
    x_all = torch.from_numpy(pixels[:, None]).to(device)  # (N, 1, 28, 28)
    n_all = torch.tensor(numbers, dtype=torch.int64, device=device)
    forwards = variants(device)
    reference = answers_of(forwards["fp32"], x_all, n_all)  # type: ignore[arg-type]
    rows = []
    for name, forward in forwards.items():
        if forward is None:
            rows.append({"variant": name, "applicable": False})
            continue
        digits, sums = answers_of(forward, x_all, n_all)
        row: dict = {"variant": name, "applicable": True,
                     "identical": bool((digits == reference[0]).all() and (sums == reference[1]).all())}  # fmt: skip
        for batch in BATCHES:
            index = torch.arange(batch, device=device) % len(x_all)
            row[batch] = time_forward(forward, x_all[index], n_all[index], device, budget_s)
        rows.append(row)
    return rows


# --- 4: the service under load ------------------------------------------------------------------


def load_points(device: str, workers: str, body_dir: Path, count: int, args: argparse.Namespace) -> list[dict]:
    process, port = start_service(device, workers, body_dir / f"service-{workers}.log")
    url = f"http://127.0.0.1:{port}/predict"
    try:
        run_wrk(url, body_dir, count, max(args.connections), args.seconds)  # warm-up: every worker answers
        points = []
        for connections in args.connections:
            result = run_wrk(url, body_dir, count, connections, args.seconds)
            seconds = int(result["duration_us"]) / 1e6  # type: ignore[call-overload]
            points.append({"workers": workers, "connections": connections,
                           "rps": int(result["requests"]) / seconds,  # type: ignore[call-overload]
                           "p50_ms": int(result["p50_us"]) / 1e3, "p99_ms": int(result["p99_us"]) / 1e3,  # type: ignore[call-overload]
                           "errors": errors_of(result)})  # fmt: skip
        return points
    finally:
        stop(process)


# --- the report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, device_name: str, checks: dict[str, float], forwards: list[dict],
           points: list[dict], seconds: float) -> str:  # fmt: skip
    fp32 = next(row for row in forwards if row["variant"] == "fp32")
    lines = [
        "# DigitSum on " + ("the CPU (--dry-run: the path only, not a GPU result)" if args.dry_run else device_name),
        "",
        f"`python benchmarks/gpu.py{' --dry-run' if args.dry_run else ''}`, {datetime.date.today()}, "
        f"torch {torch.__version__}, {seconds:.0f} s in all.",
        "",
        f"## Answers: the service on {args.device} vs the CPU reference, {checks['images']} test-split PNGs",
        "",
        f"/model said device `{checks['device']}`. Digits that differ: {checks['digits_differ']}; sums that differ: "
        f"{checks['sums_differ']}; largest difference in a digit probability: {checks['max_p_diff']:.2e}.",
        "",
        "## The bare forward, median µs per call",
        "",
        "| variant | identical digits and sums to fp32 | " + " | ".join(f"batch {b}" for b in BATCHES) + " | verdict |",
        "|---|---|" + "---|" * len(BATCHES) + "---|",
    ]
    for row in forwards:
        if not row["applicable"]:
            lines.append(f"| {row['variant']} | n/a on {args.device} |" + " |" * len(BATCHES) + " |")
            continue
        faster = all(row[b] < fp32[b] for b in BATCHES)
        verdict = "what the service runs" if row is fp32 else (
            "adopt: faster and identical" if faster and row["identical"] else "keep fp32")  # fmt: skip
        cells = " | ".join(f"{row[b]:,.0f}" for b in BATCHES)
        lines.append(f"| {row['variant']} | {'yes' if row['identical'] else 'NO'} | {cells} | {verdict} |")
    lines += ["", f"## The service under wrk ({args.seconds} s per point, the same bodies)", "",
              "| workers | connections | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {p['workers']} | {p['connections']} | {p['rps']:,.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | "
              f"{p['errors']} |" for p in points]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    test = load_sample().test
    images, labels = test.images[: args.images].numpy(), test.labels[: args.images].numpy()  # (N, 28, 28) uint8
    numbers = [i % 10 for i in range(len(images))]
    pngs = [png_bytes(pixels) for pixels in images]
    reference = cpu_answers(pngs, numbers)
    body_dir = Path(tempfile.mkdtemp(prefix="digitsum-gpu-"))
    bodies = [multipart_body(png, number) for png, number in zip(pngs, numbers, strict=True)]
    write_bodies(bodies, body_dir)
    process, port = start_service(args.device, "1", body_dir / "service-check.log")
    try:
        checks: dict = {"device": model_device(port), **compare(port, bodies, reference)}
    finally:
        stop(process)
    assert checks["device"] == args.device, f"/model says {checks['device']}, not {args.device}"
    assert (reference[0] == labels).mean() > 0.9, "the CPU reference itself is wrong: wrong model or images?"
    device = torch.device(args.device)
    pixels = np.stack([preprocess(png, MAX_PIXELS) for png in pngs])
    forwards = forward_table(pixels, numbers, device, budget_s=0.2 if args.dry_run else 2.0)
    points = [p for workers in ("1", "auto") for p in load_points(
        args.device, workers, body_dir, len(bodies), args)]  # fmt: skip
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    text = report(args, device_name, checks, forwards, points, time.perf_counter() - started)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    if checks["digits_differ"] or checks["sums_differ"]:
        raise SystemExit(f"the service on {args.device} answers differently from the CPU: see {args.out}")


if __name__ == "__main__":
    main()
