"""Pure ASGI middleware on the request path: request ids, metrics, and the upload caps (size and time)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid

from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import IN_FLIGHT, REQUEST_SECONDS

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a client's id is echoed only if it is this tame

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
        rid = offered if _SAFE_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500  # if the app dies before answering
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", "unmatched")  # the template, never the raw path
            REQUEST_SECONDS.labels(route, scope["method"], str(status)).observe(time.perf_counter() - start)
            request_id.reset(token)


class BodyLimits:
    """Bounds what a body may cost: 413 over the size cap, 408 when it does not arrive within the time cap.

    The size is judged from Content-Length before reading, and while streaming (a lying or missing one).
    The time cap stops a client that trickles its upload (slowloris) from holding a connection for ever;
    other requests are unaffected meanwhile, as the wait is on the event loop.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_seconds: float) -> None:
        self.app, self.max_bytes, self.max_seconds = app, max_bytes, max_seconds

    def too_large(self) -> HTTPException:
        detail = f"The request body is larger than the {self.max_bytes / 1e6:g} MB limit; send a smaller image."
        return HTTPException(413, detail, {"Connection": "close"})

    def too_slow(self) -> HTTPException:
        detail = f"The request body did not arrive within {self.max_seconds:g} s; send it again on a faster connection."
        return HTTPException(408, detail, {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            error = self.too_large()
            await JSONResponse({"detail": error.detail}, error.status_code, error.headers)(scope, receive, send)
            return
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.max_seconds

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # e.g. waiting for a disconnect while streaming a response: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self.too_slow() from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()
            return message

        await self.app(scope, limited_receive, send)
