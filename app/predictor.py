"""The model behind a micro-batcher, with warm-up, self-test and readiness."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from app.batching import MicroBatcher, Timed
from app.metrics import BatchMetrics
from app.middleware import request_id
from app.model import Model, Prediction
from app.preprocess import open_upload, preprocess, preprocess_opened
from app.settings import Settings

log = logging.getLogger("digitsum")

SELF_TEST_IMAGE = Path(__file__).parent / "assets" / "selftest-7.png"  # a real test-split 7, dark ink on paper
SELF_TEST_NUMBER, SELF_TEST_DIGIT = 2, 7
SELF_TEST_MAX_PIXELS = 1_000_000  # the image is 128x112
# Thumbnails are preprocessed on the event loop: an MNIST-sized image takes ~0.4 ms, less than handing it to a
# thread and back costs in CPU and GIL traffic (benchmarks/results/serve.md). The byte cap bounds what a crafted
# small file can cost there (a PNG of zTXt bombs: ~4 ms); anything bigger goes to a decoding thread.
INLINE_MAX_PIXELS = 64 * 64
INLINE_MAX_BYTES = 4096


@dataclass(frozen=True)
class Job:
    image: np.ndarray  # (28, 28) float32 in [0, 1]
    number: int
    request_id: str = "-"  # a batch mixes requests: its log lines name them all


class Predictor:
    """Serves `predict(image, number)` through one batched forward pass for concurrent callers."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model, self.settings = model, settings
        self.batcher: MicroBatcher[Job, Prediction] = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            observer=BatchMetrics(),
        )
        # Few decoding threads, not anyio's default 40: they share one GIL, and 40 of them only fight over it and
        # serve requests out of order (when every upload went through them: p99 200-242 ms with 2, 277-326 with 40).
        self.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)
        self.ready = False
        self.status = "loading the model"

    def _run_batch(self, jobs: list[Job]) -> list[Prediction]:
        try:
            return self.model.predict(np.stack([job.image for job in jobs]), [job.number for job in jobs])
        except Exception:  # e.g. CUDA out of memory: these requests get 503, the service keeps serving
            # This thread serves no single request, so the line names them all (warm-up jobs are all "-").
            ids = ",".join(dict.fromkeys(job.request_id for job in jobs))
            log.exception(
                "forward pass failed for a batch of %d; its requests get 503", len(jobs), extra={"request_id": ids}
            )
            raise

    async def decode(self, data: bytes) -> np.ndarray:
        """Upload bytes -> (28, 28) float32 in [0, 1]; anything bigger than a thumbnail in a worker thread."""
        if len(data) > INLINE_MAX_BYTES:
            return await anyio.to_thread.run_sync(
                preprocess, data, self.settings.max_pixels, limiter=self.decode_limiter
            )
        image = open_upload(data, self.settings.max_pixels)  # the header only: format and size, no pixels yet
        if image.width * image.height > INLINE_MAX_PIXELS:
            return await anyio.to_thread.run_sync(preprocess_opened, image, limiter=self.decode_limiter)
        return preprocess_opened(image)

    async def predict(self, image: np.ndarray, number: int) -> Timed[Prediction]:
        job = Job(image, number, request_id.get())
        return await self.batcher.submit_timed(job, timeout_s=self.settings.request_timeout_s)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        """Answer everything already accepted, then stop the worker."""
        self.ready, self.status = False, "shutting down"
        await self.batcher.stop(drain=True)

    async def warm_up_and_self_test(self) -> None:
        """Run the shapes we will serve once, then demand the right answer on a known image."""
        try:
            result = await self._warm_up_and_predict_self_test()
        except Exception as exc:  # e.g. out of memory at the largest batch: stay not-ready, and say why
            self.status = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("not ready: %s", self.status)
            return
        if (result.digit, result.sum) != (SELF_TEST_DIGIT, SELF_TEST_DIGIT + SELF_TEST_NUMBER):
            self.status = f"self-test failed: expected digit {SELF_TEST_DIGIT}, sum 9; got {result.digit}, {result.sum}"
            log.error("not ready: %s", self.status)
            return
        self.ready, self.status = True, "ready"
        log.info("ready: self-test passed on %s", self.model.device.device)

    async def _warm_up_and_predict_self_test(self) -> Prediction:
        self.status = "warming up"
        blank = np.zeros((28, 28), np.float32)
        for size in sorted({1, 2, self.settings.max_batch_size}):
            await asyncio.to_thread(self._run_batch, [Job(blank, 0)] * size)
        self.status = "self-test"
        # The pixel cap is for clients' uploads, so a small DIGITSUM_MAX_PIXELS must not fail our own image.
        image = await asyncio.to_thread(preprocess, SELF_TEST_IMAGE.read_bytes(), SELF_TEST_MAX_PIXELS)
        return (await self.predict(image, SELF_TEST_NUMBER)).value
