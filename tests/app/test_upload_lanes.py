"""BodyLimits' lanes: at most `lanes` big bodies are read at once per worker, a paused sender gives its lane up,
and too many waiting get 503 (a burst of multi-MB uploads must not crowd health checks out of the event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.errors import Unavailable
from app.middleware import LANE_IDLE_S, LANE_MIN_BYTES, BodyLimits

BIG = str(4 * LANE_MIN_BYTES).encode()
CHUNK = b"x" * 1024


def scope(length: bytes) -> Scope:
    return {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", length)]}


def client(chunks: int, events: list[str], name: str, stall_after: int | None = None) -> Receive:
    """A client that sends `chunks` chunks at once, or stalls for good after `stall_after` of them."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        if sent == stall_after:
            await asyncio.Event().wait()
        sent += 1
        events.append(f"{name} read {sent}")
        await asyncio.sleep(0)  # the read costs a loop turn, as a socket read does
        return {"type": "http.request", "body": CHUNK, "more_body": sent < chunks}

    return receive


def reading_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def middleware(lanes: int, max_waiting: int = 8) -> BodyLimits:
    return BodyLimits(reading_app(), max_bytes=10**9, max_seconds=5, lanes=lanes, max_waiting=max_waiting)


async def answered(app: BodyLimits, scope: Scope, receive: Receive) -> int:
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


def reads_of_two_big_uploads(lanes: int) -> list[str]:
    """Two clients, each sending a big body in three chunks at once: the order in which the chunks are read."""

    async def run() -> list[str]:
        events: list[str] = []
        shared = middleware(lanes=lanes)  # one app: one set of lanes for every request
        await asyncio.gather(*(answered(shared, scope(BIG), client(3, events, name)) for name in ("a", "b")))
        return events

    return asyncio.run(run())


def test_one_lane_reads_big_bodies_one_after_the_other() -> None:
    reads = reads_of_two_big_uploads(lanes=1)
    assert reads == ["a read 1", "a read 2", "a read 3", "b read 1", "b read 2", "b read 3"]  # b waited for all of a


def test_two_lanes_read_two_big_bodies_side_by_side() -> None:
    reads = reads_of_two_big_uploads(lanes=2)
    assert reads.index("b read 1") < reads.index("a read 3"), reads


def test_small_bodies_never_wait_for_a_lane() -> None:
    async def run() -> list[str]:
        events: list[str] = []
        shared = middleware(lanes=1)
        big = asyncio.create_task(answered(shared, scope(BIG), client(50, events, "big")))
        await asyncio.sleep(0)
        assert await answered(shared, scope(str(LANE_MIN_BYTES).encode()), client(1, events, "small")) == 200
        events.append("small answered")
        await big
        return events

    events = asyncio.run(run())
    assert events.index("small answered") < events.index("big read 50"), events


def test_a_sender_that_pauses_gives_its_lane_up() -> None:
    async def run() -> list[str]:
        events: list[str] = []
        shared = middleware(lanes=1)
        stalled = asyncio.create_task(answered(shared, scope(BIG), client(3, events, "stalled", stall_after=1)))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(answered(shared, scope(BIG), client(3, events, "fast")), 5) == 200
        events.append(f"fast answered after the pause: {loop.time() - started >= LANE_IDLE_S}")
        stalled.cancel()
        return events

    events = asyncio.run(run())
    assert events[0] == "stalled read 1", events
    assert events[-1] == "fast answered after the pause: True", events


@pytest.mark.parametrize("length", [BIG, None], ids=["big", "chunked: length unknown"])
def test_too_many_waiting_for_a_lane_get_503_with_a_sentence(length: bytes | None) -> None:
    async def run() -> tuple[int, int, Unavailable]:
        events: list[str] = []
        shared = middleware(lanes=1, max_waiting=1)
        request = scope(length) if length else {**scope(b""), "headers": []}
        first = asyncio.create_task(answered(shared, request, client(1000, events, "first")))
        await asyncio.sleep(0)
        second = asyncio.create_task(answered(shared, request, client(1, events, "second")))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable) as third:  # lane taken, one already waiting; the app's handler renders it
            await answered(shared, request, client(1, events, "third"))
        return await first, await second, third.value

    first, second, third = asyncio.run(run())
    assert (first, second, third.status_code) == (200, 200, 503)
    assert third.detail == "The service is receiving too many uploads at once; retry shortly."
    assert third.headers == {"Retry-After": "1"}
