"""Prometheus metrics (GET /metrics). Module-level: one set per process, as prometheus-client expects."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "digitsum_request_duration_seconds", "HTTP request latency", ["route", "method", "status"], buckets=LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("digitsum_requests_in_flight", "HTTP requests being served")
DECODE_SECONDS = Histogram("digitsum_decode_seconds", "image decoding and preprocessing time", buckets=LATENCY_BUCKETS)
QUEUE_WAIT_SECONDS = Histogram(
    "digitsum_queue_wait_seconds", "time a request waited for its batch", buckets=LATENCY_BUCKETS
)
INFERENCE_SECONDS = Histogram("digitsum_inference_seconds", "forward pass time per batch", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("digitsum_batch_size", "requests per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_FAILURES = Counter("digitsum_batch_failures_total", "forward passes that failed (their requests got 503)")
REJECTED = Counter("digitsum_rejected_total", "requests refused before inference", ["reason"])
MODEL = Info("digitsum_model", "the checkpoint being served and the device it runs on")


class BatchMetrics:
    """The micro-batcher's observer: feeds the batch histograms."""

    def on_batch(self, size: int, inference_s: float) -> None:
        BATCH_SIZE.observe(size)
        INFERENCE_SECONDS.observe(inference_s)

    def on_queue_wait(self, seconds: float) -> None:
        QUEUE_WAIT_SECONDS.observe(seconds)

    def on_failure(self, exc: BaseException) -> None:
        BATCH_FAILURES.inc()
