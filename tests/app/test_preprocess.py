"""Preprocessing without HTTP: real MNIST digits in every shape users send them, and every way a file can be bad.

The expected array for a dressed-up digit is the MNIST digit itself: after preprocessing, an inverted,
transparent, rotated, huge or tiny copy must look (almost) like the original 28x28 image.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import app.preprocess as P
from app.preprocess import preprocess, to_mnist
from app.upload import (
    ALLOWED_FORMATS,
    ImageError,
    ImageTooLarge,
    NoDigitFound,
    UnsupportedImage,
    decode_pixels,
    open_checked,
)
from tests.support.digits import Sample

MAX_PIXELS = 40_000_000  # well above a 12 MP photo, well below Pillow's own bomb limit (89 M)
FIRST_OF_EACH_DIGIT = [i * 100 for i in range(10)]  # the test split is sorted by digit, 100 each

# Tolerances against the original 28x28 digit. A copy that was upscaled and brought back is resampled
# twice and its edges move by a fraction of a pixel: measured, the copies below score a mean absolute
# difference of 0.01-0.05 and a correlation of 0.91-0.99 (at the best shift of up to one pixel); a wrong
# polarity scores below 0, a digit mis-cropped or mis-scaled around 0.6-0.8.
PASS_THROUGH_MAX_DIFF = 0.02  # grey levels out of 1: a 28x28 MNIST image is (nearly) a fixed point
COPY_MEAN_DIFF = 0.07
COPY_CORRELATION = 0.88


@pytest.fixture(scope="module")
def digits(sample: Sample) -> np.ndarray:
    """uint8 (10, 28, 28): the first test image of each digit 0..9."""
    return sample.test.images[FIRST_OF_EACH_DIGIT]


# --- building uploads --------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def upscaled(digit: np.ndarray, size: int) -> np.ndarray:
    """(28, 28) uint8 -> (size, size) uint8, smoothly resampled like a screenshot of a small drawing."""
    return np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))


def on_paper(digit: np.ndarray) -> np.ndarray:
    """White-on-black uint8 -> dark ink (20) on light paper (235)."""
    return (235 - digit.astype(np.float32) * (215 / 255)).round().astype(np.uint8)


def rgba_canvas(digit: np.ndarray, colour: tuple[int, int, int], hidden: int) -> Image.Image:
    """A drawing app's export: the stroke colour everywhere, the digit in alpha, `hidden` under alpha 0."""
    rgba = np.empty((*digit.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[digit == 0, :3] = hidden
    rgba[..., 3] = digit
    return Image.fromarray(rgba)


def png_header_only_bomb(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of width x height black pixels: zlib squeezes it to a few KB."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- checks ------------------------------------------------------------------------------------


def assert_mnist_like(out: np.ndarray) -> None:
    """The contract: (28, 28) float32 in [0, 1], stroke maximum 1, mass centred, digit within 20x20."""
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() == pytest.approx(1.0)
    ys, xs = np.mgrid[0:28, 0:28]
    centre = ((out * ys).sum() / out.sum(), (out * xs).sum() / out.sum())
    assert centre == pytest.approx((14.0, 14.0), abs=1.0)
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    assert rows[-1] - rows[0] < 20 and cols[-1] - cols[0] < 20


def assert_copy_of(out: np.ndarray, digit: np.ndarray) -> None:
    """out is the MNIST digit, up to a one-pixel shift (resampling can move the centre of mass past .5)."""
    assert_mnist_like(out)
    difference, correlation = best_alignment(out, digit.astype(np.float32) / 255)
    assert difference < COPY_MEAN_DIFF and correlation > COPY_CORRELATION, (difference, correlation)


def best_alignment(out: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference, correlation) of out and expected, at the best shift of up to one pixel."""
    shifted = [np.roll(expected, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    best = max(shifted, key=lambda e: np.corrcoef(out.ravel(), e.ravel())[0, 1])
    return float(np.abs(out - best).mean()), float(np.corrcoef(out.ravel(), best.ravel())[0, 1])


def assert_sentence(exc: pytest.ExceptionInfo[ImageError]) -> None:
    """An HTTP 'detail': one sentence, capitalised, full stop, nothing technical."""
    message = str(exc.value)
    assert message[0].isupper() and message.endswith("."), message
    assert ". " not in message and "\n" not in message and "Errno" not in message, message


# --- MNIST in, MNIST out -----------------------------------------------------------------------


def test_mnist_digit_passes_through_unchanged(digits: np.ndarray) -> None:
    for digit in digits:
        out = preprocess(encode(Image.fromarray(digit)), MAX_PIXELS)
        assert_mnist_like(out)
        np.testing.assert_allclose(out, digit / 255, atol=PASS_THROUGH_MAX_DIFF)


def test_dark_ink_on_light_paper(digits: np.ndarray) -> None:
    for digit in digits:
        assert_copy_of(preprocess(encode(Image.fromarray(on_paper(upscaled(digit, 280)))), MAX_PIXELS), digit)


@pytest.mark.parametrize(("colour", "hidden"), [((10, 10, 60), 0), ((10, 10, 60), 255), ((250, 230, 40), 0)])
def test_transparent_canvas_with_dark_or_light_strokes(
    digits: np.ndarray, colour: tuple[int, int, int], hidden: int
) -> None:
    for digit in digits:
        canvas = rgba_canvas(upscaled(digit, 300), colour, hidden)
        assert_copy_of(preprocess(encode(canvas), MAX_PIXELS), digit)


def test_small_digit_off_centre_on_a_large_canvas(digits: np.ndarray) -> None:
    for i, digit in enumerate(digits):
        canvas = np.zeros((600, 900), dtype=np.uint8)
        top, left = 40 + 37 * i, 700 - 61 * i
        canvas[top : top + 112, left : left + 112] = upscaled(digit, 112)
        assert_copy_of(preprocess(encode(Image.fromarray(canvas)), MAX_PIXELS), digit)


def test_huge_image(digits: np.ndarray) -> None:
    huge = Image.fromarray(digits[3]).resize((3000, 3000), Image.Resampling.BILINEAR)
    assert_copy_of(preprocess(encode(huge, compress_level=1), MAX_PIXELS), digits[3])


def test_tiny_image(digits: np.ndarray) -> None:
    for digit in digits:
        tiny = Image.fromarray(digit).resize((12, 12), Image.Resampling.BOX)
        out = preprocess(encode(tiny), MAX_PIXELS)
        assert_mnist_like(out)  # 12 px hold too little to compare pixel by pixel: check the digit agrees
        assert np.corrcoef(out.ravel(), digit.ravel())[0, 1] > 0.6


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_exif_rotated_jpeg_comes_out_upright(digits: np.ndarray, orientation: int, stored_as: Image.Transpose) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # the camera stored the pixels turned; the tag says how to turn them back
    for digit in digits:
        stored = Image.fromarray(on_paper(upscaled(digit, 240))).convert("RGB").transpose(stored_as)
        jpeg = encode(stored, "JPEG", quality=90, exif=exif.tobytes())
        assert_copy_of(preprocess(jpeg, MAX_PIXELS), digit)


def test_sixteen_bit_png_is_scaled_not_clipped(digits: np.ndarray) -> None:
    for digit in digits:
        wide = on_paper(upscaled(digit, 200)).astype(np.uint16) * 257  # 0..65535
        image = Image.fromarray(wide)
        assert image.mode == "I;16"
        assert_copy_of(preprocess(encode(image), MAX_PIXELS), digit)


def test_palette_png_with_transparent_background(digits: np.ndarray) -> None:
    for digit in digits:
        rgb = np.stack([on_paper(upscaled(digit, 200))] * 3, axis=-1) * np.array([1.0, 0.9, 0.6])
        palette = Image.fromarray(rgb.astype(np.uint8)).quantize(16)
        png = encode(palette, transparency=palette.getpixel((0, 0)))
        assert Image.open(io.BytesIO(png)).mode == "P"
        assert_copy_of(preprocess(png, MAX_PIXELS), digit)


def test_cmyk_jpeg(digits: np.ndarray) -> None:
    for digit in digits:
        blank = Image.new("L", (200, 200), 0)
        black_ink = Image.fromarray(upscaled(digit, 200))  # K on white paper
        jpeg = encode(Image.merge("CMYK", [blank, blank, blank, black_ink]), "JPEG", quality=90)
        assert Image.open(io.BytesIO(jpeg)).mode == "CMYK"
        assert_copy_of(preprocess(jpeg, MAX_PIXELS), digit)


@pytest.mark.parametrize("fmt", sorted(ALLOWED_FORMATS))
def test_every_allowed_format(digits: np.ndarray, fmt: str) -> None:
    image = Image.fromarray(on_paper(upscaled(digits[5], 160)))
    assert_copy_of(preprocess(encode(image, fmt), MAX_PIXELS), digits[5])


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "P", "I", "F", "I;16"])
def test_every_pixel_mode(digits: np.ndarray, mode: str) -> None:
    ink = upscaled(digits[2], 150)
    if mode == "LA":  # black strokes drawn in alpha
        image = Image.merge("LA", [Image.new("L", (150, 150), 0), Image.fromarray(ink)])
    elif mode == "I":
        image = Image.fromarray(ink.astype(np.int32) * 257)  # 16-bit data in a 32-bit container
    elif mode == "F":
        image = Image.fromarray(ink.astype(np.float32) / 255)
    elif mode == "I;16":
        image = Image.fromarray(ink.astype(np.uint16) * 257)
    elif mode == "1":  # bilevel, like NIST's originals (a dithered one is a texture, not a digit)
        image = Image.fromarray(ink).convert("1", dither=Image.Dither.NONE)
    else:
        image = Image.fromarray(ink).convert(mode)
    assert image.mode == mode
    assert_copy_of(to_mnist(image), digits[2])


def test_light_photo_of_blue_ink_under_uneven_light(digits: np.ndarray) -> None:
    ys, xs = np.mgrid[0:480, 0:640] / 640
    light = (1 - 0.3 * xs - 0.15 * ys)[..., None]  # (H, W, 1): darker towards one corner
    ink = np.zeros((480, 640), dtype=np.float32)
    ink[90:370, 230:510] = upscaled(digits[4], 280) / 255
    rgb = np.array([235, 228, 210]) * light * (1 - ink[..., None]) + np.array([30, 40, 110]) * ink[..., None]
    jpeg = encode(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=80)
    assert_copy_of(preprocess(jpeg, MAX_PIXELS), digits[4])


def test_isolated_specks_do_not_move_the_digit(digits: np.ndarray) -> None:
    page = on_paper(upscaled(digits[7], 300))
    page[10:16, 10:16] = 20  # two dots of ink far from the digit
    page[280:284, 285:290] = 20
    assert_copy_of(preprocess(encode(Image.fromarray(page)), MAX_PIXELS), digits[7])


def test_large_jpeg_is_decoded_at_a_reduced_scale() -> None:
    jpeg = encode(Image.new("RGB", (4000, 3000), (240, 240, 240)), "JPEG")
    image = decode_pixels(open_checked(jpeg, MAX_PIXELS))
    assert image.size == (1000, 750)  # DCT-scaled by 1/4, the most that keeps JPEG_DRAFT_SIDE (384) px


# --- what must be refused ----------------------------------------------------------------------


def valid_png() -> bytes:
    """A 128x128 PNG whose pixel data (noise) is many KB, so cutting it in half cuts the pixels."""
    return encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (128, 128), dtype=np.uint8)))


def multi_frame(fmt: str) -> bytes:
    frames = [Image.new("L", (32, 32), shade) for shade in (0, 255)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UnsupportedImage),
        (b"Just some text, not an image at all.\n", UnsupportedImage),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><circle r="9"/></svg>', UnsupportedImage),
        (encode(Image.new("RGB", (32, 32)), "PDF"), UnsupportedImage),
        (encode(Image.new("RGB", (32, 32)), "PPM"), UnsupportedImage),  # decodable, not allowed
        (valid_png()[: len(valid_png()) // 2], UnsupportedImage),  # truncated inside the pixel data
        (encode(Image.new("RGB", (300, 300), (200, 10, 10)), "JPEG")[:400], UnsupportedImage),
        (valid_png()[:29] + b"\x00\x00\x00\x00" + valid_png()[33:], UnsupportedImage),  # IHDR's CRC zeroed
        (multi_frame("GIF"), UnsupportedImage),
        (multi_frame("TIFF"), UnsupportedImage),
        (encode(Image.new("L", (1, 1), 255)), NoDigitFound),
        (encode(Image.new("L", (10000, 1), 255)), NoDigitFound),
        (encode(Image.new("L", (200, 200), 255)), NoDigitFound),
        (encode(Image.new("L", (200, 200), 0)), NoDigitFound),
        (encode(Image.new("RGB", (200, 150), (120, 160, 90)), "JPEG"), NoDigitFound),
        (encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))), NoDigitFound),
        (encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8))), NoDigitFound),
        (encode(Image.new("RGBA", (100, 100), (0, 0, 0, 0))), NoDigitFound),
    ],
    ids=[
        "empty",
        "text",
        "svg",
        "pdf",
        "ppm",
        "truncated-png",
        "truncated-jpeg",
        "png-bad-crc",
        "animated-gif",
        "multi-page-tiff",
        "1x1",
        "10000x1",
        "all-white",
        "all-black",
        "one-colour-jpeg",
        "noise",
        "noise-28x28",
        "fully-transparent",
    ],
)
def test_refused(data: bytes, error: type[ImageError]) -> None:
    with pytest.raises(error) as exc:
        preprocess(data, MAX_PIXELS)
    assert_sentence(exc)


def test_several_frames_says_to_send_one() -> None:
    with pytest.raises(UnsupportedImage, match="single frame"):
        preprocess(multi_frame("GIF"), MAX_PIXELS)


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data gets decoded: size limits must act on the header alone."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.usefixtures("no_decoding")
def test_bomb_above_our_limit_below_pillows() -> None:
    bomb = png_header_only_bomb(6000, 5000)  # 30 MP: under Pillow's 89 MP, over ours
    assert len(bomb) < 20_000
    with pytest.raises(ImageTooLarge, match="4,000,000") as exc:
        preprocess(bomb, max_pixels=4_000_000)
    assert_sentence(exc)


@pytest.mark.usefixtures("no_decoding")
def test_bomb_above_pillows_own_limit() -> None:
    bomb = png_header_only_bomb(20000, 20000)  # 400 MP: Pillow itself raises DecompressionBombError
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge) as exc:
        preprocess(bomb, max_pixels=10**9)
    assert_sentence(exc)


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_raised_as_error_is_too_large() -> None:
    bomb = png_header_only_bomb(10000, 10000)  # 100 MP: Pillow warns (89-179 MP) instead of raising
    with pytest.raises(ImageTooLarge) as exc:
        preprocess(bomb, max_pixels=10**9)
    assert_sentence(exc)


def test_corrupted_files_raise_only_image_errors(digits: np.ndarray) -> None:
    """Random byte damage in every allowed format: a result or an ImageError, never another exception."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(on_paper(upscaled(digits[8], 64)))
    for fmt in sorted(ALLOWED_FORMATS):
        original = np.frombuffer(encode(image, fmt), dtype=np.uint8)
        for _ in range(15):
            damaged = original.copy()
            spots = rng.integers(0, len(damaged), size=int(rng.integers(1, 6)))
            damaged[spots] = rng.integers(0, 256, size=len(spots))
            try:
                out = preprocess(damaged.tobytes(), MAX_PIXELS)
            except ImageError:
                continue
            assert out.shape == (28, 28) and 0 <= out.min() and out.max() <= 1


# --- shortcuts that must change nothing -----------------------------------------------------------


@pytest.mark.parametrize("level", [0.0, 1.0, 0.37])
@pytest.mark.parametrize("height, width", [(28, 28), (5, 9), (64, 64), (65, 40), (280, 280), (512, 341), (97, 512)])
def test_a_flat_border_shortcut_gives_the_background_the_fit_would(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, level: float
) -> None:
    """The shortcut reads only a frame of the image; the thumbnail's ring that the fit uses must see nothing else."""
    rows, cols = math.ceil(2 * height / P.THUMB_SIDE) + 1, math.ceil(2 * width / P.THUMB_SIDE) + 1
    gray = np.random.default_rng(height * width).random((height, width), dtype=np.float32)
    gray[:rows], gray[-rows:], gray[:, :cols], gray[:, -cols:] = level, level, level, level
    fast = P._background(gray)
    monkeypatch.setattr(P, "_flat_border", lambda _: None)
    assert np.array_equal(fast, P._background(gray))


def test_one_pixel_off_the_level_in_the_frame_leaves_the_border_to_the_fit() -> None:
    gray = np.zeros((28, 28), np.float32)
    gray[1, 14] = 0.5  # inside the 2-pixel frame the thumbnail's ring reads at this size
    assert P._flat_border(gray) is None
    gray[1, 14], gray[2, 14] = 0, 0.5  # just inside it
    assert P._flat_border(gray) == 0


def test_preprocessing_a_batch_stage_by_stage_gives_each_image_what_to_mnist_gives_it(sample: Sample) -> None:
    """The batch thread preprocesses its thumbnails together (to_mnist_each): the same arrays, bit for bit, and each
    failing image keeps its own error at its own place."""
    rng = np.random.default_rng(0)
    images: list[Image.Image | Exception] = [Image.fromarray(digit) for digit in sample.test.images[::50]]
    images += [Image.fromarray(255 - sample.test.images[7]), Image.fromarray(upscaled(sample.test.images[9], 300))]
    images += [Image.fromarray((rng.random((40, 30)) * 255).astype(np.uint8)) for _ in range(3)]  # noise
    images.insert(3, Image.new("L", (28, 28)))  # blank: no digit
    images.insert(5, Image.new("L", (2, 50)))  # too thin
    images.insert(8, Image.new("LAB", (28, 28)))  # no grey
    images.insert(1, UnsupportedImage("given"))  # an earlier step's error passes through
    together = P.to_mnist_each(images)
    assert len(together) == len(images)
    for image, result in zip(images, together, strict=True):
        if isinstance(image, Exception):
            assert result is image
            continue
        try:
            alone = to_mnist(image)
        except ImageError as exc:
            assert type(result) is type(exc) and str(result) == str(exc)
        else:
            assert isinstance(result, np.ndarray) and result.dtype == alone.dtype and np.array_equal(result, alone)
    blank, thin, lab = together[4], together[6], together[9]
    assert isinstance(blank, NoDigitFound) and isinstance(thin, NoDigitFound) and isinstance(lab, UnsupportedImage)
    assert sum(isinstance(result, np.ndarray) for result in together) >= 22


def test_otsu_for_a_batch_at_once_gives_each_array_the_threshold_otsu_gives_it(sample: Sample) -> None:
    """to_mnist_each computes the batch's Otsu thresholds together; to_mnist one by one: the same floats."""
    rng = np.random.default_rng(0)
    arrays = [sample.test.images[i].astype(np.float32) / 255 for i in range(0, 1000, 37)]
    arrays += [
        rng.random(shape, dtype=np.float32) ** power for shape, power in [((5, 9), 1), ((80, 61), 3), ((1, 7), 2)]
    ]
    arrays += [np.full((6, 6), 0.25, np.float32), np.eye(12, dtype=np.float32)]  # one level; a few bright pixels
    # a value on a bin's edge, which float32 and float64 arithmetic put in different bins (the threshold follows it)
    arrays += [np.array([0.68696165] * 10 + [0.053668875] * 10, np.float32).reshape(4, 5)]
    assert P._otsu_each(arrays) == [P._otsu(array) for array in arrays]


def test_each_together_stage_gives_every_image_what_its_one_image_form_gives(sample: Sample) -> None:
    """A `Together` stage's batch form against its one-image form, at its place in the pipeline: MNIST digits of
    one size (the batch path), a blank and a faint one (refused in it), inverted, noisy and bigger ones (one by one)."""
    rng = np.random.default_rng(1)
    faint = (sample.test.images[3] * 0.05).astype(np.uint8)
    pixels = [*sample.test.images[::97], np.zeros((28, 28), np.uint8), faint, 255 - sample.test.images[5]]
    pixels += [(rng.random((28, 28)) * 255).astype(np.uint8), upscaled(sample.test.images[8], 90)]
    values: list[object] = [Image.fromarray(p) for p in pixels]
    checked = 0
    for stage in P.STAGES:
        if isinstance(stage, P.Together):
            together = stage.each([v for v in values if not isinstance(v, Exception)])
            alone = [P.attempt(stage.one, v) for v in values if not isinstance(v, Exception)]
            for a, b in zip(together, alone, strict=True):
                if isinstance(b, Exception):
                    assert type(a) is type(b) and str(a) == str(b)
                else:
                    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), stage
            checked += 1
            values = P._together(stage, values)  # type: ignore[arg-type]
        else:
            values = [v if isinstance(v, Exception) else P.attempt(stage, v) for v in values]
    assert checked == 4
    refused = [v for v in values if isinstance(v, NoDigitFound)]
    assert len(refused) >= 2 and sum(isinstance(v, np.ndarray) for v in values) >= 12
