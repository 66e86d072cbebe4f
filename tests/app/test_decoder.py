"""app/decoder.py: where uploads are decoded, and the limits that bound what one upload can cost.

The limits are set low here (a few hundredths of a CPU-second, 64 MB) so that ordinary big images cross them:
the tests check what happens at a limit, never how long anything takes.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from PIL import Image

from app.decoder import DecodeLimits, Decoder
from app.errors import TimedOut, Unavailable
from app.middleware import CancelOnDisconnect
from app.upload import ImageTooLarge, UnsupportedImage
from tests.support import hostile_inputs as hi
from tests.support.digits import Sample
from tests.support.service import png_bytes

pytestmark = pytest.mark.anyio
MB = 2**20
GENEROUS = DecodeLimits(max_pixels=40_000_000, cpu_s=30.0, memory_bytes=1024 * MB)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def started(limits: DecodeLimits, processes: int = 1, max_queue: int = 8) -> Decoder:
    decoder = Decoder(limits, processes, max_queue)
    await decoder.start()
    return decoder


@pytest.fixture
async def decoder() -> AsyncIterator[Decoder]:
    decoder = await started(GENEROUS)
    yield decoder
    await decoder.stop()


def deadline(seconds: float = 60) -> float:
    return asyncio.get_running_loop().time() + seconds


def photo(digit: np.ndarray, side: int = 300) -> bytes:
    """A digit as a user uploads it: dark ink on paper, bigger than a thumbnail, so it goes to a process."""
    return png_bytes(np.asarray(hi.paper(digit, side)))


def noise_png(side: int) -> bytes:
    """Incompressible pixels: decoding them costs real CPU time (~0.1 s for 2,000 x 2,000)."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


async def test_an_upload_decodes_in_a_process_to_the_same_pixels_as_in_this_one(
    decoder: Decoder, sample: Sample
) -> None:
    from app.preprocess import preprocess

    upload = photo(sample.test.images[3])
    assert np.array_equal(await decoder.decode(upload, deadline()), preprocess(upload, GENEROUS.max_pixels))


async def test_a_decode_over_its_cpu_time_is_413_and_the_next_upload_is_served(sample: Sample) -> None:
    decoder = await started(DecodeLimits(40_000_000, cpu_s=0.02, memory_bytes=1024 * MB))
    try:
        with pytest.raises(ImageTooLarge, match=r"needs more than 0.02 s of CPU to decode"):
            await decoder.decode(noise_png(2500), deadline())
        decoder.limits = GENEROUS  # the replacement process is started with the limits of the moment
        await asyncio.sleep(0)
        thumbnail = await decoder.decode(png_bytes(sample.test.images[0]), deadline())  # checked, for the batch
        (pixels,) = Decoder.finish([thumbnail])
        assert isinstance(pixels, np.ndarray) and pixels.shape == (28, 28)
    finally:
        await decoder.stop()


async def test_an_image_too_big_to_decode_in_the_memory_budget_is_413_before_decoding(sample: Sample) -> None:
    decoder = await started(DecodeLimits(40_000_000, cpu_s=30.0, memory_bytes=64 * MB))
    try:
        # 8,000 x 5,000 16-bit pixels: 80 MB as decoded, and a working copy
        with pytest.raises(ImageTooLarge, match=r"needs about 153 MB to decode, more than the 64 MB an upload may use"):
            await decoder.decode(hi.png_bomb(8000, 5000, bit_depth=16), deadline())
        assert (await decoder.decode(photo(sample.test.images[1]), deadline())).shape == (28, 28)
    finally:
        await decoder.stop()


async def test_a_decode_that_outgrows_its_memory_anyway_is_413(sample: Sample) -> None:
    # 6,000 x 6,000 float pixels: 275 MB by the estimate, under the budget; preprocessing's copies are not
    decoder = await started(DecodeLimits(40_000_000, cpu_s=30.0, memory_bytes=300 * MB))
    try:
        with pytest.raises(ImageTooLarge, match="needs more memory to decode than an upload may use"):
            await decoder.decode(hi.float_tiff(), deadline())
        assert (await decoder.decode(photo(sample.test.images[1]), deadline())).shape == (28, 28)
    finally:
        await decoder.stop()


async def test_past_its_deadline_the_decode_is_504_and_its_process_replaced(decoder: Decoder, sample: Sample) -> None:
    first = await decoder.decode(photo(sample.test.images[0]), deadline())
    busy = await _the_process(decoder)
    with pytest.raises(TimedOut, match="could not be decoded in time"):
        await decoder.decode(noise_png(3000), deadline(0.001))
    assert await _dead_soon(busy)
    again = await decoder.decode(photo(sample.test.images[0]), deadline())
    assert np.array_equal(first, again)


