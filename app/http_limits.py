"""uvicorn's httptools protocol with the limits it lacks: what a request head may cost, how long it may take, and
how many connections a worker keeps.

uvicorn (0.54, httptools 0.9) caps none of these. httptools joins a header value and uvicorn joins the URL with
`bytes +=` on every read, so one 128 MB header value cost 19.5 CPU-seconds (quadratic) and was then answered 200;
4.2 million headers were all kept; and a connection that sends nothing is never closed, so 1,100 silent sockets
used up the process's 1,024 file descriptors and every later connection, /healthz included, was reset.

Here a request head is counted as it arrives, in every read and in the parser's callbacks, and refused as soon as
it passes a cap: 414 for the URL, 431 for the header bytes or count, 400 for what is not HTTP, 408 for a head that
has not arrived within the header timeout (a connection that sent nothing is just closed). Each refusal is a JSON
{"detail": ...} with `Connection: close`; the connection then half-closes and reads what the client still sends
for a moment (LINGER_S, LINGER_BYTES), so the client reads the answer instead of a reset. Past max_connections, a
new connection closes the one that has been idle longest, or, when none is idle, is answered 503 at once. Each
worker logs these as counts per reason, at most every LOG_EVERY_S, never a line per connection.

benchmarks/results/hostile.md has what each attack cost before and after; benchmarks/results/http_limits_cost.md
shows the protocol costs nothing measurable on GET /healthz.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.settings import Settings

log = logging.getLogger("digitsum")

# A refused connection is still read (and discarded) for up to LINGER_S or LINGER_BYTES, so that a client still
# sending reads the answer rather than a reset, while one that sends on for ever costs a bounded amount.
LINGER_S = 2.0
LINGER_BYTES = 256 * 1024
LOG_EVERY_S = 10.0  # refusals are logged as counts at most this often per worker, not a line per connection
FD_RESERVE = 256  # descriptors a worker keeps for itself beyond connections: model, logs, metrics files, threads


@dataclass(frozen=True)
class HeadLimits:
    max_url_bytes: int
    max_header_bytes: int  # names + values + framing of all header lines, the URL not included
    max_headers: int
    header_timeout_s: float
    max_connections: int  # per worker process

    @classmethod
    def from_settings(cls, settings: Settings, fd_limit: int) -> HeadLimits:
        """The settings, with max_connections lowered to what the worker's file descriptor limit allows."""
        room = max(fd_limit - FD_RESERVE, 16)
        if settings.max_connections > room:
            log.warning(
                "DIGITSUM_MAX_CONNECTIONS=%d is more than this worker's file descriptor limit allows (%d); "
                "using %d: raise `ulimit -n` (hard) to allow more",
                settings.max_connections,
                fd_limit,
                room,
            )
        return cls(
            settings.max_url_bytes,
            settings.max_header_bytes,
            settings.max_headers,
            settings.header_timeout_s,
            min(settings.max_connections, room),
        )


NOT_HTTP = "The request is not valid HTTP/1.1."


class Refusal(Exception):
    """Raised inside a parser callback to stop parsing; data_received answers it."""

    def __init__(self, status: int, detail: str, reason: str = "malformed request") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason  # for the log's counts


