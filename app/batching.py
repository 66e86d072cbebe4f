"""Dynamic micro-batching: concurrent requests share one forward pass.

Each request submits one item (a batch request all of its items at once, `submit_many`) and awaits an
`asyncio.Future` per item; a single worker task gathers queued items into a batch and runs `run_batch` on a
dedicated one-thread executor, so the event loop keeps reading requests while a batch runs.

With `lone_inline`, a batch of one item with nothing queued behind it runs on the event loop instead: a lone
request has no one to batch with and no one to keep waiting, and the hop to the thread and back (a futex wake,
a self-pipe write, two GIL hand-overs) cost it more than its forward pass (benchmarks/results/serve.md,
1 connection). Once requests overlap, the queue is not empty and batches go to the thread as before. The price:
while a lone forward pass runs (about a millisecond here) the loop reads nothing, and a forward pass that hangs
holds its worker's loop with it, where in the thread it would hold every later batch instead.

Batching rule (a lone request is never slower than without batching):
1. The worker takes everything queued right now, up to `max_batch_size`, skipping requests that already
   timed out or were cancelled.
2. A batch of one runs at once, and so does a full batch. Only a batch of 2..max-1 items (evidence that
   requests arrive concurrently) may wait for more, at most `max_wait_s` from the moment it was formed,
   and it runs as soon as it is full.
3. While batch k runs in the thread, new requests queue up and become batch k+1, so under load batches
   grow by themselves without any waiting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, cast

log = logging.getLogger("digitsum")

T = TypeVar("T")
R = TypeVar("R")


class BatchError(Exception):
    """Base of everything `submit` raises on purpose."""


class QueueFull(BatchError):
    """Too many requests already wait for the model; the client should retry after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Inference queue is full; retry after {retry_after_s} s.")
        self.retry_after_s = retry_after_s


class BatchTimeout(BatchError):
    """The result was not ready within the request's timeout."""


class BatchFailed(BatchError):
    """`run_batch` raised or broke its contract; `__cause__` holds the reason."""


class BatcherClosed(BatchError):
    """The batcher is not running (not started yet, or shutting down)."""


class BatchObserver(Protocol):
    """Metrics hooks, called on the event loop; keep them cheap (a Prometheus observe() is)."""

    def on_batch(self, size: int, inference_s: float) -> None: ...

    def on_queue_wait(self, seconds: float) -> None: ...

    def on_failure(self, exc: BaseException) -> None: ...


class NullObserver:
    """The default observer: records nothing."""

    def on_batch(self, size: int, inference_s: float) -> None:
        pass

    def on_queue_wait(self, seconds: float) -> None:
        pass

    def on_failure(self, exc: BaseException) -> None:
        pass


@dataclass(frozen=True, slots=True)
class TimedResult(Generic[R]):
    """One item's result and where its time went (the service reports these in `Server-Timing`)."""

    value: R
    queue_s: float  # from submit until its batch started
    inference_s: float  # run_batch of the whole batch, measured in the worker thread
    batch_size: int


