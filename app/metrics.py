"""Prometheus metrics (GET /metrics). Module-level: one set per process, as prometheus-client expects.

With several worker processes (`make run`: `python -m app.serve`), each process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (the launcher makes a temporary one when it is not set) and any worker's /metrics adds
them all up. Labels are bounded: routes are templates, unknown methods are "other" (app/middleware.py).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "digitsum_request_duration_seconds", "HTTP request latency", ["route", "method", "status"], buckets=LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("digitsum_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum")
DECODE_SECONDS = Histogram(  # a thumbnail's own decoding is in its batch's inference time
    "digitsum_decode_seconds", "time to decode an upload before its batch", buckets=LATENCY_BUCKETS
)
QUEUE_WAIT_SECONDS = Histogram(
    "digitsum_queue_wait_seconds", "time a request waited for its batch", buckets=LATENCY_BUCKETS
)
INFERENCE_SECONDS = Histogram("digitsum_inference_seconds", "forward pass time per batch", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("digitsum_batch_size", "requests per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_FAILURES = Counter("digitsum_batch_failures_total", "forward passes that failed (their requests got 503)")
REJECTED = Counter("digitsum_rejected_total", "requests refused before inference", ["reason"])
MODEL_INFO = Gauge(  # an info-style gauge (value 1): prometheus-client's Info has no multiprocess mode
    "digitsum_model_info",
    "the checkpoint being served and the device it runs on",
    ["sha256", "device", "file"],
    multiprocess_mode="max",
)


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of every worker process in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def forget_this_process() -> None:
    """At shutdown in multiprocess mode: drop this worker's live gauges from the sums."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(os.getpid())


class BatchMetrics:
    """The micro-batcher's observer: feeds the batch histograms."""

    def on_batch(self, size: int, inference_s: float) -> None:
        BATCH_SIZE.observe(size)
        INFERENCE_SECONDS.observe(inference_s)

    def on_queue_wait(self, seconds: float) -> None:
        QUEUE_WAIT_SECONDS.observe(seconds)

    def on_failure(self, exc: BaseException) -> None:
        BATCH_FAILURES.inc()