class EventCounts:
    """Counts of refusals by reason, logged together at most every LOG_EVERY_S: an attack of 10,000 connections
    writes a few lines, not 10,000."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.flush_handle: asyncio.TimerHandle | None = None

    def add(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        if not self.counts and self.flush_handle is None:
            log.warning("http: %s (more are counted every %.0f s)", reason, LOG_EVERY_S)
            self.flush_handle = loop.call_later(LOG_EVERY_S, self.flush, loop)
            return
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush_handle = None
        if self.counts:
            summary = "; ".join(f"{n} x {reason}" for reason, n in sorted(self.counts.items()))
            log.warning("http, in the last %.0f s: %s", LOG_EVERY_S, summary)
            self.counts = {}
            self.flush_handle = loop.call_later(LOG_EVERY_S, self.flush, loop)


def limited_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` with these limits; one per worker process."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits, "idle": OrderedDict(),
                                                                         "events": EventCounts()})  # fmt: skip


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HeadLimits]
    idle: ClassVar[OrderedDict[LimitedHttpToolsProtocol, None]]  # this worker's idle connections, oldest first
    events: ClassVar[EventCounts]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_head = False  # a request has begun and its headers are not complete
        self.head_bytes = 0  # bytes read since the request began, from the read after the one it began in
        self.url_bytes = 0
        self.header_bytes = 0
        self.header_count = 0
        self.bytes_seen = 0
        self.refused = False
        self.lingered = 0  # bytes read and dropped after refusing
        self.head_timer: asyncio.TimerHandle | None = None

    # --- connection life ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self.evict_oldest_idle():
            detail = "The server has too many open connections; retry in a few seconds."
            self.refuse(503, detail, "over max_connections with none idle")
            return
        self.idle[self] = None
        self.start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.pop(self, None)
        self.cancel_head_timer()
        super().connection_lost(exc)

    def evict_oldest_idle(self) -> bool:
        if not self.idle:
            return False
        oldest, _ = self.idle.popitem(last=False)
        oldest.cancel_head_timer()
        oldest.transport.close()
        self.events.add("closed an idle connection to make room over max_connections", self.loop)
        return True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # now waiting for the next request on this connection
            self.idle[self] = None

    # --- reading the head --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.refused:  # what a refused client still sends while it reads our answer
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport.close()
            return
        self.bytes_seen += len(data)
        self._unset_keepalive_if_required()
        continued = self.in_head  # the head began in an earlier read: all of this one is head (or its end)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # a cap, or uvicorn's own callback failing (non-ASCII path)
            refusal = exc.__context__ if isinstance(exc.__context__, Refusal) else Refusal(400, NOT_HTTP)
            self.refuse(refusal.status, refusal.detail, refusal.reason)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self.refuse(400, NOT_HTTP, "malformed request")
            return
        if self.in_head and continued:
            # on_header sees a header only once it is complete: a value that never ends is caught here. The read
            # in which the head began is not counted (it may hold the previous request's body); on_header is.
            self.head_bytes += len(data)
            if self.head_bytes - self.url_bytes > self.limits.max_header_bytes:
                self.refuse(431, self.header_bytes_detail(), "headers over limit")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.idle.pop(self, None)
        self.in_head = True
        self.head_bytes = self.url_bytes = self.header_bytes = self.header_count = 0
        if self.head_timer is None:
            self.start_head_timer()

    def on_url(self, url: bytes) -> None:
        self.url_bytes += len(url)
        if self.url_bytes > self.limits.max_url_bytes:
            raise Refusal(414, f"The URL is longer than {self.limits.max_url_bytes} bytes.", "URL over limit")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_count > self.limits.max_headers:
            raise Refusal(431, f"The request has more than {self.limits.max_headers} headers.", "too many headers")
        if self.header_bytes > self.limits.max_header_bytes:
            raise Refusal(431, self.header_bytes_detail(), "headers over limit")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.cancel_head_timer()
        super().on_headers_complete()

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn warns once per request; counted instead, so a client repeating it cannot flood the log."""
        self.events.add("ignored an Upgrade header (not a WebSocket)", self.loop)

    def header_bytes_detail(self) -> str:
        return f"The request headers are larger than {self.limits.max_header_bytes} bytes."

    # --- the header timeout ------------------------------------------------------------------

    def start_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.limits.header_timeout_s, self.head_timed_out)

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.bytes_seen == 0:  # nothing to answer: it never asked anything
            self.idle.pop(self, None)
            self.transport.close()
            self.events.add("closed a connection that sent nothing within the header timeout", self.loop)
            return
        detail = f"The request headers did not arrive within {self.limits.header_timeout_s:g} s."
        self.refuse(408, detail, "request head incomplete within the header timeout")

    # --- refusing ----------------------------------------------------------------------------

    def refuse(self, status: int, detail: str, reason: str) -> None:
        """Answer `status` with a JSON detail, stop reading requests, and close after the client has read it."""
        self.refused = True
        self.in_head = False
        self.idle.pop(self, None)
        self.cancel_head_timer()
        self.events.add(f"answered {status}: {reason}", self.loop)
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        self.transport.write(response(status, detail))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # FIN after the answer; reading goes on until the client closes or LINGER_S
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def response(status: int, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)
            + (b"retry-after: 5\r\n" if status == 503 else b""))  # fmt: skip
    return STATUS_LINE[status] + head + b"\r\n" + body


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (idle sockets must not use up the 1,024 that
    many shells and containers start with); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
