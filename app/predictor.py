"""The model behind a micro-batcher, with warm-up, self-test and readiness."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.batching import MicroBatcher, Timed
from app.metrics import BatchMetrics
from app.model import Model, Prediction
from app.preprocess import preprocess
from app.settings import Settings

log = logging.getLogger("digitsum")

SELF_TEST_IMAGE = Path(__file__).parent / "assets" / "selftest-7.png"  # a real test-split 7, dark ink on paper
SELF_TEST_NUMBER, SELF_TEST_DIGIT = 2, 7


@dataclass(frozen=True)
class Job:
    image: np.ndarray  # (28, 28) float32 in [0, 1]
    number: int


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
        self.ready = False
        self.status = "loading the model"

    def _run_batch(self, jobs: list[Job]) -> list[Prediction]:
        return self.model.predict(np.stack([job.image for job in jobs]), [job.number for job in jobs])

    async def predict(self, image: np.ndarray, number: int) -> Timed[Prediction]:
        return await self.batcher.submit_timed(Job(image, number), timeout_s=self.settings.request_timeout_s)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        """Answer everything already accepted, then stop the worker."""
        self.ready, self.status = False, "shutting down"
        await self.batcher.stop(drain=True)

    async def warm_up_and_self_test(self) -> None:
        """Run the shapes we will serve once, then demand the right answer on a known image."""
        self.status = "warming up"
        blank = np.zeros((28, 28), np.float32)
        for size in sorted({1, 2, self.settings.max_batch_size}):
            await asyncio.to_thread(self._run_batch, [Job(blank, 0)] * size)
        self.status = "self-test"
        image = await asyncio.to_thread(preprocess, SELF_TEST_IMAGE.read_bytes(), self.settings.max_pixels)
        result = (await self.predict(image, SELF_TEST_NUMBER)).value
        if (result.digit, result.sum) != (SELF_TEST_DIGIT, SELF_TEST_DIGIT + SELF_TEST_NUMBER):
            self.status = f"self-test failed: expected digit {SELF_TEST_DIGIT}, sum 9; got {result.digit}, {result.sum}"
            log.error("not ready: %s", self.status)
            return
        self.ready, self.status = True, "ready"
        log.info("ready: self-test passed on %s", self.model.device.device)
