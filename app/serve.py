"""`python -m app.serve --workers auto` (what `make run` starts): uvicorn in N processes that share the port evenly.

`uvicorn --workers N` gives every process one shared listening socket, and Linux wakes the most recently idle
process first, which then accepts every connection already waiting: 16 keep-alive clients arriving together
all landed on one process (one core) in 3 of 8 tries, at 800 instead of 1,310 requests/s. Here each process
gets its own socket with SO_REUSEPORT (the parent binds them), and the kernel spreads new connections over
them by address hash.

A worker listens only once its model is loaded, warmed up and self-tested (uvicorn runs the lifespan before it
listens), so no connection reaches a worker that would answer 503 "not ready". The parent (app/supervisor.py)
only supervises: it logs `ready: N workers serving on URL` when they all are, replaces a worker that dies (with
backoff), restarts them one at a time on SIGHUP (how a new checkpoint goes live), and drains them all on SIGTERM.
Workers die with the parent, even when it is SIGKILLed. `--workers auto`: one per CPU of the cgroup's quota
(a container's --cpus), else of the CPU affinity mask (app/cgroup.py).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import types
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from multiprocessing.connection import Connection
from typing import NoReturn

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE

from app.cgroup import cpu_limit
from app.errors import StartupError
from app.http_limits import HeadLimits, limited_protocol, raise_fd_limit
from app.settings import get_settings
from app.supervisor import FAILED, READY, Supervisor

log = logging.getLogger("digitsum")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
ACCEPTED_GRACE_S = 0.5  # a local client's request follows its connection within a millisecond or so


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with ExitStack() as cleanup:
        try:
            settings = get_settings()  # a bad DIGITSUM_ setting is reported once here, not once per worker
            metrics_dir(cleanup)
            port = claim_port(args.host, args.port)
            if settings.internal_port:
                claim_port(args.host, settings.internal_port)
        except StartupError as exc:
            log.error("%s", exc)
            return STARTUP_FAILURE
        workers = worker_count(args.workers)
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: no torch state copied by fork
        parent = os.getpid()

        def open_socket() -> socket.socket:
            return reuseport_socket(args.host, port)

        def start_process(sock: socket.socket, report: Connection) -> multiprocessing.process.BaseProcess:
            return spawn.Process(target=serve, args=(sock, args.log_config, parent, report), name="digitsum-worker")

        url = f"http://{args.host}:{port}"
        log.info("starting %d workers for %s; each listens once its model is ready", workers, url)
        return Supervisor(open_socket, start_process, workers, url, settings.drain_timeout_s).run()


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m app.serve", description="Serve DigitSum in several processes.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=8000, help="0: any free port")
    parser.add_argument(
        "--workers", type=workers_arg, default="auto", help="processes, or auto: one per CPU (use 1 on a GPU)"
    )
    parser.add_argument("--log-config", help="a logging config file for uvicorn, e.g. app/log_config.json")
    return parser.parse_args(argv)


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"--port {text} is not a port number from 0 to 65535")
    return int(text)


def workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--workers {text} must be auto or a whole number of at least 1")
    return int(text)


def worker_count(requested: int | str) -> int:
    if requested != "auto":
        return int(requested)
    cpus, why = cpu_limit()
    log.info("--workers auto: %d (%s)", cpus, why)
    return cpus


def metrics_dir(cleanup: ExitStack) -> None:
    """Where the workers' /metrics meet (prometheus-client's multiprocess mode): a temporary directory removed at
    exit, unless PROMETHEUS_MULTIPROC_DIR names one (which must then exist and be writable)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path is None:
        try:
            temporary = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="digitsum-metrics-"))
        except OSError as exc:  # e.g. a read-only root filesystem without a writable /tmp
            reason = f"cannot create a metrics directory ({exc})"
            raise StartupError(f"{reason}; set PROMETHEUS_MULTIPROC_DIR or TMPDIR to a writable directory.") from None
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = temporary
    elif not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(
            f"PROMETHEUS_MULTIPROC_DIR={path} is not a writable directory; create it, or unset it for a temporary one."
        )


