"""CPU per /predict of this checkout against another commit's, both measured at the same moment on the same cores.

    python benchmarks/request_cpu.py --before 526d9dc     # -> benchmarks/results/request_cpu.md

On a shared machine a server's CPU per request drifts by 15% and more within minutes, which buries a change of
a few percent in HTTP-level runs taken one after the other (benchmarks/serve.py). Here both versions run at once,
each in its own process: the app of this checkout and the app of `--before` (a git worktree), each built by its
own `create_app()` and driven in process through ASGI by `--callers` concurrent callers
(no HTTP server, no sockets), `--rounds` rounds of `--requests` test-split PNG uploads each. Each serves its own
checkout's models/digitsum.pt, so a new checkpoint is compared as well as new code. A round's figure is
the process's CPU time per request; the two processes share whatever the machine does meanwhile, so the ratio of
their figures round by round is what this reports (median and range). What the ratio covers is everything
`create_app()` does per request: middleware, routing, the form, the handler, batching, preprocessing and the
network's forward pass; it leaves out uvicorn's HTTP parsing and the kernel's sockets, the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "request_cpu.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="the commit to compare this checkout with")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--callers", type=int, default=32, help="concurrent requests, as connections would be")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: serve the app of this checkout
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(args.worker))
        uvloop.run(drive(args.worker, args.requests, args.rounds, args.callers))  # the loop uvicorn gives the app
        return
    if not args.before:
        parser.error("--before is required: the commit to compare this checkout with")
    with tempfile.TemporaryDirectory(prefix="digitsum-before-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            now, then = compare(ROOT, before, args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=True)
    args.out.write_text(report(now, then, args))
    print(args.out.read_text())


def compare(new: Path, old: Path, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Both checkouts' CPU ms per request, round by round, measured in two processes started together."""
    command = [sys.executable, str(Path(__file__).resolve()), "--requests", str(args.requests), "--rounds",
               str(args.rounds), "--callers", str(args.callers), "--worker"]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    workers = [
        subprocess.Popen([*command, str(root)], cwd=root, stdout=subprocess.PIPE, text=True, env=env)
        for root in (new, old)
    ]
    outputs = [worker.communicate()[0] for worker in workers]
    if any(worker.returncode for worker in workers):
        raise SystemExit(f"a worker failed: {[worker.returncode for worker in workers]}")
    now, then = (json.loads(output.strip().splitlines()[-1])["cpu_ms"] for output in outputs)
    return now, then


async def drive(root: Path, requests: int, rounds: int, callers: int) -> None:
    """The worker: `create_app()` of `root` through its lifespan, then the rounds; prints one JSON line."""
    # imported here, once sys.path has `root` first: that checkout's app, benchmarks and training
    import torch

    from app.main import create_app
    from app.settings import Settings
    from benchmarks.serve import FORM, digit_bodies
    from training.data import load_sample

    where = Path(sys.modules[create_app.__module__].__file__ or "")
    assert where.resolve().is_relative_to(root.resolve()), f"imported {where}, not the app of {root}"
    torch.set_num_threads(1)
    service = create_app(Settings(model_path=root / "models" / "digitsum.pt", device="cpu"))
    bodies = digit_bodies(load_sample().test.images.numpy()[:200])
    lifespan = Lifespan(service)
    await lifespan.start()
    while await post(service, bodies[0], FORM) != 200:  # 503 until warmed up and self-tested
        await asyncio.sleep(0.1)

    async def caller(todo: Iterator[int]) -> None:  # the callers of a round share its request numbers
        for i in todo:
            status = await post(service, bodies[i % len(bodies)], FORM)
            assert status == 200, status

    cpu_ms = []
    for _ in range(rounds):
        todo = iter(range(requests))
        start = time.process_time()
        await asyncio.gather(*(caller(todo) for _ in range(callers)))
        cpu_ms.append((time.process_time() - start) / requests * 1000)
    await lifespan.stop()
    print(json.dumps({"cpu_ms": cpu_ms}), flush=True)


async def post(service: object, body: bytes, content_type: str) -> int:
    """One POST /predict through the ASGI interface; its status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}}  # fmt: skip
    sent, statuses = False, list[int]()

    async def receive() -> dict[str, object]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never hangs up
        raise AssertionError("unreachable")

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    await service(scope, receive, send)  # type: ignore[operator]
    return statuses[0]


class Lifespan:
    """The ASGI lifespan protocol, as a server runs it: startup before the first request, shutdown after the last."""

    def __init__(self, service: object) -> None:
        self.service = service
        self.to_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(self.service(scope, self.to_app.get, self.from_app.put))  # type: ignore[operator]
        await self.to_app.put({"type": "lifespan.startup"})
        assert (await self.from_app.get())["type"] == "lifespan.startup.complete"

    async def stop(self) -> None:
        await self.to_app.put({"type": "lifespan.shutdown"})
        await self.from_app.get()
        await self.task


def report(now: list[float], then: list[float], args: argparse.Namespace) -> str:
    ratios = [a / b for a, b in zip(now, then, strict=True)]
    rows = [
        f"| {i} | {b:.3f} | {a:.3f} | {r:.3f} |" for i, (a, b, r) in enumerate(zip(now, then, ratios, strict=True), 1)
    ]
    head = head_commit()
    return "\n".join([
        "# CPU per /predict: this checkout against another commit, at the same moment",
        "",
        f"{datetime.date.today()}, {os.cpu_count()} CPUs. `python benchmarks/request_cpu.py --before {args.before} "
        f"--requests {args.requests} --rounds {args.rounds} --callers {args.callers}` at {head}: both apps in process "
        "at once, each on its own checkout's models/digitsum.pt (benchmarks/request_cpu.py says how), process CPU ms "
        "per request by round.",
        "",
        f"| round | {args.before} (CPU ms/request) | {head} (CPU ms/request) | ratio |",
        "|---:|---:|---:|---:|",
        *rows,
        "",
        f"Median ratio **{statistics.median(ratios):.3f}** (range {min(ratios):.3f}-{max(ratios):.3f}); "
        "under 1: this checkout uses less CPU per request.",
        "",
    ])  # fmt: skip


MEASURED = ["app", "models", "training", "benchmarks", ":!benchmarks/results"]  # what a run of this checkout executes


def head_commit() -> str:
    """This checkout's commit, marked when what was measured (MEASURED: the code and the model, not the results
    files this writes nor the README) has uncommitted changes."""
    # imported here: a worker must import `training` from the checkout it measures (`drive`), not from this one
    from training.export import git_commit

    commit = git_commit(ROOT, MEASURED) or "an unknown commit"
    return commit.removesuffix("-dirty")[:7] + (" with uncommitted changes" if commit.endswith("-dirty") else "")


if __name__ == "__main__":
    main()
