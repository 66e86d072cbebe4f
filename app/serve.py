"""`python -m app.serve --workers N` (what `make run` starts): uvicorn in N processes that share the port evenly.

`uvicorn --workers N` gives every process one shared listening socket, and Linux wakes the most recently idle
process first, which then accepts every connection already waiting: 16 keep-alive clients arriving together
all landed on one process (one core) in 3 of 8 tries, at 800 instead of 1,310 requests/s. Here each process
binds its own socket with SO_REUSEPORT, and the kernel spreads new connections over them by address hash.

The parent only supervises: SIGTERM or SIGINT reaches every worker (each drains its in-flight requests), a
worker that dies after serving a while is replaced, and one that dies during startup (bad checkpoint or
setting; it says why) stops them all with its exit status.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE

from app.errors import StartupError
from app.http_limits import HeadLimits, limited_protocol, raise_fd_limit
from app.settings import get_settings

log = logging.getLogger("digitsum")

REPLACE_AFTER_S = 30.0  # a worker that dies sooner is failing at startup: replacing it would only loop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        get_settings()  # a bad DIGITSUM_ setting is reported once here, not once per worker
    except StartupError as exc:
        log.error("%s", exc)
        return STARTUP_FAILURE
    try:
        port = claim_port(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d (%s); stop what uses it or choose another PORT", args.host, args.port, exc)
        return STARTUP_FAILURE
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: no torch state copied by fork
    started: dict[BaseProcess, float] = {}  # live workers -> when each started
    stopping = False

    def start_worker() -> None:
        worker = spawn.Process(target=serve, args=(args.host, port, args.log_config), name="digitsum-worker")
        worker.start()
        started[worker] = time.monotonic()

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in started:
            worker.terminate()  # SIGTERM: uvicorn stops accepting and answers what it has

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(args.workers):
        start_worker()
    log.info("serving on http://%s:%d with %d worker processes", args.host, port, args.workers)
    status = 0
    while started:
        wait([worker.sentinel for worker in started])
        for worker in [w for w in started if not w.is_alive()]:
            lived_s = time.monotonic() - started.pop(worker)
            if stopping:
                continue
            if worker.exitcode == STARTUP_FAILURE or lived_s < REPLACE_AFTER_S:
                log.error("a worker exited with status %s during startup; stopping", worker.exitcode)
                status = worker.exitcode or STARTUP_FAILURE
                stop(signal.SIGTERM, None)
            else:
                log.error("a worker exited with status %s; starting another", worker.exitcode)
                start_worker()
    return status


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description="Serve DigitSum in several processes.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--workers", type=int, default=1, help="processes: one per core on CPU, 1 on a GPU")
    parser.add_argument("--log-config", help="a logging config file for uvicorn, e.g. app/log_config.json")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def claim_port(host: str, port: int) -> int:
    """The port to serve on, after checking that nothing listens there yet: SO_REUSEPORT would otherwise share
    it silently with another server of this user. Port 0 becomes a free port. OSError if taken or not ours."""
    with socket.socket(family_of(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(host: str, port: int, log_config: str | None) -> None:
    """One worker: its own listening socket in the port's SO_REUSEPORT group, then uvicorn until SIGTERM."""
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # taken between the parent's check and now
        log.error("cannot listen on %s:%d (%s); stop what uses it or choose another PORT", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    limits = HeadLimits.from_settings(get_settings(), raise_fd_limit())
    config = uvicorn.Config(
        "app.main:app",
        log_config=log_config or LOGGING_CONFIG,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(get_settings().drain_timeout_s),
        http=limited_protocol(limits),  # caps on the request head and on idle connections
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
