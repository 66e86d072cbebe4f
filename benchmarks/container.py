"""The image: its size and what fills it, its build time, and the container's speed against `make run`'s.

    make bench-container        # builds the image first (tests/support/container.sh), then this; needs root

Writes benchmarks/results/container.md. Steps:
1. size: `docker image inspect`, the layers (`docker history`), the largest installed packages (`du` in the image);
2. build time: `docker build --no-cache` of the Dockerfile (downloads every wheel again, ~3 GB), unless --no-build-time;
3. speed: wrk (benchmarks/bodies.lua, 64 connections, the 1,000 test-split bodies) against the container on the
   CPU with `--cpus=2` (its launcher picks the workers: --workers auto) and against `make run` on this machine,
   alternated over --rounds (the machine is shared: other load moves between measurements), the container at its
   bridge address (its own serving); then once at its published port on 127.0.0.1 (through docker-proxy).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serve import (  # noqa: E402
    digit_bodies,
    errors_of,
    free_port,
    make_run_command,
    makefile_default,
    run_wrk,
    stop,
    write_bodies,
)
from training.data import load_sample  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "container.md"
CONNECTIONS = 64


def sh(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr[-2000:]}"
    return result.stdout.strip()


# --- size and build ------------------------------------------------------------------------------


def image_size(image: str) -> tuple[float, list[tuple[float, str]], list[tuple[int, str]]]:
    """GB in all, the layers over 1 MB (MB, instruction), the 12 largest installed packages (MB, path)."""
    total = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image)) / 1e9
    layers = []
    for line in sh("docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image
                   ).splitlines():  # fmt: skip
        size, _, created_by = line.partition("\t")
        command = " ".join(created_by.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ").split())
        if int(size) > 1e6:
            layers.append((int(size) / 1e6, command[:110] or "(the base image)"))
    script = ('cd "$(python -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])")" '
              "&& du -sm -- */ | sort -rn | head -12")  # fmt: skip
    listing = sh("docker", "run", "--rm", "--entrypoint", "sh", image, "-c", script)
    packages = [(int(mb), name.rstrip("/")) for mb, name in (line.split("\t") for line in listing.splitlines())]
    return total, layers, packages


def build_seconds(build_args: str) -> float:
    started = time.perf_counter()
    sh("env", "DOCKER_BUILDKIT=0", "docker", "build", "--no-cache", "-q", *shlex.split(build_args),
       "-t", "digitsum:bench-build", str(ROOT))  # fmt: skip
    seconds = time.perf_counter() - started
    sh("docker", "rmi", "digitsum:bench-build")
    return seconds


# --- speed ---------------------------------------------------------------------------------------


def ready(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_ready(port: int, host: str = "127.0.0.1", timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready(host, port):
        assert time.monotonic() < deadline, f"not ready on {host}:{port}"
        time.sleep(0.3)


def measure(url: str, body_dir: Path, seconds: int) -> dict[str, float]:
    run_wrk(url, body_dir, None, CONNECTIONS, 3)  # warm-up: every worker has answered
    result = run_wrk(url, body_dir, None, CONNECTIONS, seconds)
    wall = int(result["duration_us"]) / 1e6  # type: ignore[call-overload]
    return {"rps": int(result["requests"]) / wall, "p50_ms": int(result["p50_us"]) / 1e3,  # type: ignore[call-overload]
            "p99_ms": int(result["p99_us"]) / 1e3, "errors": errors_of(result)}  # type: ignore[call-overload]  # fmt: skip


def start_container(image: str) -> tuple[str, str, int]:
    """The image on the CPU with --cpus=2 and the compose file's hardening -> (id, bridge address, published port)."""
    port = free_port()
    cid = sh("docker", "run", "-d", "--cpus=2", "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges:true", "-p", f"127.0.0.1:{port}:8000", "-e", "DIGITSUM_DEVICE=cpu",
             image)  # fmt: skip
    address = sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid)
    wait_ready(port)
    return cid, address, port


def workers_of(cid: str) -> str:
    logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
    line = next((x for x in (logs.stdout + logs.stderr).splitlines() if "--workers auto: " in x), "")
    return line.split("--workers auto: ", 1)[-1].split(" (", 1)[0] or "?"


