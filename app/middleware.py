"""Pure ASGI middleware on the request path: request ids, metrics, security headers, allowed hosts, HEAD, the
upload caps (size and time), cancelling work for a client that has gone, and one-line startup failures."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import secrets
import time

import anyio
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, BodyTooLarge, BodyTooSlow, NotFound, ServiceError, Unavailable
from app.handlers import error_response
from app.metrics import IN_FLIGHT, REQUEST_SECONDS

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a client's id is echoed only if it is this tame
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other is "other" in metrics
# On every answer; pages and /docs add their own Content-Security-Policy, which is then kept.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}

LANE_MIN_BYTES = 65536  # a body this small arrives in one or two reads: nothing to take turns for
LANE_IDLE_S = 0.05  # a lane holder waiting longer than this for its next chunk gives the lane up

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds %(request_id)s to every log record, so each line of a request carries its id.

    A record that names its requests itself (`extra={"request_id": ...}`, e.g. a failed batch) keeps them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class RequestContext:
    """Gives each request an id (returned in X-Request-ID) and records its latency by route and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = offered if _SAFE_ID.fullmatch(offered) else secrets.token_hex(16)  # uuid4().hex's form, 5x cheaper
        token = request_id.set(rid)
        status = 500  # if the app dies before answering
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, rid)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            IN_FLIGHT.dec()
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUEST_SECONDS.labels(route_label(scope), method, str(status)).observe(time.perf_counter() - start)
            request_id.reset(token)


def route_label(scope: Scope) -> str:
    """The route's template, never the raw path (bounded label values): "/predict", "/static/{path}"."""
    if (route := scope.get("route")) is not None:
        return str(route.path)
    if "endpoint" in scope:  # a mounted app (static files, Swagger UI's assets) matched
        return f"{scope.get('root_path', '')}/{{path}}"
    return "unmatched"


class AllowedHosts:
    """400 unless the Host header names one of `hosts` (DNS rebinding cannot reach /model or /metrics)."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app, self.hosts = app, {host.lower() for host in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.hosts and host not in self.hosts:
                error = BadRequest(f"This service does not answer to the host {host[:80]!r}; use its configured name.")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InternalOnly:
    """`paths` (/metrics, /model) only for connections to the internal port: scrapers and operators, not clients."""

    def __init__(self, app: ASGIApp, paths: frozenset[str], port: int) -> None:
        self.app, self.paths, self.port = app, paths, port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            internal = (scope.get("server") or ("", None))[1] == self.port
            if (scope["path"] in self.paths) != internal:  # internal paths only there, and only they
                await error_response(NotFound(f"There is nothing at {scope['path'][:80]} on this port."))(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


class HeadAsGet:
    """HEAD on any GET route: answered as GET, without the body (FastAPI registers GET alone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


class CancelOnDisconnect:
    """Once the body has arrived, a client that hangs up cancels its request: no decode or forward for no one.

    Only for bodies over `min_bytes` (or of unknown length): a thumbnail's request is done in about a millisecond,
    less than watching for the client costs, while a photo's decode is worth stopping.
    """

    def __init__(self, app: ASGIApp, min_bytes: int) -> None:
        self.app, self.min_bytes = app, min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.small(scope):
            await self.app(scope, receive, send)
            return
        body_read = anyio.Event()
        answered = False

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read.set()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal answered
            answered = True  # once an answer has started, it finishes: nothing left to save
            await send(message)

        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await body_read.wait()
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not answered:
                    group.cancel_scope.cancel()

            group.start_soon(watch)
            await self.app(scope, tracking_receive, tracking_send)
            group.cancel_scope.cancel()

    def small(self, scope: Scope) -> bool:
        length = dict(scope["headers"]).get(b"content-length", b"")
        return length.isdigit() and int(length) <= self.min_bytes


class BodyLimits:
    """Bounds what a body may cost: 413 over the size cap, 408 when it does not arrive within the time cap, and
    at most `lanes` big bodies read at once.

    The size is judged from Content-Length before reading, and while streaming (a lying or missing one).
    The time cap stops a client that trickles its upload (slowloris) from holding a connection for ever;
    other requests are unaffected meanwhile, as the wait is on the event loop.

    Lanes: every read of a body chunk is event-loop time, and with dozens of multi-MB bodies arriving at once a
    loop turn reads all of them, so a health check waited hundreds of ms for its turns (benchmarks/results/
    hostile.md, "queue"). A body over LANE_MIN_BYTES is read only while it holds one of `lanes` lanes; the rest
    wait unread (the server stops reading their sockets, and TCP holds their senders back). A sender that
    pauses longer than LANE_IDLE_S gives its lane up until its next chunk, so trickling uploads hold none.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_seconds: float, lanes: int, max_waiting: int) -> None:
        self.app, self.max_bytes, self.max_seconds = app, max_bytes, max_seconds
        self.lanes = Lanes(lanes, max_waiting)

    def too_large(self) -> ServiceError:
        return BodyTooLarge(
            f"The request body is larger than the {self.max_bytes / 1e6:g} MB limit; send a smaller image."
        )

    def too_slow(self) -> ServiceError:
        return BodyTooSlow(
            f"The request body did not arrive within {self.max_seconds:g} s; send it again on a faster connection."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(self.too_large())(scope, receive, send)
            return
        received, complete = 0, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_seconds
        lane = None if length.isdigit() and int(length) <= LANE_MIN_BYTES else Lane(self.lanes)

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # e.g. waiting for a disconnect while streaming a response: no deadline
                return await receive()
            if lane is not None:
                await lane.take(deadline)
                pause = loop.call_later(LANE_IDLE_S, lane.give_back)  # a sender that pauses lets others go
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self.too_slow() from None
            finally:
                if lane is not None:
                    pause.cancel()
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()
            if complete and lane is not None:
                lane.give_back()
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if lane is not None:
                lane.give_back()


class Lanes:
    """`count` lanes shared by one worker's big bodies, and a bound on how many may wait for one (else 503)."""

    def __init__(self, count: int, max_waiting: int) -> None:
        self.free = asyncio.Semaphore(count)
        self.max_waiting, self.waiting = max_waiting, 0

    async def acquire(self, deadline: float) -> None:
        if self.free.locked() and self.waiting >= self.max_waiting:
            raise Unavailable("The service is receiving too many uploads at once; retry shortly.")
        self.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self.free.acquire()
        except TimeoutError:
            raise Unavailable("The service is receiving too many uploads at once; retry shortly.") from None
        finally:
            self.waiting -= 1


class Lane:
    """One body's claim on a lane: taken before each chunk is read, given back when done or paused."""

    def __init__(self, lanes: Lanes) -> None:
        self.lanes, self.held = lanes, False

    async def take(self, deadline: float) -> None:
        if not self.held:
            await self.lanes.acquire(deadline)
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.lanes.free.release()


class OneLineStartupFailure:
    """A StartupError ends startup with its one-line message, not a traceback.

    The lifespan logs the line itself and marks the app (`state.startup_error`); Starlette would otherwise
    send uvicorn the whole traceback text as the failure message.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_without_traceback(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and getattr(scope["app"].state, "startup_error", None):
                message = {**message, "message": ""}  # uvicorn then prints only "Application startup failed."
            await send(message)

        await self.app(scope, receive, send_without_traceback)