def claim_port(host: str, port: int) -> int:
    """The port to serve on, after checking that nothing listens there yet: SO_REUSEPORT would otherwise share
    it silently with another server of this user. Port 0 becomes a free port."""
    try:
        with socket.socket(family_of(host), socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
            return int(probe.getsockname()[1])
    except OSError as exc:
        message = f"cannot listen on {host}:{port} ({exc}); stop what uses it or choose another PORT"
        raise StartupError(message) from None


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuseport_socket(host: str, port: int) -> socket.socket:
    """Bound but not listening: until a worker listens on it, the kernel gives it no connection."""
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve(sock: socket.socket, log_config: str | None, parent: int, report: Connection) -> None:
    """One worker: uvicorn on its own socket of the port's SO_REUSEPORT group, listening once the model is ready."""
    die_with_parent(parent)
    children_skip_main()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the launcher's signal (rolling restart), e.g. from a terminal
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the launcher until now
    from app.main import app  # here, not at the top: the launcher itself never loads torch or the model

    config = uvicorn.Config(
        ready_before_listening(app, report),
        log_config=log_config or LOGGING_CONFIG,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(get_settings().drain_timeout_s),  # typed int: whole seconds
        http=limited_protocol(HeadLimits.from_settings(get_settings(), raise_fd_limit())),  # caps on request heads
    )
    sockets = [sock]
    if internal_port := get_settings().internal_port:  # /metrics and /model, for scrapers and operators only
        sockets.append(reuseport_socket(sock.getsockname()[0], internal_port))
    ReportingServer(config, app, report).run(sockets=sockets)


def die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the launcher dies, even by SIGKILL, so that no orphan keeps the port (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)


def children_skip_main() -> None:
    """Let this worker's child processes (app/decoder.py's decoders) start without importing this module.

    multiprocessing prepares every forkserver or spawn child by importing the parent's __main__ into it first (for
    functions defined there); in a worker that is this module, so uvicorn, FastAPI and pydantic: about 0.4 s of CPU on
    top of the decoder's own ~10 ms fork, paid again whenever a decoder is replaced (a client hung up during its
    decode, a bomb hit a limit), with the worker one decoder short meanwhile. The decoders run app.decoder alone.
    """
    sys.modules["__main__"] = types.ModuleType("__main__")


def ready_before_listening(app: FastAPI, report: Connection) -> FastAPI:
    """The app, whose lifespan now also waits for warm-up and self-test (uvicorn serves its background task
    otherwise, /readyz saying 503 meanwhile). A model that fails them ends startup; `report` hears why."""
    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan_until_ready(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with lifespan(app):
                await app.state.warm_up
                if app.state.predictor.ready:
                    yield
                    return
                reason = app.state.predictor.status  # already logged by the predictor
        except StartupError as exc:  # already logged by the lifespan
            report.send((FAILED, str(exc)))
            raise
        report.send((FAILED, reason))
        app.state.startup_error = StartupError(reason)  # OneLineStartupFailure: uvicorn prints no traceback
        raise app.state.startup_error  # after the lifespan's own cleanup (the batcher's thread)

    app.router.lifespan_context = lifespan_until_ready
    return app


class ReportingServer(uvicorn.Server):
    """uvicorn that tells the launcher once it listens: (READY, the model's sha256[:12])."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, report: Connection) -> None:
        super().__init__(config)
        self.app, self.report = app, report

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan (model ready), then listen; exits on failure
        self.report.send((READY, self.app.state.predictor.model.sha256[:12]))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, then give connections accepted a moment ago the time to send their request before
        uvicorn's own shutdown: it closes every connection without a request yet, and a request already on its
        way is then answered by a reset (1 in ~1,600 requests lost during a rolling restart, without this)."""
        for server in self.servers:
            server.close()
        await asyncio.sleep(ACCEPTED_GRACE_S)
        await super().shutdown(sockets)


if __name__ == "__main__":
    sys.exit(main())
