"""What app/http_limits.py's protocol costs on the fast path: GET /healthz (all HTTP, no model) under wrk, served
by `make run`'s shape with and without it.

    python benchmarks/http_limits_cost.py --before 63cebc1     # a commit without app/http_limits.py

Each server (this checkout, and --before exported to a temporary folder) runs in turn, ROUNDS times alternating,
as `python -m app.serve --workers 2`; wrk drives GET /healthz at 64 connections for --seconds. The report gives
requests/s and the server's CPU microseconds per request (all its processes, from /proc), the figure that the
shared machine's other load disturbs least. Writes benchmarks/results/http_limits_cost.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.hostile import cpu_seconds, start_server, stop_server  # noqa: E402

ROUNDS = 3


def measure(root: Path, seconds: int, connections: int) -> tuple[float, float]:
    """(requests/s, server CPU us per request) of GET /healthz."""
    log = Path(tempfile.mkdtemp(prefix="digitsum-cost-")) / "serve.log"
    server = start_server(root, log, fd_limit=65536)
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", url], capture_output=True, check=True)  # warm-up
        cpu_before = cpu_seconds(server.pids())
        started = time.monotonic()
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        cpu = cpu_seconds(server.pids()) - cpu_before
        elapsed = time.monotonic() - started
    finally:
        stop_server(server)
    match = re.search(r"(\d+) requests in", out)
    assert match and "Non-2xx" not in out, out
    requests = int(match.group(1))
    return requests / elapsed, cpu * 1e6 / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="GIT_REF", help="a commit without the protocol")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "http_limits_cost.md")
    args = parser.parse_args()
    before = Path(tempfile.mkdtemp(prefix="digitsum-before-"))
    archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    load = os.getloadavg()[0]
    rows = []
    for round_ in range(ROUNDS):
        for name, root in (("without (" + args.before + ")", before), ("with app/http_limits.py", ROOT)):
            rps, cpu_us = measure(root, args.seconds, args.connections)
            rows.append(f"| {round_ + 1} | {name} | {rps:,.0f} | {cpu_us:.0f} |")
            print(rows[-1], flush=True)
    report = "\n".join([
        "# The HTTP limits' cost on the fast path (benchmarks/http_limits_cost.py)", "",
        f"`python benchmarks/http_limits_cost.py --before {args.before}`: GET /healthz, wrk -t1 -c{args.connections} "
        f"-d{args.seconds}s, `python -m app.serve --workers 2`, rounds alternating. Load average at start: {load:.2f} "
        "(a shared machine: CPU per request is the steadier figure).", "",
        "| round | protocol | requests/s | server CPU us/request |", "|---:|---|---:|---:|", *rows,
    ])  # fmt: skip
    args.out.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
