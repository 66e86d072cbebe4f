"""Overload, time limits and faults: 503 with Retry-After, 504, a failed forward pass; and nothing leaks.

The model is slowed down, blocked or broken in-process by replacing `model.predict` on the app's own
predictor, so the real batcher, routes and metrics are what is tested. One app with a queue of one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.main import create_app
from app.predictor import Predictor
from app.settings import Settings
from tests.support.digits import Sample
from tests.support.service import SHIPPED_MODEL, png_bytes, wait_ready


@pytest.fixture(scope="module")
def tight() -> Iterator[TestClient]:
    """The service with room for one waiting request."""
    app = create_app(Settings(model_path=SHIPPED_MODEL, device="cpu", max_queue=1, request_timeout_s=5))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def predictor(tight: TestClient) -> Predictor:
    return tight.app.state.predictor  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def image(sample: Sample) -> bytes:
    return png_bytes(sample.test.images[0])


@pytest.fixture
def gate(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The forward pass waits until the test sets the event (or 10 s pass), in the batch thread: a lone request's
    would otherwise run on the event loop itself (app/batching.py, lone_inline), and hold it."""
    opened = threading.Event()
    monkeypatch.setattr(predictor.batcher, "lone_inline", False)
    real = predictor.model.predict

    def blocked(images: np.ndarray, numbers: list[int]):  # type: ignore[no-untyped-def]
        opened.wait(10)
        return real(images, numbers)

    monkeypatch.setattr(predictor.model, "predict", blocked)
    yield opened
    opened.set()  # never leave a batch hanging in the worker thread


def post(client: TestClient, image: bytes, request_id: str = "") -> httpx2.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return client.post(
        "/predict", files={"image": ("d.png", image, "image/png")}, data={"number": "3"}, headers=headers
    )


def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def in_background(pool: ThreadPoolExecutor, client: TestClient, image: bytes) -> Future[httpx2.Response]:
    return pool.submit(post, client, image)


def test_a_full_queue_answers_503_with_retry_after(
    tight: TestClient, predictor: Predictor, gate: threading.Event, image: bytes
) -> None:
    with ThreadPoolExecutor(2) as pool:
        running = in_background(pool, tight, image)
        until(lambda: predictor.batcher.in_flight == 1)  # its batch is stuck in the model
        waiting = in_background(pool, tight, image)
        until(lambda: predictor.batcher.queue_depth == 1)  # the queue of one is full
        refused = post(tight, image)
        assert refused.status_code == 503
        assert refused.json() == {"detail": "The service is at capacity; retry shortly."}
        assert int(refused.headers["Retry-After"]) >= 1
        gate.set()
        assert [running.result().status_code, waiting.result().status_code] == [200, 200]
    assert (predictor.batcher.queue_depth, predictor.batcher.in_flight) == (0, 0)


def test_a_request_that_cannot_be_served_in_time_gets_504_and_frees_its_place(
    tight: TestClient, predictor: Predictor, gate: threading.Event, image: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predictor.settings, "request_timeout_s", 0.3)
    with ThreadPoolExecutor(2) as pool:
        running = in_background(pool, tight, image)  # its batch will be stuck in the model
        until(lambda: predictor.batcher.in_flight == 1)
        waiting = in_background(pool, tight, image)  # waits in the queue behind it
        for response in (running.result(), waiting.result()):
            assert response.status_code == 504
            assert response.json() == {"detail": "The model could not answer in time; retry shortly."}
        assert predictor.batcher.queue_depth == 0  # the queued one gave its place back at once
        gate.set()  # the stuck batch finishes; its answer has no one left to go to
        until(lambda: predictor.batcher.in_flight == 0)
    monkeypatch.undo()
    assert post(tight, image).status_code == 200


def test_a_failed_forward_pass_gets_503_logs_an_error_and_the_service_keeps_serving(
    tight: TestClient,
    predictor: Predictor,
    image: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real, calls = predictor.model.predict, []

    def out_of_memory_once(images: np.ndarray, numbers: list[int]):  # type: ignore[no-untyped-def]
        calls.append(len(numbers))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, numbers)

    monkeypatch.setattr(predictor.model, "predict", out_of_memory_once)
    logging.getLogger("digitsum").addHandler(caplog.handler)  # it does not propagate to the root logger
    failures_before = REGISTRY.get_sample_value("digitsum_batch_failures_total") or 0.0
    try:
        failed = post(tight, image, request_id="oom-victim-1")
    finally:
        logging.getLogger("digitsum").removeHandler(caplog.handler)
    assert failed.status_code == 503
    assert failed.json() == {"detail": "The model failed on this request's batch; retry shortly."}
    assert failed.headers["Retry-After"] == "1"
    assert post(tight, image).status_code == 200  # the next batch is served
    assert REGISTRY.get_sample_value("digitsum_batch_failures_total") == failures_before + 1
    assert f"digitsum_batch_failures_total {failures_before + 1}" in tight.get("/metrics").text
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.getMessage() == "forward pass failed for a batch of 1; its requests get 503"
    assert record.request_id == "oom-victim-1"  # type: ignore[attr-defined]  # the line's [request id]
    assert record.exc_info and "CUDA out of memory" in str(record.exc_info[1])


def test_a_batch_request_beyond_the_queues_room_gets_503_for_those_items_alone(
    tight: TestClient, predictor: Predictor, gate: threading.Event, image: bytes
) -> None:
    files = [("images", (f"{i}.png", image, "image/png")) for i in range(3)]
    with ThreadPoolExecutor(2) as pool:
        running = in_background(pool, tight, image)
        until(lambda: predictor.batcher.in_flight == 1)  # its batch is stuck in the model
        batch = pool.submit(tight.post, "/predict/batch", files=files, data={"numbers": "3"})
        until(lambda: predictor.batcher.queue_depth == 1)  # the first image took the one place
        gate.set()
        results = batch.result().json()["results"]
        assert running.result().status_code == 200
    assert [r["status"] for r in results] == [200, 503, 503]
    assert results[1]["detail"] == "The service is at capacity; retry shortly."
    assert (predictor.batcher.queue_depth, predictor.batcher.in_flight) == (0, 0)
