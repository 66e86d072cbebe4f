"""The parent process of `python -m app.serve`: keeps N workers serving and never serves a request itself.

- A worker tells the parent through its pipe when it is ready (listening, model self-tested) or why it failed.
- A worker that dies is replaced, after 1, 2, 4 ... 30 s when they keep dying; only when no worker has ever
  become ready (a bad checkpoint or setting) does the parent stop, with the worker's reason and exit status.
- SIGHUP: a rolling restart. One worker at a time, a new one starts (reading the checkpoint now on disk); only
  once it is ready does the old one get SIGTERM and drain. A new worker that fails ends the restart there, and
  the old workers keep serving. The new worker takes over the old one's listening socket rather than a new one:
  connections already queued on it are then accepted by the new worker, where closing the old socket would reset
  them (Linux resets a closed listener's queue unless net.ipv4.tcp_migrate_req=1).
- SIGTERM or SIGINT: every worker drains; one still alive DIGITSUM_DRAIN_TIMEOUT_S + KILL_MARGIN_S later is killed.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("digitsum")

READY, FAILED = "ready", "failed"  # what a worker sends up its pipe: (READY, model sha256[:12]) or (FAILED, why)
BACKOFF_S = (1, 2, 4, 8, 16, 30)  # before each replacement of a worker that keeps dying
HEALTHY_AFTER_S = 60.0  # a worker that served this long before dying was not part of a crash loop
KILL_MARGIN_S = 5.0  # beyond the drain bound: uvicorn's own shutdown, the batcher and the lifespan's end

OpenSocket = Callable[[], socket.socket]  # a new socket of the port's SO_REUSEPORT group: bound, not listening
StartProcess = Callable[[socket.socket, Connection], BaseProcess]  # a worker, not started yet: serves that socket,
# and reports on that pipe


@dataclass(eq=False)
class Worker:
    process: BaseProcess
    sock: socket.socket  # the parent's copy of the worker's listening socket
    pipe: Connection | None  # None once the worker closed its end
    ready_at: float | None = None
    failure: str = "it gave no reason; see its lines above"
    replaces: Worker | None = None  # in a rolling restart: the old worker to stop once this one is ready
    kill_at: float | None = None  # set when it got SIGTERM: killed if still alive then
    killed: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid


class Supervisor:
    def __init__(self, open_socket: OpenSocket, start_process: StartProcess, count: int, url: str, drain_s: float):
        self.open_socket, self.start_process = open_socket, start_process
        self.count, self.url, self.drain_s = count, url, drain_s
        self.workers: list[Worker] = []
        self.signals: list[int] = []
        self.retry_at: list[float] = []  # when to start the replacements of workers that died
        self.deaths_in_a_row = 0
        self.to_restart: list[Worker] = []  # old workers the rolling restart under way has still to replace
        self.restarting = self.ever_ready = self.announced = self.stopping = False
        self.exit_status = 0
        self.model = "?"

    def run(self) -> int:
        """Start the workers and supervise them until they have all stopped; the launcher's exit status."""
        wake, wake_up = socket.socketpair()  # a signal writes here, so wait() returns at once
        wake.setblocking(False)
        wake_up.setblocking(False)
        signal.set_wakeup_fd(wake_up.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        for _ in range(self.count):
            self.start()
        while self.workers or (self.retry_at and not self.stopping):
            wait([*self.watched(), wake], timeout=self.seconds_to_next_timer())
            drain(wake)
            self.handle_signals()
            for worker in [w for w in self.workers if w.pipe is not None and w.pipe.poll()]:
                self.read_message(worker)
            for worker in [w for w in self.workers if not w.process.is_alive()]:
                self.on_exit(worker)
            self.handle_timers()
        signal.set_wakeup_fd(-1)
        return self.exit_status

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)  # handled in the loop: a handler should not start processes mid-statement

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self.rolling_restart()
            elif not self.stopping:
                log.info("%s: stopping; each worker finishes the requests it has", signal.Signals(signum).name)
                self.stop()

    def watched(self) -> list[Connection | int]:
        return [w.process.sentinel for w in self.workers] + [w.pipe for w in self.workers if w.pipe is not None]

    def seconds_to_next_timer(self) -> float | None:
        timers = self.retry_at + [w.kill_at for w in self.workers if w.kill_at is not None and not w.killed]
        return max(0.0, min(timers) - time.monotonic()) if timers else None

    def start(self, replaces: Worker | None = None) -> None:
        reader, writer = Pipe(duplex=False)
        sock = replaces.sock if replaces is not None else self.open_socket()
        process = self.start_process(sock, writer)
        # Born with SIGHUP blocked (a mask survives exec), until it ignores SIGHUP: one sent to the whole process
        # group (a closed terminal, `timeout`) must not kill a worker still starting; the parent gets it later.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        writer.close()  # the worker's end: once the worker is gone, reading ours says EOF
        self.workers.append(Worker(process, sock, reader, replaces=replaces))
        log.info("started worker %s%s", process.pid, f" to replace worker {replaces.pid}" if replaces else "")

    def read_message(self, worker: Worker) -> None:
        assert worker.pipe is not None
        try:
            kind, text = worker.pipe.recv()
        except (EOFError, OSError):
            worker.pipe = None
            return
        if kind == FAILED:
            worker.failure = text
        elif kind == READY and worker.kill_at is None:
            self.on_ready(worker, text)

    def on_ready(self, worker: Worker, model: str) -> None:
        worker.ready_at, self.ever_ready, self.model = time.monotonic(), True, model
        log.info("worker %s ready: listening, model sha256 %s self-tested", worker.pid, model)
        if worker.replaces is not None:
            log.info("worker %s replaced: it drains its requests and exits", worker.replaces.pid)
            self.terminate(worker.replaces)
            worker.replaces = None
            self.continue_restart()
        serving = [w for w in self.workers if w.ready_at is not None and w.kill_at is None]
        if not self.announced and len(serving) >= self.count:
            self.announced = True
            log.info("ready: %d workers serving on %s", len(serving), self.url)

    def on_exit(self, worker: Worker) -> None:
        while worker.pipe is not None:  # its last words (why it failed) may still be in the pipe
            if not worker.pipe.poll():
                break
            self.read_message(worker)
        self.workers.remove(worker)
        if all(w.sock is not worker.sock for w in self.workers):
            worker.sock.close()  # else its successor (or predecessor) still serves it
        successor = next((w for w in self.workers if w.replaces is worker), None)
        status = exit_status(worker.process.exitcode)
        if worker.kill_at is not None or self.stopping:
            drained = worker.process.exitcode in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled
            log.info("worker %s %s", worker.pid, "drained and stopped" if drained else f"stopped: it {status}")
        elif worker.replaces is not None:  # a rolling restart's new worker: the new checkpoint is refused
            log.error(
                "restart abandoned: new worker %s %s before it was ready: %s; the old workers keep serving model %s",
                *(worker.pid, status, worker.failure, self.model),
            )
            self.to_restart.clear()
            self.restarting = False
        elif not self.ever_ready:
            log.error("startup failed: worker %s %s: %s; stopping", worker.pid, status, worker.failure)
            code = worker.process.exitcode
            self.exit_status = code if code is not None and code > 0 else STARTUP_FAILURE
            self.stop()
        elif successor is not None:  # it died during a rolling restart, and its replacement is already starting
            log.error("worker %s %s; worker %s, starting now, takes its place", worker.pid, status, successor.pid)
        else:
            self.replace_later(worker, status)

    def replace_later(self, worker: Worker, status: str) -> None:
        """Another worker in its place after a backoff: a crash loop then costs little, and the others serve."""
        now = time.monotonic()
        if worker.ready_at is not None and now - worker.ready_at >= HEALTHY_AFTER_S:
            self.deaths_in_a_row = 0
        delay = BACKOFF_S[min(self.deaths_in_a_row, len(BACKOFF_S) - 1)]
        self.deaths_in_a_row += 1
        if worker in self.to_restart:  # a replacement is a restart too
            self.to_restart.remove(worker)
        why = "after it was ready" if worker.ready_at is not None else f"before it was ready: {worker.failure}"
        log.error("worker %s %s %s; starting a replacement in %d s", worker.pid, status, why, delay)
        self.retry_at.append(now + delay)

    def handle_timers(self) -> None:
        now = time.monotonic()
        for due in [t for t in self.retry_at if t <= now]:
            self.retry_at.remove(due)
            self.start()
        for worker in self.workers:
            if worker.kill_at is not None and worker.kill_at <= now and not worker.killed:
                log.error(
                    "worker %s still running %g s after SIGTERM (DIGITSUM_DRAIN_TIMEOUT_S=%g + %g s); killing it",
                    *(worker.pid, self.drain_s + KILL_MARGIN_S, self.drain_s, KILL_MARGIN_S),
                )
                worker.process.kill()
                worker.killed = True

    def rolling_restart(self) -> None:
        if self.stopping:
            return
        if self.restarting:
            log.warning("SIGHUP: a rolling restart is already under way; send SIGHUP again once it has finished")
            return
        # Those still starting too: they may have read the checkpoint before it was replaced.
        self.to_restart = [w for w in self.workers if w.kill_at is None]
        if not self.to_restart:
            log.warning("SIGHUP: no worker is running, so there is nothing to restart")
            return
        log.info("SIGHUP: restarting %d workers one at a time, with the checkpoint now on disk", len(self.to_restart))
        self.restarting = True
        self.continue_restart()

    def continue_restart(self) -> None:
        while self.to_restart:
            old = self.to_restart.pop(0)
            if old in self.workers and old.kill_at is None:
                self.start(replaces=old)
                return
        if self.restarting:
            self.restarting = False
            log.info("restart complete: %d workers serving model sha256 %s on %s", self.count, self.model, self.url)

    def stop(self) -> None:
        self.stopping = True
        self.retry_at.clear()
        self.to_restart.clear()
        for worker in self.workers:
            worker.sock.close()  # the parent's copy: the port refuses connections once the workers close theirs
            self.terminate(worker)

    def terminate(self, worker: Worker) -> None:
        """SIGTERM: uvicorn stops listening and answers what it has, within DIGITSUM_DRAIN_TIMEOUT_S."""
        if worker.kill_at is None:
            worker.process.terminate()
            worker.kill_at = time.monotonic() + self.drain_s + KILL_MARGIN_S


def drain(wake: socket.socket) -> None:
    """Empty the wake-up socket: its bytes only woke the loop; self.signals says which signals came."""
    try:
        while wake.recv(512):
            pass
    except BlockingIOError:
        pass


def exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
