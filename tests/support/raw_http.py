"""HTTP/1.1 over a bare socket, for requests no client library will send: endless headers, huge URLs, heads that
never finish, connections that say nothing. Used by tests/system/test_http_limits.py and benchmarks/hostile.py."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Answer:
    status: int | None  # None: the connection closed (or reset) before a status line arrived
    body: bytes
    closed: bool  # the server closed the connection after it (EOF or reset)
    timed_out: bool = False  # nothing (complete) arrived within the socket's timeout

    @property
    def detail(self) -> str:
        return str(json.loads(self.body)["detail"])


def connect(port: int, timeout_s: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """One response; when it says `connection: close`, also until the server closes (closed says whether it did)."""
    data = bytearray()
    while not response_complete(bytes(data)):
        chunk = receive(sock)
        if not chunk:
            return parse(bytes(data), closed=True)
        data += chunk
    if b"\r\nconnection: close\r\n" in data.partition(b"\r\n\r\n")[0].lower() + b"\r\n":
        while receive(sock):
            pass
        return parse(bytes(data), closed=True)
    return parse(bytes(data), closed=False)


def receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def response_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse(data: bytes, closed: bool) -> Answer:
    if not data.startswith(b"HTTP/1."):
        return Answer(None, data, closed)
    head, _, body = data.partition(b"\r\n\r\n")
    return Answer(int(head.split(b" ", 2)[1]), body, closed)


def exchange(port: int, request: bytes) -> Answer:
    with connect(port) as sock:
        sock.sendall(request)
        return read_answer(sock)


def stream(
    port: int, prefix: bytes, chunks: Iterator[bytes], timeout_s: float = 30, suffix: bytes = b""
) -> tuple[Answer, int]:
    """Send prefix, chunks and suffix from a thread while reading the answer here: (the answer, bytes the client managed
    to send before the server answered and stopped reading, or before timeout_s without an answer). A server that
    reads everything first answers late."""
    sent = [0]
    with connect(port, timeout_s) as sock:

        def send() -> None:
            try:
                sock.sendall(prefix)
                sent[0] += len(prefix)
                for chunk in chunks:
                    sock.sendall(chunk)
                    sent[0] += len(chunk)
                sock.sendall(suffix)  # the end of the request, for a server that read it all
                sent[0] += len(suffix)
            except OSError:  # the server closed: what we wanted to see
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            answer = read_answer(sock)
        except TimeoutError:
            answer = Answer(None, b"", closed=False, timed_out=True)
        sent_when_answered = sent[0]
        with contextlib.suppress(OSError):  # already reset by the server
            sock.shutdown(socket.SHUT_RDWR)  # unblocks the sender
        sender.join(timeout=30)
    return answer, sent_when_answered


def repeat(chunk: bytes, total_bytes: int) -> Iterator[bytes]:
    for _ in range(total_bytes // len(chunk)):
        yield chunk


def get(path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def raise_fd_limit() -> int:
    """This process's soft RLIMIT_NOFILE raised to the hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_idle(port: int, count: int) -> list[socket.socket]:
    """count connections that send nothing (the connects complete in the kernel's backlog even before accept)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
