"""The launcher's bookkeeping without processes: how long it waits before replacing workers that keep dying."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app import supervisor
from app.supervisor import BACKOFF_S, HEALTHY_AFTER_S, Supervisor, Worker


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.exitcode = pid, -9


def died(launcher: Supervisor, pid: int, ready_for_s: float | None) -> float:
    """A worker dies; how long until its replacement starts."""
    now = supervisor.time.monotonic()
    ready_at = None if ready_for_s is None else now - ready_for_s
    worker = Worker(FakeProcess(pid), None, None, ready_at=ready_at)  # type: ignore[arg-type]
    launcher.replace_later(worker, "was killed by SIGKILL")
    return launcher.retry_at.pop() - now


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: 1_000.0)  # frozen: delays are exact
    nothing: Any = None
    return Supervisor(nothing, nothing, 2, "http://127.0.0.1:8000", 20.0)


def test_workers_that_keep_dying_are_replaced_after_1_2_4_up_to_30_seconds(launcher: Supervisor) -> None:
    delays = [died(launcher, pid, ready_for_s=1.0) for pid in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert BACKOFF_S[-1] == 30


def test_a_worker_that_served_a_while_starts_the_backoff_over(launcher: Supervisor) -> None:
    assert [died(launcher, pid, ready_for_s=None) for pid in range(3)] == [1, 2, 4]
    assert died(launcher, 3, ready_for_s=HEALTHY_AFTER_S + 1) == 1


def test_each_death_is_one_error_line_with_its_status_and_the_delay(
    launcher: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "digitsum"):
        died(launcher, 41, ready_for_s=5.0)
        died(launcher, 42, ready_for_s=None)
    assert caplog.messages == [
        "worker 41 was killed by SIGKILL after it was ready; starting a replacement in 1 s",
        "worker 42 was killed by SIGKILL before it was ready: it gave no reason; see its lines above; "
        "starting a replacement in 2 s",
    ]