@dataclass(slots=True, eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[TimedResult[R]]
    enqueued_at: float = field(default_factory=time.perf_counter)
    # True once the item left the queue: taken by the worker, or abandoned by its timed-out/cancelled caller.
    dequeued: bool = False


def _timed_call(run_batch: Callable[[list[T]], list[R]], items: list[T]) -> tuple[list[R], float]:
    """Runs where the batch runs (the worker thread, or the loop for a lone item): the hop is not in the duration."""
    start = time.perf_counter()
    values = run_batch(items)
    return values, time.perf_counter() - start


class MicroBatcher(Generic[T, R]):
    """Gathers concurrent `submit` calls into batches for one synchronous `run_batch(items) -> results`."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        lone_inline: bool = False,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"MicroBatcher needs max_batch_size >= 1, max_queue >= 1 and max_wait_s >= 0; "
                f"got {max_batch_size}, {max_queue} and {max_wait_s}."
            )
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._observer: BatchObserver = observer or NullObserver()
        self.lone_inline = lone_inline  # public: the tests that hold a batch in the thread turn it off
        # The deque may hold abandoned entries (dequeued=True) until the worker or _compact drops them;
        # _queued counts only the live ones, which is what max_queue limits.
        self._queue: deque[_Pending[T, R]] = deque()
        self._queued = 0
        self._in_flight: list[_Pending[T, R]] = []
        self._arrived = asyncio.Event()
        self._accepting = False
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_s_ema = 0.0  # smoothed run_batch duration, for QueueFull.retry_after_s

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch that is running)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Items in the batch that is running now."""
        return len(self._in_flight)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        """Start the worker on the running loop; call once from the lifespan."""
        if self._worker is not None:
            raise RuntimeError("MicroBatcher.start() was called twice; call stop() first.")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digitsum-batch")
        self._arrived = asyncio.Event()  # fresh, in case an earlier start() ran on another loop
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="digitsum-batcher")

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting; with drain, answer every queued and running item first, else fail them."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._accepting = False
        self._arrived.set()  # an idle worker wakes up, sees nothing to do and ends
        try:
            if drain:
                await worker
            else:
                worker.cancel()
                await asyncio.wait([worker])  # unlike `await worker`, never raises the worker's CancelledError
        finally:
            # Reached with leftovers only without drain, or when stop() itself was cancelled mid-drain.
            self._fail_all([*self._in_flight, *self._queue], BatcherClosed, "The service is shutting down.")
            self._queue.clear()
            self._queued = 0
            assert self._executor is not None
            # Never blocks the loop: an idle thread exits at once, a running batch finishes on its own.
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: T, timeout_s: float | None = None) -> R:
        """The result of `run_batch` for this item."""
        return (await self.submit_timed(item, timeout_s)).value

    async def submit_timed(self, item: T, timeout_s: float | None = None) -> TimedResult[R]:
        """The result for this item with its queue wait and inference time."""
        self._check_accepting()
        if self._queued >= self._max_queue:
            raise QueueFull(self._retry_after_s())
        pending = self._enqueue(item)
        try:
            async with asyncio.timeout(timeout_s):
                return await pending.future  # cancelling this task cancels the future: the worker skips it
        except TimeoutError:
            raise BatchTimeout(f"No result within {timeout_s} s.") from None
        finally:
            self._release(pending)

    async def submit_many(
        self, items: Sequence[T], timeout_s: float | None = None
    ) -> list[TimedResult[R] | BatchError]:
        """Each item's result, in order, or the BatchError that item alone got: QueueFull for the items beyond the
        queue's room, BatchTimeout for those without a result in timeout_s, BatchFailed for those whose batch failed.

        One waiter and one timer for them all, where a `submit` per item costs a task and a timer each.
        """
        self._check_accepting()
        admitted = [self._enqueue(item) for item in items[: max(0, self._max_queue - self._queued)]]
        try:
            if admitted:
                await asyncio.wait([pending.future for pending in admitted], timeout=timeout_s)
        finally:
            for pending in admitted:
                pending.future.cancel()  # a no-op once answered; else its batch skips it
                self._release(pending)
        retry_after_s = self._retry_after_s()
        refused = [QueueFull(retry_after_s) for _ in items[len(admitted) :]]
        return [*(self._outcome(pending, timeout_s) for pending in admitted), *refused]

    @staticmethod
    def _outcome(pending: _Pending[T, R], timeout_s: float | None) -> TimedResult[R] | BatchError:
        if pending.future.cancelled():
            return BatchTimeout(f"No result within {timeout_s} s.")
        exc = pending.future.exception()
        return pending.future.result() if exc is None else cast(BatchError, exc)

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise BatcherClosed("The model is not accepting requests (not started or shutting down).")

    def _release(self, pending: _Pending[T, R]) -> None:
        """Free a queue slot of an item that timed out or was cancelled while queued (the worker frees the rest)."""
        if not pending.dequeued:
            pending.dequeued = True
            self._queued -= 1

    def _enqueue(self, item: T) -> _Pending[T, R]:
        if len(self._queue) >= 2 * self._max_queue:
            self._compact()
        pending: _Pending[T, R] = _Pending(item, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued += 1
        self._arrived.set()
        return pending

    def _compact(self) -> None:
        """Drop abandoned entries, so clients that time out during a slow batch can't grow the deque forever."""
        live = [p for p in self._queue if not p.dequeued]
        self._queue.clear()
        self._queue.extend(live)

    def _retry_after_s(self) -> int:
        """Whole seconds until the queue has likely drained, at least 1 (the HTTP Retry-After unit)."""
        batches_ahead = self._queued / self._max_batch_size + 1
        return max(1, math.ceil(batches_ahead * self._batch_s_ema))

    async def _work(self) -> None:
        while (batch := await self._next_batch()) is not None:
            try:
                await self._run(batch)
            except Exception as exc:  # e.g. a broken observer: fail this batch, keep serving
                log.exception("Batch worker step failed")
                self._fail_all(batch, BatchFailed, "Internal error while running the batch.", exc)
            self._in_flight = []

    async def _next_batch(self) -> list[_Pending[T, R]] | None:
        """The next batch to run; None once stopped and drained."""
        batch = self._take(self._max_batch_size)
        while not batch:
            if not self._accepting:
                return None
            self._arrived.clear()
            await self._arrived.wait()
            batch = self._take(self._max_batch_size)
        if 1 < len(batch) < self._max_batch_size and self._max_wait_s > 0:
            await self._fill(batch)
        return batch

    def _take(self, limit: int) -> list[_Pending[T, R]]:
        """Pop up to `limit` live items off the queue."""
        batch: list[_Pending[T, R]] = []
        while self._queue and len(batch) < limit:
            pending = self._queue.popleft()
            if pending.dequeued:
                continue
            pending.dequeued = True
            self._queued -= 1
            batch.append(pending)
        return batch

    async def _fill(self, batch: list[_Pending[T, R]]) -> None:
        """Add arrivals to a partial batch until it is full or max_wait_s has passed since it was formed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while self._accepting and (room := self._max_batch_size - len(batch)) > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._arrived.wait()
            except TimeoutError:
                return
            batch.extend(self._take(room))

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        live = [p for p in batch if not p.future.done()]  # callers may have gone away during _fill
        if not live:
            return
        self._in_flight = live
        started = time.perf_counter()
        for pending in live:
            self._observer.on_queue_wait(started - pending.enqueued_at)
        items = [p.item for p in live]
        try:
            if self.lone_inline and len(items) == 1 and not self._queued:
                values, inference_s = _timed_call(self._run_batch, items)
            else:
                loop = asyncio.get_running_loop()
                values, inference_s = await loop.run_in_executor(self._executor, _timed_call, self._run_batch, items)
            if len(values) != len(live):
                raise RuntimeError(f"run_batch returned {len(values)} results for {len(live)} items")
        except Exception as exc:
            self._observer.on_failure(exc)
            self._fail_all(live, BatchFailed, f"Inference failed for a batch of {len(live)}.", exc)
            return
        self._batch_s_ema = 0.8 * self._batch_s_ema + 0.2 * inference_s
        self._observer.on_batch(len(live), inference_s)
        for pending, value in zip(live, values, strict=True):
            if not pending.future.done():  # its caller may have timed out while the batch ran
                pending.future.set_result(TimedResult(value, started - pending.enqueued_at, inference_s, len(live)))

    @staticmethod
    def _fail_all(
        batch: list[_Pending[T, R]], error: type[BatchError], message: str, cause: BaseException | None = None
    ) -> None:
        """Fail every waiting caller, each with its own exception: a shared one would collect all their tracebacks."""
        for pending in batch:
            if not pending.future.done():
                exc = error(message)
                exc.__cause__ = cause  # as `raise error(message) from cause` would
                pending.future.set_exception(exc)
