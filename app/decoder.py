"""Where an upload is decoded: thumbnails with their batch, everything else in a decoder process with hard limits.

A thumbnail (<= INLINE_MAX_BYTES and <= INLINE_MAX_PIXELS) costs well under a millisecond, less than a hand-off
to a process, so `decode` only checks its header and hands the checked image on: its batch decodes and
preprocesses it right before the forward pass (app/predictor.py; in the batch thread, or on the loop for a lone
request, app/batching.py), where numpy's and Pillow's code stays in the cache from one image to the next;
interleaved with the event loop's HTTP work the same preprocessing cost much more (the history of
benchmarks/results/serve.md has the before and after). Anything bigger goes to one of a few decoder processes
(numpy and Pillow only, no torch), because a file of a few KB can still cost seconds and hundreds of MB to decode
(RLE, thousands of progressive scans, 16-bit or float pixels), and a decode running in the service's own process
can be neither stopped nor made to give its memory back. Each job in a decoder process is bounded by:

* CPU time: `cpu_s` seconds (ITIMER_PROF; its signal ends the process: 413);
* memory: `memory_bytes` above the process's size at start (RLIMIT_AS: MemoryError, 413); a process that
  has grown by more than RECYCLE_BYTES exits after answering, so its memory goes back to the system;
* the request's deadline, and the client: on either, the process is killed (504, or nothing to answer).

A killed or exited process is replaced in the background, forked from a small server process that has
imported numpy, Pillow and this module once (multiprocessing's forkserver): about 10 ms of CPU, where a fresh
interpreter costs over 100 ms, which a client sending bombs would otherwise make us pay each time (and about 0.4 s
if multiprocessing also imported the worker's __main__ into each: app/serve.py's children_skip_main).
Waiting for a decoder counts against the same queue bound (503 + Retry-After) and deadline (504) as waiting
for the model.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import anyio
import numpy as np
from PIL import Image

from app.errors import ServiceError, TimedOut, Unavailable
from app.preprocess import attempt, to_mnist, to_mnist_each
from app.upload import (
    ImageError,
    ImageTooLarge,
    NoDigitFound,
    UnsupportedImage,
    decode_pixels,
    decoding_bytes,
    open_checked,
)

log = logging.getLogger("digitsum")

INLINE_MAX_PIXELS = 64 * 64
INLINE_MAX_BYTES = 4096  # bounds what a crafted small file can cost its batch (zTXt bombs)
RECYCLE_BYTES = 64 * 1024 * 1024
PIXELS_BYTES = 28 * 28 * 4  # float32 (28, 28)
_ERRORS: dict[bytes, type[ImageError]] = {
    cls.__name__.encode(): cls for cls in (UnsupportedImage, ImageTooLarge, NoDigitFound)
}


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int
    cpu_s: float
    memory_bytes: int
    recycle_bytes: int = RECYCLE_BYTES  # a process grown by more exits after answering


class Decoder:
    """Upload bytes -> (28, 28) float32: thumbnails checked here and finished in the batch thread, anything else in
    one of `processes` decoder processes."""

    def __init__(self, limits: DecodeLimits, processes: int, max_queue: int) -> None:
        self.limits, self.processes, self.max_queue = limits, processes, max_queue
        self._idle: asyncio.Queue[DecoderProcess] = asyncio.Queue()
        self._threads = anyio.CapacityLimiter(processes)  # one thread waits on each busy process
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Start the processes in the background: a first big upload waits for one, a thumbnail never does."""
        for _ in range(self.processes):
            self._in_background(self._add_process())

    async def stop(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        while not self._idle.empty():
            self._idle.get_nowait().kill()

    async def decode(self, data: bytes, deadline: float) -> np.ndarray | Image.Image:
        """Upload bytes -> (28, 28) float32 in [0, 1], or a thumbnail checked from its header for the batch thread
        to finish (`finish`); `deadline` is on the event loop's clock."""
        image = open_checked(data, self.limits.max_pixels)  # the header only: cheap, whatever the file
        return image if is_thumbnail(data, image) else await self._in_process(data, image, deadline)

    async def decode_many(
        self, uploads: Sequence[bytes], deadline: float
    ) -> list[np.ndarray | Image.Image | ServiceError]:
        """`decode` for each upload of a batch request, each its result or its own error: the thumbnails' headers
        are checked here one after another, the bigger uploads go to the processes together (a task each)."""
        results: list[np.ndarray | Image.Image | ServiceError] = [
            attempt_checked(data, self.limits.max_pixels) for data in uploads
        ]
        big = {
            i: _returning_errors(self._in_process(data, image, deadline))
            for i, (data, image) in enumerate(zip(uploads, results, strict=True))
            if isinstance(image, Image.Image) and not is_thumbnail(data, image)
        }
        for i, result in zip(big, await asyncio.gather(*big.values()), strict=True):
            results[i] = result
        return results

    async def _in_process(self, data: bytes, image: Image.Image, deadline: float) -> np.ndarray:
        """Decode and preprocess an upload whose header passed `open_checked` in a decoder process."""
        if (needed := decoding_bytes(image)) > self.limits.memory_bytes:  # refused before any decoder runs out
            raise ImageTooLarge(
                f"The image needs about {needed / 2**20:,.0f} MB to decode, more than the "
                f"{self.limits.memory_bytes / 2**20:,.0f} MB an upload may use; send a smaller one."
            )
        process = await self._acquire(deadline)
        try:
            timeout_s = deadline - asyncio.get_running_loop().time()
            reply = await anyio.to_thread.run_sync(
                process.round_trip, data, timeout_s, limiter=self._threads, abandon_on_cancel=True
            )
        except BaseException:  # deadline, disconnect (cancelled) or the process died: it goes, a new one comes
            self._replace(process)
            raise
        if reply is None:  # killed by its CPU limit, or crashed
            self._replace(process)
            raise self._died(process)
        if reply[:1] == b"1":  # it grew: it has exited after answering, so its memory is back with the system
            self._replace(process)
        else:
            self._idle.put_nowait(process)
        return self._parse(reply[1:])

    @staticmethod
    def finish(images: Sequence[np.ndarray | Image.Image]) -> list[np.ndarray | Exception]:
        """What `decode` returned for a batch -> (28, 28) float32 each: the thumbnails are decoded and preprocessed
        here, together; an image that fails gets its exception (an ImageError is the client's, any other a bug)."""
        thumbnails = [image for image in images if isinstance(image, Image.Image)]
        finished = iter(to_mnist_each([attempt(decode_pixels, image) for image in thumbnails]))
        return [next(finished) if isinstance(image, Image.Image) else image for image in images]

    async def _acquire(self, deadline: float) -> DecoderProcess:
        if self._waiting >= self.max_queue:
            raise Unavailable("The service is at capacity; retry shortly.")
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                return await self._idle.get()
        except TimeoutError:
            raise TimedOut("The image could not be decoded in time; retry shortly.") from None
        finally:
            self._waiting -= 1

    def _parse(self, reply: bytes) -> np.ndarray:
        kind, body = reply[:1], reply[1:]
        if kind == b"K" and len(body) == PIXELS_BYTES:
            return np.frombuffer(body, dtype=np.float32).reshape(28, 28).copy()
        name, _, message = body.partition(b"\0")
        if kind == b"E" and name in _ERRORS:
            raise _ERRORS[name](message.decode())
        log.error("a decoder process failed on an upload: %s", body[:500].decode(errors="replace"))
        raise undecodable()

    def _died(self, process: DecoderProcess) -> ImageError:
        if process.process.exitcode == -signal.SIGPROF:
            return ImageTooLarge(
                f"The image needs more than {self.limits.cpu_s:g} s of CPU to decode; "
                "send a smaller or simpler file (a baseline JPEG or a PNG)."
            )
        log.error("a decoder process died (exit status %s) on an upload", process.process.exitcode)
        return undecodable()

    def _replace(self, process: DecoderProcess) -> None:
        process.kill()
        self._in_background(self._add_process(after=process))

    async def _add_process(self, after: DecoderProcess | None = None) -> None:
        if after is not None:
            await asyncio.to_thread(after.close)
        if not self._closed:
            self._idle.put_nowait(await asyncio.to_thread(DecoderProcess, self.limits))

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def is_thumbnail(data: bytes, image: Image.Image) -> bool:
    """Small enough in bytes and pixels to be decoded in the batch thread."""
    return len(data) <= INLINE_MAX_BYTES and image.width * image.height <= INLINE_MAX_PIXELS


def attempt_checked(data: bytes, max_pixels: int) -> Image.Image | ImageError:
    """open_checked(data), or the client's error it raised."""
    try:
        return open_checked(data, max_pixels)
    except ImageError as exc:
        return exc


async def _returning_errors(decoding: Coroutine[Any, Any, np.ndarray]) -> np.ndarray | ServiceError:
    """What `decoding` returns, or the error it would answer the client with (image, capacity or time)."""
    try:
        return await decoding
    except ServiceError as exc:
        return exc


def undecodable() -> UnsupportedImage:
    """The answer for an upload whose decoding failed by a fault of ours (logged where it happened)."""
    return UnsupportedImage("The image could not be decoded; send a PNG or JPEG image.")


class DecoderProcess:
    """One decoder process and the pipe to it; `round_trip` blocks, so it runs in a thread."""

    def __init__(self, limits: DecodeLimits) -> None:
        context = multiprocessing.get_context("forkserver")  # forks of a small server: no torch, no copied threads
        context.set_forkserver_preload(["app.decoder"])  # numpy, Pillow and our code imported once, there
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, limits), name="digitsum-decoder", daemon=True)
        self.process.start()
        child.close()

    def round_trip(self, data: bytes, timeout_s: float) -> bytes | None:
        """Send one upload and wait up to `timeout_s` for its answer (else TimedOut); None if the process died."""
        deadline = time.monotonic() + timeout_s
        try:
            self.conn.send_bytes(data)
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                self.kill()
                raise TimedOut("The image could not be decoded in time; retry shortly.")
            return self.conn.recv_bytes()
        except (EOFError, OSError):  # it died: wait here, off the event loop, for its exit status
            self.process.join(timeout=1)
            return None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def close(self) -> None:
        self.process.join(timeout=5)
        self.conn.close()


