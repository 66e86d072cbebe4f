"""The request head's limits (app/http_limits.py) under `python -m app.serve`: over-long URLs and headers are
refused as they arrive, heads that never finish and connections that say nothing are closed (and logged a few
lines at a time), and thousands of idle connections do not keep a new client from being served."""

from __future__ import annotations

import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from app.http_limits import LOG_EVERY_S
from tests.support import raw_http
from tests.support.digits import Sample
from tests.support.live_server import MAKE_RUN, LiveServer, live_server
from tests.support.service import png_bytes

HEADER_TIMEOUT_S = 2
SENT_TOTAL = 256 * 1024 * 1024  # what the endless-head clients would send if nobody stopped them


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One worker with a short header timeout, so the timeout tests wait seconds, not the default 10."""
    tmp = tmp_path_factory.mktemp("limits")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp), "DIGITSUM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    with live_server(tmp / "serve.log", env, ["--workers", "1"], launcher=MAKE_RUN) as live:
        yield live


def assert_serving(server: LiveServer) -> None:
    assert server.get("/healthz") == (200, '{"status":"ok"}')


def test_long_url_is_414_with_a_detail(server: LiveServer) -> None:
    answer = raw_http.exchange(server.port, raw_http.get("/" + "a" * 9000))
    assert (answer.status, answer.detail) == (414, "The URL is longer than 8192 bytes.")
    assert answer.closed
    assert_serving(server)


def test_url_at_the_cap_is_served(server: LiveServer) -> None:
    answer = raw_http.exchange(server.port, raw_http.get("/healthz?" + "a" * (8192 - len("/healthz?"))))
    assert answer.status == 200


def test_endless_url_is_refused_before_the_client_finishes(server: LiveServer) -> None:
    answer, sent = raw_http.stream(server.port, b"GET /", raw_http.repeat(b"a" * 65536, SENT_TOTAL))
    assert answer.status == 414
    assert sent < SENT_TOTAL // 4  # answered while the client was still sending, not after reading it all
    assert_serving(server)


@pytest.mark.parametrize(
    "head, chunk, detail",
    [
        (b"X-Big: ", b"a" * 65536, "The request headers are larger than 65536 bytes."),
        (b"", b"a: b\r\n" * 10000, "The request has more than 100 headers."),
    ],
    ids=["one endless header value", "endless header lines: the count cap"],
)
def test_endless_headers_are_refused_before_the_client_finishes(
    server: LiveServer, head: bytes, chunk: bytes, detail: str
) -> None:
    prefix = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head
    answer, sent = raw_http.stream(server.port, prefix, raw_http.repeat(chunk, SENT_TOTAL))
    assert (answer.status, answer.detail) == (431, detail)
    assert sent < SENT_TOTAL // 4
    assert_serving(server)


def test_headers_at_the_caps_are_served(server: LiveServer) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(98))  # 99 with Host, ~50 KB
    answer = raw_http.exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["not HTTP", "header without colon", "raw UTF-8 in the path"],
)
def test_malformed_request_is_400_with_a_detail(server: LiveServer, request_bytes: bytes) -> None:
    answer = raw_http.exchange(server.port, request_bytes)
    assert (answer.status, answer.detail) == (400, "The request is not valid HTTP/1.1.")
    assert_serving(server)


def test_unfinished_head_is_408_after_the_header_timeout(server: LiveServer) -> None:
    with raw_http.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # then nothing: slowloris
        answer = raw_http.read_answer(sock)
    assert answer.status == 408
    assert answer.detail == f"The request headers did not arrive within {HEADER_TIMEOUT_S} s."


def test_trickled_head_is_408_although_bytes_keep_coming(server: LiveServer) -> None:
    """A byte every 0.2 s resets no timer: the timeout counts from the request's start."""
    with raw_http.connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"X-Slow: a\r\n")
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        answer = raw_http.read_answer(sock)
        stop.set()
    assert answer.status == 408


