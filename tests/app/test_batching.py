"""MicroBatcher: batching policy, failures, timeouts and shutdown, with a fake model and no wall-clock thresholds.

A gate (threading.Event) holds the fake's first batch inside the worker thread, so the test decides exactly
which requests are queued when the worker next looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import pytest

from app.batching import BatcherClosed, BatchError, BatchFailed, BatchTimeout, MicroBatcher, QueueFull, TimedResult

pytestmark = pytest.mark.anyio

GUARD_S = 5  # a bug shows up as a failed test instead of a hung run; no test gets near it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeModel:
    """run_batch that records its batches and answers item * 10; `gate` blocks it while cleared."""

    def __init__(self, fail_on: int | None = None, drop_one: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[int] = []  # the thread each batch ran on
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on
        self.drop_one = drop_one

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(GUARD_S)
        if self.fail_on in items:
            raise ValueError("model exploded")
        results = [item * 10 for item in items]
        return results[1:] if self.drop_one else results

    @property
    def seen(self) -> list[int]:
        return [item for batch in self.batches for item in batch]

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


class RecordingObserver:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.queue_waits: list[float] = []
        self.failures: list[BaseException] = []

    def on_batch(self, size: int, inference_s: float) -> None:
        assert inference_s >= 0
        self.batch_sizes.append(size)

    def on_queue_wait(self, seconds: float) -> None:
        self.queue_waits.append(seconds)

    def on_failure(self, exc: BaseException) -> None:
        self.failures.append(exc)


@contextlib.asynccontextmanager
async def running(
    model: FakeModel,
    max_batch_size: int = 4,
    max_wait_s: float = 0.0,
    max_queue: int = 100,
    observer: RecordingObserver | None = None,
    lone_inline: bool = False,
) -> AsyncIterator[MicroBatcher[int, int]]:
    batcher = MicroBatcher(model, max_batch_size, max_wait_s, max_queue, observer, lone_inline)
    async with asyncio.timeout(GUARD_S):
        await batcher.start()
        try:
            yield batcher
        finally:
            model.gate.set()
            await batcher.stop()


async def hold_first_batch(batcher: MicroBatcher[int, int], model: FakeModel, item: int = 0) -> asyncio.Task[int]:
    """Submit `item` and return once the worker thread is blocked inside run_batch with it."""
    model.gate.clear()
    task = asyncio.create_task(batcher.submit(item))
    await asyncio.to_thread(model.entered.wait, GUARD_S)
    return task


async def queue_up(batcher: MicroBatcher[int, int], items: range) -> list[asyncio.Task[int]]:
    tasks = [asyncio.create_task(batcher.submit(item)) for item in items]
    await asyncio.sleep(0)  # each task runs up to its await on the future, i.e. is queued
    assert batcher.queue_depth == len(items)
    return tasks


async def test_lone_request_runs_at_once_despite_long_max_wait() -> None:
    model = FakeModel()
    async with running(model, max_wait_s=3600) as batcher:
        assert await batcher.submit(7) == 70
    assert model.batches == [[7]]


async def test_requests_queued_during_a_batch_form_bounded_batches_in_order() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=3, max_wait_s=3600) as batcher:
        first = await hold_first_batch(batcher, model)
        tasks = await queue_up(batcher, range(1, 8))
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
    assert results == [item * 10 for item in range(8)]
    # Full batches and the trailing lone one run without waiting, or this test would hit GUARD_S.
    assert model.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]


async def test_partial_batch_waits_at_most_max_wait() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=4, max_wait_s=0.01) as batcher:
        first = await hold_first_batch(batcher, model)
        tasks = await queue_up(batcher, range(1, 3))
        model.gate.set()
        assert await asyncio.gather(first, *tasks) == [0, 10, 20]
    assert model.sizes == [1, 2]


async def test_partial_batch_runs_as_soon_as_arrivals_fill_it() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=4, max_wait_s=3600) as batcher:
        first = await hold_first_batch(batcher, model)
        tasks = await queue_up(batcher, range(1, 3))
        model.gate.set()
        tasks += [asyncio.create_task(batcher.submit(item)) for item in (3, 4)]
        assert await asyncio.gather(first, *tasks) == [0, 10, 20, 30, 40]
    assert model.batches == [[0], [1, 2, 3, 4]]


async def test_submit_timed_reports_queue_and_inference_time() -> None:
    model = FakeModel()
    async with running(model) as batcher:
        timed = await batcher.submit_timed(3)
    assert isinstance(timed, TimedResult)
    assert (timed.value, timed.batch_size) == (30, 1)
    assert timed.queue_s >= 0 and timed.inference_s >= 0


async def test_full_queue_is_refused_with_a_retry_hint() -> None:
    model = FakeModel()
    async with running(model, max_queue=2) as batcher:
        first = await hold_first_batch(batcher, model)  # running, so not counted as queued
        tasks = await queue_up(batcher, range(1, 3))
        with pytest.raises(QueueFull) as info:
            await batcher.submit(3)
        assert info.value.retry_after_s >= 1
        model.gate.set()
        await asyncio.gather(first, *tasks)
    assert 3 not in model.seen


async def test_timed_out_request_frees_its_slot_and_never_runs() -> None:
    model = FakeModel()
    async with running(model, max_queue=1) as batcher:
        first = await hold_first_batch(batcher, model)
        with pytest.raises(BatchTimeout):
            await batcher.submit(1, timeout_s=0.01)
        assert batcher.queue_depth == 0
        second = asyncio.create_task(batcher.submit(2))  # would be QueueFull if the slot were still held
        await asyncio.sleep(0)
        model.gate.set()
        assert await asyncio.gather(first, second) == [0, 20]
    assert model.batches == [[0], [2]]


async def test_cancelled_request_is_skipped() -> None:
    model = FakeModel()
    async with running(model) as batcher:
        first = await hold_first_batch(batcher, model)
        (gone, kept) = await queue_up(batcher, range(1, 3))
        gone.cancel()  # what Starlette does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queue_depth == 1
        model.gate.set()
        assert await asyncio.gather(first, kept) == [0, 20]
        assert batcher.queue_depth == 0
    assert model.batches == [[0], [2]]


async def test_request_cancelled_while_its_batch_fills_is_skipped() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=4, max_wait_s=3600) as batcher:
        first = await hold_first_batch(batcher, model)
        (gone, *kept) = await queue_up(batcher, range(1, 3))
        model.gate.set()
        await first  # the worker has now taken [1, 2] and waits for two more
        assert batcher.queue_depth == 0
        gone.cancel()
        kept += [asyncio.create_task(batcher.submit(item)) for item in (3, 4)]
        assert await asyncio.gather(*kept) == [20, 30, 40]
    assert model.batches == [[0], [2, 3, 4]]


async def test_request_timing_out_while_its_batch_runs_leaves_the_worker_intact() -> None:
    model = FakeModel()
    async with running(model) as batcher:
        model.gate.clear()
        with pytest.raises(BatchTimeout):
            await batcher.submit(1, timeout_s=0.01)  # the gate opens only afterwards
        model.gate.set()
        assert await batcher.submit(2) == 20
    assert model.batches == [[1], [2]]


async def test_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    model = FakeModel(fail_on=1)
    observer = RecordingObserver()
    async with running(model, observer=observer) as batcher:
        first = await hold_first_batch(batcher, model)
        doomed = await queue_up(batcher, range(1, 3))
        model.gate.set()
        assert await first == 0
        for task in doomed:
            with pytest.raises(BatchFailed) as info:
                await task
            assert isinstance(info.value.__cause__, ValueError)
        assert await batcher.submit(5) == 50
    assert model.batches == [[0], [1, 2], [5]]
    assert observer.batch_sizes == [1, 1]
    assert [type(exc) for exc in observer.failures] == [ValueError]


async def test_wrong_number_of_results_is_a_batch_failure() -> None:
    model = FakeModel(drop_one=True)
    async with running(model) as batcher:
        with pytest.raises(BatchFailed) as info:
            await batcher.submit(1)
        assert "returned 0 results for 1 items" in str(info.value.__cause__)
        assert batcher.running


async def test_stop_with_drain_answers_everything_and_refuses_newcomers() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=2) as batcher:
        first = await hold_first_batch(batcher, model)
        tasks = await queue_up(batcher, range(1, 6))
        stopping = asyncio.create_task(batcher.stop(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosed):
            await batcher.submit(9)
        model.gate.set()
        await stopping
        assert not batcher.running
        assert [task.result() for task in [first, *tasks]] == [item * 10 for item in range(6)]
    assert model.sizes == [1, 2, 2, 1]


async def test_stop_without_drain_fails_queued_and_running_items() -> None:
    model = FakeModel()
    async with running(model) as batcher:
        first = await hold_first_batch(batcher, model)
        tasks = await queue_up(batcher, range(1, 3))
        await batcher.stop(drain=False)
        for task in [first, *tasks]:
            with pytest.raises(BatcherClosed):
                await task
    assert model.batches == [[0]]


async def test_observer_sees_every_batch_and_queue_wait() -> None:
    model = FakeModel()
    observer = RecordingObserver()
    async with running(model, max_batch_size=3, observer=observer) as batcher:
        first = await hold_first_batch(batcher, model)
        tasks = await queue_up(batcher, range(1, 5))
        model.gate.set()
        await asyncio.gather(first, *tasks)
    assert observer.batch_sizes == [1, 3, 1]
    assert len(observer.queue_waits) == 5 and min(observer.queue_waits) >= 0
    assert observer.failures == []


async def many_behind_one(
    batcher: MicroBatcher[int, int], model: FakeModel, items: list[int]
) -> list[TimedResult[int] | BatchError]:
    """Item 0's batch held in the model and item 1 queued alone, then `items` submitted together; once they are
    all queued the model goes on, and the answers to `items` come back (0 and 1 are checked here)."""
    first = await hold_first_batch(batcher, model)
    alone = await queue_up(batcher, range(1, 2))
    many = asyncio.create_task(batcher.submit_many(items))
    await asyncio.sleep(0)
    model.gate.set()
    results = await many
    assert await asyncio.gather(first, *alone) == [0, 10]
    return results


async def test_submit_many_answers_in_order_in_shared_batches() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=3) as batcher:
        results = await many_behind_one(batcher, model, [2, 3, 4, 5])
    assert [r.value for r in results if isinstance(r, TimedResult)] == [20, 30, 40, 50]
    assert [r.batch_size for r in results if isinstance(r, TimedResult)] == [3, 3, 2, 2]
    assert model.batches == [[0], [1, 2, 3], [4, 5]]  # the lone request and the batch's items share a batch


async def test_submit_many_refuses_only_the_items_beyond_the_queues_room() -> None:
    model = FakeModel()
    async with running(model, max_queue=3) as batcher:
        results = await many_behind_one(batcher, model, [2, 3, 4, 5])
    assert [r.value for r in results[:2] if isinstance(r, TimedResult)] == [20, 30]
    for refused in results[2:]:
        assert isinstance(refused, QueueFull) and refused.retry_after_s >= 1
    assert results[2] is not results[3]  # each its own exception
    assert not {4, 5} & set(model.seen)


async def test_submit_many_timing_out_frees_every_slot_and_its_items_never_run() -> None:
    model = FakeModel()
    async with running(model, max_queue=3) as batcher:
        first = await hold_first_batch(batcher, model)
        results = await batcher.submit_many([1, 2, 3], timeout_s=0.01)
        assert [type(r) for r in results] == [BatchTimeout] * 3
        assert batcher.queue_depth == 0
        second = asyncio.create_task(batcher.submit_many([4, 5, 6]))  # all refused if the slots were still held
        await asyncio.sleep(0)
        model.gate.set()
        assert await first == 0
        assert [r.value for r in await second if isinstance(r, TimedResult)] == [40, 50, 60]
    assert model.batches == [[0], [4, 5, 6]]


async def test_submit_many_cancelled_frees_every_slot() -> None:
    model = FakeModel()
    async with running(model) as batcher:
        first = await hold_first_batch(batcher, model)
        many = asyncio.create_task(batcher.submit_many([1, 2, 3]))
        await asyncio.sleep(0)
        assert batcher.queue_depth == 3
        many.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await many
        assert batcher.queue_depth == 0
        model.gate.set()
        assert await first == 0
        assert await batcher.submit(4) == 40
    assert model.batches == [[0], [4]]


async def test_submit_many_fails_only_the_items_of_a_failing_batch() -> None:
    model = FakeModel(fail_on=2)
    async with running(model, max_batch_size=2) as batcher:
        first = await hold_first_batch(batcher, model)
        many = asyncio.create_task(batcher.submit_many([1, 2, 3]))
        await asyncio.sleep(0)
        model.gate.set()
        results = await many
        assert await first == 0
    for failed in results[:2]:
        assert isinstance(failed, BatchFailed) and isinstance(failed.__cause__, ValueError)
    assert isinstance(results[2], TimedResult) and results[2].value == 30
    assert model.batches == [[0], [1, 2], [3]]


async def test_submit_before_start_is_refused() -> None:
    batcher = MicroBatcher(FakeModel(), max_batch_size=4, max_wait_s=0, max_queue=10)
    with pytest.raises(BatcherClosed):
        await batcher.submit(1)
    with pytest.raises(BatcherClosed):
        await batcher.submit_many([1, 2])


def test_bad_limits_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        MicroBatcher(FakeModel(), max_batch_size=0, max_wait_s=0, max_queue=10)


async def test_lone_inline_runs_a_lone_item_on_the_loop_and_overlapping_ones_in_the_thread() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=4, lone_inline=True) as batcher:
        assert await batcher.submit(1) == 10  # alone: run right here
        assert await asyncio.gather(*(batcher.submit(i) for i in range(2, 8))) == [20, 30, 40, 50, 60, 70]
    loop_thread = threading.get_ident()
    assert model.batches == [[1], [2, 3, 4, 5], [6, 7]]
    assert model.threads[0] == loop_thread
    assert loop_thread not in model.threads[1:]


async def test_lone_inline_sends_a_batch_of_one_to_the_thread_while_others_queue_behind_it() -> None:
    model = FakeModel()
    async with running(model, max_batch_size=1, lone_inline=True) as batcher:
        assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 10, 20]
    loop_thread = threading.get_ident()
    assert model.batches == [[0], [1], [2]]
    assert [thread == loop_thread for thread in model.threads] == [False, False, True]  # only the last was alone


async def test_without_lone_inline_every_batch_runs_in_the_thread() -> None:
    model = FakeModel()
    async with running(model) as batcher:
        assert await batcher.submit(1) == 10
    assert model.threads != [threading.get_ident()]