# --- inside a decoder process -------------------------------------------------------------------


def serve(conn: Connection, limits: DecodeLimits) -> None:
    """Answer uploads until the pipe closes: b"<recycle>K<pixels>" or b"<recycle>E<error class>\\0<sentence>"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the service decides
    start_rss = _rss_bytes()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = _vm_bytes() + limits.memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        reply = _decode(data, limits)
        recycle = _rss_bytes() - start_rss > limits.recycle_bytes
        conn.send_bytes((b"1" if recycle else b"0") + reply)
        if recycle:
            return


def _decode(data: bytes, limits: DecodeLimits) -> bytes:
    signal.setitimer(signal.ITIMER_PROF, limits.cpu_s)  # CPU seconds of this process; the signal ends it
    try:
        image = open_checked(data, limits.max_pixels)
        return b"K" + to_mnist(decode_pixels(image)).astype(np.float32).tobytes()
    except ImageError as exc:
        return b"E" + type(exc).__name__.encode() + b"\0" + str(exc).encode()
    except MemoryError:
        error = ImageTooLarge("The image needs more memory to decode than an upload may use; send a smaller one.")
        return b"E" + b"ImageTooLarge\0" + str(error).encode()
    except Exception as exc:  # a bug, not the client's fault: the service logs it
        return b"X" + repr(exc).encode()
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def _rss_bytes() -> int:
    return _statm(1)


def _vm_bytes() -> int:
    return _statm(0)


def _statm(field: int) -> int:
    """A size from /proc/self/statm (0: all mapped, 1: resident), in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
