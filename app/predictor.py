"""The model behind a decoder and a micro-batcher, with warm-up, self-test and readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.batching import BatchError, BatchTimeout, MicroBatcher, QueueFull, TimedResult
from app.decoder import DecodeLimits, Decoder, undecodable
from app.errors import ServiceError, TimedOut, Unavailable
from app.metrics import BatchMetrics
from app.middleware import request_id
from app.model import Model, Prediction
from app.settings import Settings
from app.upload import ImageError

log = logging.getLogger("digitsum")

ASSETS = Path(__file__).parent / "assets"
# (file, number to add, digit it shows): a photo-like 7 from the test split and three training-split digits
# on paper, so a model that always answers the same digit, or a wrong sum, never becomes ready.
SELF_TEST = [("selftest-7.png", 2, 7), ("selftest-0.png", 9, 0), ("selftest-3.png", 4, 3), ("selftest-8.png", 1, 8)]


@dataclass(frozen=True)
class Job:
    image: np.ndarray | Image.Image  # (28, 28) float32 in [0, 1], or a checked thumbnail (Decoder.decode)
    number: int
    request_id: str = "-"  # a batch mixes requests: its log lines name them all


@dataclass(frozen=True)
class Answer:
    prediction: Prediction
    pixels: np.ndarray  # (28, 28): what the network saw


def service_error(exc: BatchError) -> ServiceError:
    """What the client hears when the batcher could not answer its item."""
    if isinstance(exc, QueueFull):
        return Unavailable("The service is at capacity; retry shortly.", {"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, BatchTimeout):
        return TimedOut("The model could not answer in time; retry shortly.")
    return Unavailable("The model failed on this request's batch; retry shortly.")  # BatchFailed, BatcherClosed


def answer_or_error(result: TimedResult[Answer | ImageError] | BatchError) -> Answer | ServiceError:
    return service_error(result) if isinstance(result, BatchError) else result.value


class Predictor:
    """Serves `decode` and `predict(image, number)`, the latter batched across concurrent callers."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model, self.settings = model, settings
        self.batcher: MicroBatcher[Job, Answer | ImageError] = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            observer=BatchMetrics(),
            lone_inline=model.device.type == "cpu",  # a GPU's batches keep to the one thread that owns it
        )
        limits = DecodeLimits(settings.max_pixels, settings.decode_cpu_s, settings.decode_memory_mb * 2**20)
        self.decoder = Decoder(limits, settings.decode_processes, settings.max_queue)
        self.ready = False
        self.status = "loading the model"

    def deadline(self) -> float:
        """When a request arriving now must be answered by (event loop clock): decoding and the model share it."""
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable(f"The model is not ready yet ({self.status}); retry shortly.")

    async def decode(self, data: bytes, deadline: float) -> np.ndarray | Image.Image:
        """Upload bytes -> (28, 28) float32 in [0, 1], or a checked thumbnail that its batch finishes
        (app/decoder.py says where and within which limits)."""
        return await self.decoder.decode(data, deadline)

    async def predict(self, image: np.ndarray | Image.Image, number: int, deadline: float) -> TimedResult[Answer]:
        """What `decode` returned and the number -> the answer; a thumbnail's image error is raised here."""
        try:
            timed = await self.batcher.submit_timed(Job(image, number, request_id.get()), self._time_left(deadline))
        except BatchError as exc:
            raise service_error(exc) from None
        if isinstance(timed.value, ImageError):
            raise timed.value
        return TimedResult(timed.value, timed.queue_s, timed.inference_s, timed.batch_size)

    async def decode_many(
        self, uploads: Sequence[bytes], deadline: float
    ) -> list[np.ndarray | Image.Image | ServiceError]:
        """`decode` for each upload of a batch request: each its result or its own error."""
        return await self.decoder.decode_many(uploads, deadline)

    async def predict_many(
        self, images: Sequence[np.ndarray | Image.Image | ServiceError], numbers: Sequence[int], deadline: float
    ) -> list[Answer | ServiceError]:
        """`predict` for each item of a batch request, all queued at once: an item that `decode_many` failed keeps
        its error, every other gets its answer or its own error."""
        rid = request_id.get()
        jobs = [
            Job(image, number, rid)
            for image, number in zip(images, numbers, strict=True)
            if not isinstance(image, ServiceError)
        ]
        try:
            results = iter(await self.batcher.submit_many(jobs, self._time_left(deadline)))
        except BatchError as exc:  # not accepting (shutting down): the whole request
            raise service_error(exc) from None
        return [image if isinstance(image, ServiceError) else answer_or_error(next(results)) for image in images]

    @staticmethod
    def _time_left(deadline: float) -> float:
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def _run_batch(self, jobs: list[Job]) -> list[Answer | ImageError]:
        """Finish the batch's thumbnails, then one forward pass over every image that has pixels."""
        images = [
            self._client_error(job, result) if isinstance(result, Exception) else result
            for job, result in zip(jobs, Decoder.finish([job.image for job in jobs]), strict=True)
        ]
        ready = [(job, pixels) for job, pixels in zip(jobs, images, strict=True) if isinstance(pixels, np.ndarray)]
        predictions = iter(self._forward(ready) if ready else [])
        return [pixels if isinstance(pixels, ImageError) else Answer(next(predictions), pixels) for pixels in images]

    @staticmethod
    def _client_error(job: Job, exc: Exception) -> ImageError:
        """A thumbnail that failed: e.g. no digit in it, that request's 4xx (the others get their answers); any
        other exception is a bug, not the client's fault: logged, and this request alone fails."""
        if isinstance(exc, ImageError):
            return exc
        log.error("preprocessing a thumbnail failed", exc_info=exc, extra={"request_id": job.request_id})
        return undecodable()

    def _forward(self, ready: list[tuple[Job, np.ndarray]]) -> list[Prediction]:
        try:
            return self.model.predict(np.stack([pixels for _, pixels in ready]), [job.number for job, _ in ready])
        except Exception:  # e.g. CUDA out of memory: these requests get 503, the service keeps serving
            # This thread serves no single request, so the line names them all (warm-up jobs are all "-").
            ids = ",".join(dict.fromkeys(job.request_id for job, _ in ready))
            log.exception(
                "forward pass failed for a batch of %d; its requests get 503", len(ready), extra={"request_id": ids}
            )
            raise

    async def start(self) -> None:
        await self.decoder.start()
        await self.batcher.start()

    async def stop(self) -> None:
        """Answer everything already accepted, then stop the workers."""
        self.ready, self.status = False, "shutting down"
        await self.batcher.stop(drain=True)
        await self.decoder.stop()

    async def warm_up_and_self_test(self) -> None:
        """Run the shapes we will serve once, then demand the right answers on known images."""
        try:
            failure = await self._warm_up_and_self_test()
        except Exception as exc:  # e.g. out of memory at the largest batch: stay not-ready, and say why
            self.status = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("not ready: %s", self.status)
            return
        if failure:
            self.status = f"self-test failed: {failure}"
            log.error("not ready: %s", self.status)
            return
        self.ready, self.status = True, "ready"
        log.info("ready: self-test passed on %s", self.model.device.type)

    async def _warm_up_and_self_test(self) -> str | None:
        """None if every self-test image gives its digit and sum, else what went wrong."""
        self.status = "warming up"
        blank = np.zeros((28, 28), np.float32)
        for size in sorted({1, 2, self.settings.max_batch_size}):
            await asyncio.to_thread(self._run_batch, [Job(blank, 0)] * size)
        self.status = "self-test"
        for name, number, digit in SELF_TEST:
            deadline = asyncio.get_running_loop().time() + 60  # the first upload waits for a decoder process to start
            image = await self.decode((ASSETS / name).read_bytes(), deadline)
            got = (await self.predict(image, number, deadline)).value.prediction
            if (got.digit, got.sum) != (digit, digit + number):
                return f"{name}: expected digit {digit}, sum {digit + number}; got {got.digit}, {got.sum}"
        return None