def test_silent_connections_are_closed_and_logged_a_few_lines_at_a_time(server: LiveServer) -> None:
    idle = raw_http.open_idle(server.port, 50)
    for sock in idle:
        assert sock.recv(1) == b""  # closed by the server after the header timeout, without an answer
        sock.close()
    lines = wait_for_log(server, "sent nothing within the header timeout")
    assert len(lines) <= 2  # the first alone at most, then one count every LOG_EVERY_S: not 50 lines
    assert_serving(server)


def wait_for_log(server: LiveServer, text: str, timeout_s: float = 3 * LOG_EVERY_S) -> list[str]:
    """The log lines with text, once there is one (counts are written every LOG_EVERY_S)."""
    deadline = time.monotonic() + timeout_s
    while not (lines := [line for line in server.log_text().splitlines() if text in line]):
        assert time.monotonic() < deadline, f"no log line says {text!r}:\n{server.log_text()}"
        time.sleep(0.2)
    return lines


def test_keep_alive_connection_serves_several_requests(server: LiveServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with raw_http.connect(server.port) as sock:
        for _ in range(3):
            sock.sendall(request)
            answer = raw_http.read_answer(sock)
            assert (answer.status, answer.closed) == (200, False)


# --- connections -----------------------------------------------------------------------------------------


def test_ten_thousand_idle_connections_do_not_block_a_new_client(tmp_path: Path, sample: Sample) -> None:
    """`make run`'s shape with its defaults, except a header timeout long enough that only the connection cap and
    the raised descriptor limit can keep the service answering."""
    fd_limit = raw_http.raise_fd_limit()
    count = min(10_000, fd_limit - 200)
    assert count >= 2000, f"this test needs `ulimit -Hn` of at least 2,200, not {fd_limit}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DIGITSUM_HEADER_TIMEOUT_S": "300"}
    with ExitStack() as stack:
        with soft_fd_limit(1024):  # the server starts with 1,024, as in many shells and containers
            server = stack.enter_context(
                live_server(tmp_path / "serve.log", env, ["--workers", "2"], launcher=MAKE_RUN)
            )
        idle = raw_http.open_idle(server.port, count)
        try:
            for _ in range(4):  # both workers' sockets, whichever the kernel picks
                assert_serving(server)
                assert server.post_digit(png_bytes(sample.test.images[0]), 3)[0] == 200
        finally:
            for sock in idle:
                sock.close()


@contextmanager
def soft_fd_limit(soft: int) -> Iterator[None]:
    """This process's soft descriptor limit, for what it starts meanwhile."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("connections")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp), "DIGITSUM_MAX_CONNECTIONS": "16", "DIGITSUM_HEADER_TIMEOUT_S": "300"}
    with live_server(tmp / "serve.log", env, ["--workers", "1"], launcher=MAKE_RUN) as live:
        yield live


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data: open (it never gets any); b"": closed
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


def test_over_the_cap_the_longest_idle_connection_makes_room(small_server: LiveServer) -> None:
    idle = raw_http.open_idle(small_server.port, 40)
    try:
        assert_serving(small_server)  # waits for every accept before it: the server has seen all 40
        assert not still_open(idle[0])
        assert still_open(idle[-1])
        assert re.search(r"closed an idle connection to make room over max_connections", small_server.log_text())
    finally:
        for sock in idle:
            sock.close()


def test_over_the_cap_with_none_idle_a_new_client_gets_503(small_server: LiveServer) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    busy = []
    try:
        for _ in range(16):  # each holds a request open by never sending its body
            sock = raw_http.connect(small_server.port)
            sock.sendall(head)
            assert sock.recv(100).startswith(b"HTTP/1.1 100 ")  # the app is reading its body: not idle
            busy.append(sock)
        answer = raw_http.exchange(small_server.port, raw_http.get())
        assert answer.status == 503
        assert answer.detail == "The server has too many open connections; retry in a few seconds."
    finally:
        for sock in busy:
            sock.close()
