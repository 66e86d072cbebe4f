"""app/http_limits.py without sockets: the limits it derives from settings and the descriptor limit, its answers,
and how it logs many refusals (the behaviour over real connections is in tests/system/test_http_limits.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import resource

import pytest

from app import http_limits
from app.errors import StartupError
from app.http_limits import FD_RESERVE, EventCounts, HeadLimits, response
from app.settings import Settings, get_settings


def test_limits_come_from_the_settings() -> None:
    settings = Settings(max_url_bytes=4096, max_header_bytes=16384, max_headers=50, header_timeout_s=3,
                        max_connections=100)  # fmt: skip
    assert HeadLimits.from_settings(settings, fd_limit=100_000) == HeadLimits(4096, 16384, 50, 3.0, 100)


def test_max_connections_is_lowered_to_what_the_fd_limit_allows(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "digitsum"):
        limits = HeadLimits.from_settings(Settings(max_connections=4096), fd_limit=1024)
    assert limits.max_connections == 1024 - FD_RESERVE
    assert "DIGITSUM_MAX_CONNECTIONS=4096" in caplog.text and "ulimit -n" in caplog.text


@pytest.mark.parametrize("name", ["MAX_URL_BYTES", "MAX_HEADER_BYTES", "MAX_HEADERS", "MAX_CONNECTIONS"])
def test_a_tiny_limit_is_a_startup_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"DIGITSUM_{name}", "1")
    get_settings.cache_clear()
    try:
        with pytest.raises(StartupError, match=f"^Invalid setting DIGITSUM_{name}='1': Input should be greater"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_refusal_is_json_with_a_detail_and_closes() -> None:
    head, _, body = response(431, "The request has more than 100 headers.").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nconnection: close" in head and b"\r\ncontent-type: application/json" in head
    assert json.loads(body) == {"detail": "The request has more than 100 headers."}
    assert b"retry-after: " in response(503, "Busy.")


def test_many_refusals_are_logged_as_one_line_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    events = EventCounts()
    try:
        with caplog.at_level(logging.WARNING, "digitsum"):
            for _ in range(1000):
                events.add("sent nothing within the header timeout", loop)
            events.add("431 head over limit", loop)
            assert len(caplog.records) == 1  # the first, at once
            events.flush(loop)  # what the timer does LOG_EVERY_S later
    finally:
        if events.flush_handle:
            events.flush_handle.cancel()
        loop.close()
    assert len(caplog.records) == 2
    assert "999 x sent nothing within the header timeout" in caplog.records[1].getMessage()
    assert "1 x 431 head over limit" in caplog.records[1].getMessage()


def test_raise_fd_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        assert http_limits.raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