async def test_decode_many_gives_each_upload_its_result_or_its_own_error(sample: Sample) -> None:
    decoder = await started(DecodeLimits(40_000_000, cpu_s=30.0, memory_bytes=64 * MB), processes=2)
    try:
        thumbnail, big = png_bytes(sample.test.images[0]), photo(sample.test.images[1])
        uploads = [thumbnail, b"not an image", big, hi.png_bomb(8000, 5000, bit_depth=16), photo(sample.test.images[2])]
        results = await decoder.decode_many(uploads, deadline())
        kinds = [Image.Image, UnsupportedImage, np.ndarray, ImageTooLarge, np.ndarray]
        assert all(isinstance(result, kind) for result, kind in zip(results, kinds, strict=True)), results
        assert np.array_equal(results[2], await decoder.decode(big, deadline()))  # type: ignore[arg-type]
        late = await decoder.decode_many([thumbnail, noise_png(3000)], deadline(0.001))
        assert isinstance(late[0], Image.Image) and isinstance(
            late[1], TimedOut
        )  # the deadline fails only the slow one
    finally:
        await decoder.stop()


async def test_a_cancelled_decode_kills_its_process(decoder: Decoder, sample: Sample) -> None:
    await decoder.decode(photo(sample.test.images[0]), deadline())
    busy = await _the_process(decoder)
    task = asyncio.ensure_future(decoder.decode(noise_png(4000), deadline()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _dead_soon(busy)
    assert (await decoder.decode(photo(sample.test.images[2]), deadline())).shape == (28, 28)


async def test_waiting_for_a_decoder_obeys_the_queue_bound(sample: Sample) -> None:
    decoder = await started(GENEROUS, processes=1, max_queue=1)
    await _the_process(decoder)  # started
    try:
        uploads = [noise_png(2000)] * 3  # one decoding, one waiting, one over the bound
        results = await asyncio.gather(*(decoder.decode(u, deadline()) for u in uploads), return_exceptions=True)
        refused = [r for r in results if isinstance(r, Unavailable)]
        assert len(refused) == 1 and refused[0].status_code == 503 and "Retry-After" in refused[0].headers
    finally:
        await decoder.stop()


async def test_a_process_that_grew_is_replaced_so_its_memory_goes_back(sample: Sample) -> None:
    decoder = await started(DecodeLimits(40_000_000, cpu_s=30.0, memory_bytes=1024 * MB, recycle_bytes=1))
    try:
        await decoder.decode(photo(sample.test.images[0]), deadline())
        first = await _the_process(decoder)
        await decoder.decode(photo(sample.test.images[1]), deadline())
        second = await _the_process(decoder)
        assert first.process.pid != second.process.pid
    finally:
        await decoder.stop()


async def test_bombs_leave_this_process_no_bigger(decoder: Decoder) -> None:
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    bomb = hi.png_bomb(4000, 4000, bit_depth=16)  # 64 MB as Pillow holds it, in the decoder process
    before = rss()
    for _ in range(8):
        with pytest.raises(Exception):  # noqa: B017 (black: no digit; the point is where the memory went)
            await decoder.decode(bomb, deadline())
    assert rss() - before < 32 * MB


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda digit: hi.many_scans_jpeg(digit, 100), "100 progressive scans, more than the 64 accepted"),
        (lambda digit: hi.rle_bmp(1024, 1024), "RLE-compressed BMP images over 512x512 pixels are not accepted"),
    ],
    ids=["1000-scan-jpeg", "rle-bmp"],
)
async def test_files_whose_decoding_cost_is_out_of_proportion_are_refused_from_the_header(
    decoder: Decoder, sample: Sample, make: Callable[[np.ndarray], bytes], match: str
) -> None:
    with pytest.raises(UnsupportedImage, match=match) as refused:
        await decoder.decode(make(sample.test.images[0]), deadline())
    assert refused.value.status_code == 415


async def test_a_client_that_hangs_up_after_sending_cancels_its_request() -> None:
    cancelled = asyncio.Event()

    async def slow_app(scope: object, receive: Callable[[], Awaitable[dict]], send: object) -> None:
        await receive()  # the whole body
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    messages = iter([{"type": "http.request", "body": b"x", "more_body": False}, {"type": "http.disconnect"}])

    async def receive() -> dict:
        await asyncio.sleep(0.01)
        return next(messages)

    async def send(message: dict) -> None:
        raise AssertionError("nothing is sent to a client that has gone")

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"9000")]}
    await asyncio.wait_for(CancelOnDisconnect(slow_app, min_bytes=5120)(scope, receive, send), 10)
    assert cancelled.is_set()


async def _the_process(decoder: Decoder):  # type: ignore[no-untyped-def]
    """The idle decoder process of a one-process decoder (waits for a replacement to start)."""
    process = await decoder._idle.get()
    decoder._idle.put_nowait(process)
    return process


async def _dead_soon(handle) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(100):
        if not handle.process.is_alive():
            return True
        await asyncio.sleep(0.05)
    return False