def start_make_run(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`make run`'s command line, read from the Makefile, on 127.0.0.1."""
    port = free_port()
    command, env = make_run_command(port, makefile_default("WORKERS"))
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env, "DIGITSUM_DEVICE": "cpu"},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    wait_ready(port)
    return process, port


def speed(image: str, body_dir: Path, seconds: int, rounds: int) -> tuple[list, list, dict, str]:
    """make run and the container at its bridge address, alternated `rounds` times (the machine's other load moves
    between measurements); then, make run stopped, the container once through its published port."""
    hosts, bridges = [], []
    cid, address, port = start_container(image)
    try:
        process, host_port = start_make_run(body_dir / "make-run.log")
        try:
            for _ in range(rounds):
                hosts.append(measure(f"http://127.0.0.1:{host_port}/predict", body_dir, seconds))
                bridges.append(measure(f"http://{address}:8000/predict", body_dir, seconds))
        finally:
            stop(process)
        published = measure(f"http://127.0.0.1:{port}/predict", body_dir, seconds)
        return hosts, bridges, published, workers_of(cid)
    finally:
        sh("docker", "rm", "-f", cid)


# --- report -------------------------------------------------------------------------------------


def row(name: str, point: dict[str, float], base: float) -> str:
    return (f"| {name} | {point['rps']:,.0f} | {point['rps'] / base:.0%} | {point['p50_ms']:.1f} | "
            f"{point['p99_ms']:.1f} | {point['errors']:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="make run / container alternations")
    parser.add_argument("--no-build-time", action="store_true", help="skip the --no-cache build")
    args = parser.parse_args()
    image = os.environ.get("DIGITSUM_IMAGE", "digitsum:latest")
    split = load_sample().test
    body_dir = Path(tempfile.mkdtemp(prefix="digitsum-container-"))
    write_bodies(digit_bodies(split.images.numpy()), body_dir)
    load_before = os.getloadavg()[0]
    total, layers, packages = image_size(image)
    built = None if args.no_build_time else build_seconds(os.environ.get("DIGITSUM_BUILD_ARGS", ""))
    hosts, bridges, published, workers = speed(image, body_dir, args.seconds, args.rounds)
    host = {key: float(np.median([point[key] for point in hosts])) for key in hosts[0]}
    bridge_ratio = float(np.median([point["rps"] for point in bridges])) / host["rps"]
    lines = [
        "# The image and the container",
        "",
        f"`make bench-container`, {datetime.date.today()}, on this machine ({os.cpu_count()} CPUs, shared with other"
        f" agents' work: load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). One run.",
        "",
        f"## Size: {total:.2f} GB",
        "",
        "| layer | MB |",
        "|---|---|",
        *[f"| `{created_by}` | {mb:,.0f} |" for mb, created_by in layers],
        "",
        "Largest installed packages (MB): " + ", ".join(f"{name} {mb:,}" for mb, name in packages) + ".",
        "",
        "## Build",
        "",
        (
            "not measured (--no-build-time)"
            if built is None
            else f"`docker build --no-cache`: {built:.0f} s (wheels downloaded from PyPI through this network)."
        ),
        "",
        f"## Speed: wrk, {CONNECTIONS} connections, {args.seconds} s after a 3 s warm-up, on the CPU",
        "",
        f'`make run` and the container at its bridge address alternate, {args.rounds} rounds; "of make run" is'
        f" against the median of make run's rounds ({host['rps']:,.0f} req/s). **The container's median: "
        f"{bridge_ratio:.0%} of make run's requests/s.** Last, make run stopped, the container through its"
        " published port on 127.0.0.1 (docker-proxy copies every byte, on the same cores).",
        "",
        "| server | req/s | of make run | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
        *[
            row(f"`make run` (--workers {makefile_default('WORKERS')}), round {k + 1}", point, host["rps"])
            for k, point in enumerate(hosts)
        ],
        *[
            row(f"container `--cpus=2` ({workers} workers), bridge address, round {k + 1}", point, host["rps"])
            for k, point in enumerate(bridges)
        ],
        row("container `--cpus=2`, at its published port (docker-proxy)", published, host["rps"]),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
