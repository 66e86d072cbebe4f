"""Upload bytes -> the (28, 28) float32 array the network was trained on, made the way MNIST was made.

MNIST (LeCun et al.) fitted each black-and-white NIST digit into a 20x20 box keeping its aspect ratio
(the anti-aliasing gives the grey edges) and placed it in a 28x28 field with its centre of mass at the
centre. Users send photos and scans of dark ink on paper, canvas drawings with transparency, 16-bit or
CMYK files, EXIF-rotated JPEGs, digits of any size anywhere, so before those two MNIST steps every
upload is brought to "bright digit on a black, noise-free background":

    decode (app/upload.py: checked from the header; JPEG at a reduced DCT scale) -> grey in [0, 1], <= 512 px,
    transparency composited -> minus the background (a quadratic through the border) -> polarity
    (digit bright) -> find the digit at 64 px -> crop and zero the noise at <= 80 px -> widen
    ballpoint-thin strokes -> fit into 20x20 -> centre of mass at the centre of 28x28

A 28x28 MNIST image is (nearly) a fixed point: its background is exactly 0, so nothing is subtracted
or zeroed, its digit already fills 20x20, and the integer shift that centres its mass is zero. Only
isolated specks some MNIST images carry are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.upload import NoDigitFound, UnsupportedImage, decode_pixels, open_checked

SIDE = 28  # MNIST field...
BOX = 20  # ...and the box the digit is fitted into
CENTRE = 14.0  # MNIST's centre of mass in pixel-index coordinates (14.0 +- 0.3 on the test split)
WORK_SIDE = 512  # long side for the whole-image steps: a digit keeps ~100s of px, each step stays ~1 ms
COARSE_SIDE = 64  # digit detection: 8x8 averaging at 512 px drowns noise, texture and specks
DIGIT_SIDE = 4 * BOX  # crop resolution for thresholding: 4x the output still resolves every edge
THUMB_SIDE = 64  # the background is fitted to the border of a 64x64 thumbnail: averaged, so its samples are quiet
BORDER_KEPT = 0.6  # the background fit trusts the 60% of the border that fits best (a digit may touch it)
MIN_SIDE = 4  # thinner than this holds no legible digit (1x1, 10000x1)
MIN_CONTRAST = 0.08  # weaker than this (of full scale) is paper texture or compression, not ink
MIN_SNR = 6.0  # the digit must stand this many noise sigmas above the background at COARSE_SIDE
NOISE_SIGMAS = 4.0  # zeroed below this many noise sigmas: clean MNIST background, faint edges kept
MIN_SHARE = 0.05  # a separate blob with less of the ink mass than this is a speck, not part of the digit
OTSU_LEVELS = 64  # grey levels of the threshold search
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation for Gaussian noise
MNIST_STROKE = 2.7  # MNIST's median stroke width in output pixels...
THIN_STROKE = 1.8  # ...and its 5th percentile: a ballpoint photo is far thinner, and unlike anything trained on


def preprocess(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> (28, 28) float32 in [0, 1], white digit on black, centred like MNIST."""
    return to_mnist(decode_pixels(open_checked(data, max_pixels)))


def to_mnist(image: Image.Image) -> np.ndarray:
    """A decoded image -> (28, 28) float32 in [0, 1], white digit on black, centred like MNIST.

    Raises NoDigitFound when nothing stands out from the background, UnsupportedImage for a pixel mode
    that has no grey (LAB, HSV).
    """
    value: Any = image
    for stage in STAGES:
        value = stage.one(value) if isinstance(stage, Together) else stage(value)
    return value  # type: ignore[no-any-return]


def to_mnist_each(images: Sequence[Image.Image | Exception]) -> list[np.ndarray | Exception]:
    """`to_mnist` of every image, or the exception it raised (an exception given stays as it is).

    The same stages, run stage by stage across the images rather than image by image: each stage's numpy
    and Pillow code then runs for every image while it is still in the CPU's caches, and a `Together` stage's
    batch form runs once for all of them, which costs a batch of small images less (benchmarks/results/serve.md
    measures both ways); the results are the same arrays, bit for bit.
    """
    values: list[Any] = list(images)
    for stage in STAGES:
        if isinstance(stage, Together):
            values = _together(stage, values)
        else:
            values = [value if isinstance(value, Exception) else attempt(stage, value) for value in values]
    return values


@dataclass(frozen=True)
class Together:
    """A stage in two forms: `one` for an image, and `each` for the values of all the images still going, which
    returns what `one` gives each, bit for bit, in order (an image's exception in its place): it makes numpy calls
    whose overhead dwarfs their work on a thumbnail once per batch instead of once per image."""

    one: Callable[[Any], Any]
    each: Callable[[list[Any]], list[Any]]


def _together(stage: Together, values: list[Any]) -> list[Any]:
    going = [i for i, value in enumerate(values) if not isinstance(value, Exception)]
    results = None
    if len(going) > 1:
        try:
            results = stage.each([values[i] for i in going])
        except Exception:  # a bug: run them one at a time below, so that it fails only the image it concerns
            results = None
    if results is None:
        results = [attempt(stage.one, values[i]) for i in going]
    values = list(values)
    for i, result in zip(going, results, strict=True):
        values[i] = result
    return values


def attempt(stage: Callable[[Any], Any], value: Any) -> Any:
    """stage(value), or the exception it raised."""
    try:
        return stage(value)
    except Exception as exc:  # the caller tells a client's ImageError from a bug of ours
        return exc


def _check_size(image: Image.Image) -> Image.Image:
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise NoDigitFound(f"No digit found in the image: at {width}x{height} pixels it is too small to hold one.")
    return image


# --- grey levels --------------------------------------------------------------------------------


def _grayscale(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1] with long side <= WORK_SIDE; transparency composited for contrast."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return np.asarray(_shrink(_wide_to_float(image)), dtype=np.float32)
    try:  # shrink before converting: converting a big RGB image costs more than shrinking it
        if image.has_transparency_data:
            if image.mode not in ("RGBA", "LA"):
                image = image.convert("RGBA")  # a palette or colour-key transparency becomes alpha
            return _composite(np.asarray(_shrink(image).convert("LA"), dtype=np.float32) / 255)
        if image.mode not in ("RGB", "L"):
            image = image.convert("L")  # 1, P, CMYK, YCbCr: Pillow resizes none of them by area
        shrunk = _shrink(image)
        return np.asarray(shrunk if shrunk.mode == "L" else shrunk.convert("L"), dtype=np.float32) / 255
    except ValueError:  # a pixel mode Pillow cannot turn into grey (LAB, HSV)
        raise UnsupportedImage(
            f"The image's colour mode {image.mode} is not supported; send a PNG, JPEG, WebP, BMP, GIF or TIFF image."
        ) from None


def _wide_to_float(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float pixels -> an "F" image in [0, 1] (Pillow's convert("L") clips at 255)."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float32))  # (H, W)
    peak = float(values.max())
    # The file does not say its range: I;16 is 16-bit; otherwise the smallest usual range that holds it.
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    else:
        full_scale = next((s for s in (1.0, 255.0, 65535.0) if peak <= s), peak)
    return Image.fromarray(np.clip(values / full_scale, 0, 1).astype(np.float32))


def _shrink(image: Image.Image) -> Image.Image:
    """Area-average down to WORK_SIDE (Pillow premultiplies alpha, so transparent colours do not bleed)."""
    scale = WORK_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap=1: an integer-factor reduce() first (5x faster on 12 MP), still an area average
    return image.resize(size, Image.Resampling.BOX, reducing_gap=1.0)


def _composite(la: np.ndarray) -> np.ndarray:
    """(H, W, 2) luminance+alpha -> (H, W) composited on white or black, whichever the strokes contrast with."""
    lum, alpha = la[..., 0], la[..., 1]
    return lum * alpha + _backdrop(lum, alpha >= 0.5) * (1 - alpha)


def _backdrop(lum: np.ndarray, opaque: np.ndarray) -> float:
    """1.0 (white) or 0.0 (black): the background the opaque strokes (H, W) were drawn on.

    Anti-aliasing blends a stroke's edge towards its background; a palette PNG keeps those blends
    opaque, so edges lighter than the stroke's inside mean a light background. Canvas drawings blend in
    alpha instead (one flat colour, no lean): dark strokes go on white, light ones on black.
    """
    inside = opaque.copy()  # opaque pixels whose four neighbours are opaque too
    inside[1:] &= opaque[:-1]
    inside[:-1] &= opaque[1:]
    inside[:, 1:] &= opaque[:, :-1]
    inside[:, :-1] &= opaque[:, 1:]
    edge = opaque & ~inside
    if not inside.any():
        return 1.0 if not opaque.any() or float(lum[opaque].mean()) < 0.5 else 0.0
    stroke = float(lum[inside].mean())
    lean = float(lum[edge].mean()) - stroke if edge.any() else 0.0
    if abs(lean) > 0.05:
        return 1.0 if lean > 0 else 0.0
    return 1.0 if stroke < 0.5 else 0.0


# --- background and polarity --------------------------------------------------------------------


def _ink(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) grey -> (H, W) signed ink: minus the fitted background, flipped so the digit is positive; and the
    ink area-averaged to <= COARSE_SIDE, where heavy pixel noise cannot outvote it."""
    residual = gray - _background(gray)
    coarse = _resize_float(residual, COARSE_SIDE)  # (h, w)
    if float(coarse.min()) >= 0:  # nothing darker than the background (MNIST): no vote needed
        return residual, coarse
    # only deviations well above the noise vote (and above half the contrast, whatever the noise says)
    floor = min(NOISE_SIGMAS * _pixel_noise(coarse) + 0.02, float(np.abs(coarse).max()) / 2)
    bright = float(np.maximum(coarse - floor, 0).sum())
    dark = float(np.maximum(-coarse - floor, 0).sum())
    return (residual, coarse) if bright >= dark else (-residual, -coarse)


def _ink_each(grays: list[np.ndarray]) -> list[Any]:
    """`_ink` of each grey image, or its exception. Thumbnails of one size whose border is one grey level and
    that have nothing darker than it (MNIST, a clean canvas: most batches) in one pass; the rest one by one."""
    inks: list[Any] = [None] * len(grays)
    for members in _same_shape(grays, COARSE_SIDE):  # no area-averaging at this size: the ink is its own average
        stack = np.stack([grays[i] for i in members])
        residual = stack - stack[:, :1, :1]  # minus the border's one level (where it has one)
        simple = _flat_borders(stack) & (residual.min(axis=(1, 2)) >= 0)
        for i, ink, is_simple in zip(members, residual, simple, strict=True):
            inks[i] = (ink, ink) if is_simple else None
    return [attempt(_ink, gray) if ink is None else ink for ink, gray in zip(inks, grays, strict=True)]


def _same_shape(arrays: Sequence[np.ndarray | None], max_side: int) -> list[list[int]]:
    """Indices of the arrays (None: left out), grouped by shape, of the shapes that two or more share, with
    sides <= max_side."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        if array is not None and max(array.shape) <= max_side:
            groups.setdefault(array.shape, []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def _background(gray: np.ndarray) -> np.ndarray | float:
    """(H, W) smooth background, or its one level when flat: a quadratic through the image's border, fitted by
    trimmed least squares.

    The border is paper (or MNIST's black) except where the digit touches it, and trimming the worst 40%
    of border samples leaves those touches out, so a digit filling the frame does not become background.
    A quadratic is pinned down by the four sides and follows a photo's uneven light: a gradient, a
    brighter centre.
    """
    if (level := _flat_border(gray)) is not None:  # the usual case for MNIST and clean canvases, ~10x cheaper
        return level  # one grey level everywhere
    fine = np.asarray(Image.fromarray(gray).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX))
    values = fine[_RING]  # (252,)
    if values.min() == values.max():  # a flat border (MNIST's black, a clean canvas): every fit below is this constant
        return float(values[0])
    design = _RING_TERMS
    # the simplest surface that fits about as well as the full quadratic: flat paper stays flat even
    # when the digit touches the border, and only real gradients or vignetting earn the extra terms
    full, full_misfit = _trimmed_fit(design, values)
    simpler = (_trimmed_fit(design[:, :terms], values) for terms in (1, 3))  # fitted only until one is good enough
    coef = next((c for c, misfit in simpler if misfit <= full_misfit + 0.01), full)
    height, width = gray.shape
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    c = np.zeros(6, dtype=np.float32)
    c[: len(coef)] = coef  # the terms of _quadratic_terms: 1, y, x, y^2, x^2, yx
    return (c[0] + c[1] * ys + c[3] * ys**2)[:, None] + (c[2] * xs + c[4] * xs**2)[None, :] + c[5] * np.outer(ys, xs)


def _flat_border(gray: np.ndarray) -> float | None:
    """The one grey level of every pixel the thumbnail's ring averages (Pillow's BOX filter reaches less than
    2 * side / THUMB_SIDE + 1 pixels in from each edge), or None when they differ: then the ring is that exact
    level too, and the fit below would return it."""
    rows, cols = _frame(*gray.shape)
    level = gray[0, 0]
    for strip in (gray[:rows], gray[-rows:], gray[:, :cols], gray[:, -cols:]):
        if not (strip == level).all():
            return None
    return float(level)


def _flat_borders(grays: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,): whether each image's frame that `_flat_border` reads is one grey level."""
    rows, cols = _frame(*grays.shape[1:])
    level = grays[:, :1, :1]
    flat = np.ones(len(grays), dtype=bool)
    for strip in (grays[:, :rows], grays[:, -rows:], grays[:, :, :cols], grays[:, :, -cols:]):
        flat &= (strip == level).all(axis=(1, 2))
    return flat


def _frame(height: int, width: int) -> tuple[int, int]:
    """The rows and columns in from each edge that the thumbnail's ring averages."""
    return math.ceil(2 * height / THUMB_SIDE) + 1, math.ceil(2 * width / THUMB_SIDE) + 1


def _ring_and_terms(side: int) -> tuple[np.ndarray, np.ndarray]:
    """The (side, side) mask of the ring one pixel in from the edge (clear of scanner and JPEG borders),
    and the quadratic terms at its pixel centres, in [-1, 1]: (252, 6) for side 64."""
    ring = np.zeros((side, side), dtype=bool)
    ring[[1, -2], 1:-1] = ring[1:-1, [1, -2]] = True
    coords = (np.arange(side) + 0.5) / side * 2 - 1
    return ring, _quadratic_terms(*np.meshgrid(coords, coords, indexing="ij"))[ring]


def _trimmed_fit(design: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares refitted to the best-fitting BORDER_KEPT of the samples: (coefficients, their misfit)."""
    keep = np.ones(len(values), dtype=bool)
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        misfit = np.abs(values - design @ coef)
        keep = misfit <= _quantile(misfit, BORDER_KEPT)
    return coef, _quantile(misfit, BORDER_KEPT)


def _quadratic_terms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The six monomials of a quadratic surface, stacked on the last axis (constant first)."""
    y, x = np.broadcast_arrays(y, x)
    return np.stack([np.ones_like(y), y, x, y * y, x * x, y * x], axis=-1)


def _pixel_noise(image: np.ndarray) -> float:
    """Noise sigma of an (h, w) image from neighbour differences: blind to smooth light and to large ink areas."""
    steps = image[:, 1:] - image[:, :-1] if image.shape[1] > 1 else image[1:] - image[:-1]
    return _noise_sigma(steps) / math.sqrt(2)  # a difference of two noisy pixels has sqrt(2) sigma


def _noise_sigma(values: np.ndarray) -> float:
    """Robust noise level: the median absolute deviation ignores the (minority) ink pixels."""
    if values.size == 0:
        return 0.0
    if (step := values.size // 16384) > 1:
        values = values.ravel()[::step]  # a spread-out sample is plenty for a median
    if 2 * np.count_nonzero(values) < values.size:  # mostly exact zeros (MNIST's background): median and MAD are 0
        return 0.0
    values = values.ravel()
    return MAD_TO_SIGMA * _quantile(np.abs(values - _quantile(values, 0.5)), 0.5)


def _quantile(values: np.ndarray, q: float) -> float:
    """np.quantile(values, q) for 1-D values (linear interpolation), by partial sorting: several times faster."""
    position = q * (values.size - 1)
    low, high = math.floor(position), math.ceil(position)
    parted = np.partition(values, (low, high))
    return float(parted[low] + (parted[high] - parted[low]) * (position - low))


_RING, _RING_TERMS = _ring_and_terms(THUMB_SIDE)


# --- finding the digit --------------------------------------------------------------------------


def _digit_bright(ink_and_coarse: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) signed ink and its (h, w) average -> the same and the average's bright side, if a digit stands out."""
    ink, coarse = ink_and_coarse
    bright = np.maximum(coarse, 0)
    if not _stands_out(float(ink.max()), float(bright.max()), _pixel_noise(coarse)):
        raise _no_digit()
    return ink, coarse, bright


def _digit_bright_each(inks: list[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
    """`_digit_bright` of each, or its exception. Inks that are their own average (thumbnails), of one size and
    mostly flat (MNIST's exact zeros: no noise to measure) in one pass; the rest one by one."""
    brights: list[Any] = [None] * len(inks)
    for group in _same_shape([ink if ink is coarse else None for ink, coarse in inks], COARSE_SIDE):
        stack = np.stack([inks[i][0] for i in group])
        bright = np.maximum(stack, 0)
        steps = stack[:, :, 1:] - stack[:, :, :-1]  # as _pixel_noise: mostly exact zeros mean no noise
        quiet = 2 * np.count_nonzero(steps, axis=(1, 2)) < steps[0].size
        ink_max, bright_max = stack.max(axis=(1, 2)), bright.max(axis=(1, 2))
        for k, i in enumerate(group):
            if quiet[k]:
                stands_out = _stands_out(float(ink_max[k]), float(bright_max[k]), 0.0)
                brights[i] = (stack[k], stack[k], bright[k]) if stands_out else _no_digit()
    return [
        attempt(_digit_bright, ink) if bright is None else bright for bright, ink in zip(brights, inks, strict=True)
    ]


def _stands_out(ink_max: float, bright_max: float, noise: float) -> bool:
    """Contrast is judged at full resolution (averaging dilutes a small digit's thin strokes), noise where it is
    averaged (a digit stands far above it, texture and pure noise do not)."""
    return not (ink_max < MIN_CONTRAST or bright_max <= MIN_SNR * noise)


def _no_digit() -> NoDigitFound:
    return NoDigitFound("No digit found in the image: it is blank or holds only faint noise.")


def _digit_window(parts: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> np.ndarray:
    """(H, W) signed ink, its (h, w) average, the average's bright side and that side's Otsu threshold -> the
    region holding the digit, area-averaged to <= DIGIT_SIDE (signed). Averaging drowns pixel noise and specks."""
    ink, coarse, bright, threshold = parts
    mass = np.where(bright > threshold, bright, 0)
    (y0, y1), (x0, x1) = _span(mass.sum(axis=1)), _span(mass.sum(axis=0))
    # back to full resolution, one coarse pixel (+1) of margin so the anti-aliased edges stay inside
    sy, sx = ink.shape[0] / coarse.shape[0], ink.shape[1] / coarse.shape[1]
    pad_y, pad_x = math.ceil(sy) + 1, math.ceil(sx) + 1
    window = ink[
        max(0, math.floor(y0 * sy) - pad_y) : math.ceil(y1 * sy) + pad_y,
        max(0, math.floor(x0 * sx) - pad_x) : math.ceil(x1 * sx) + pad_x,
    ]
    return _resize_float(window, DIGIT_SIDE)


def _span(profile: np.ndarray) -> tuple[int, int]:
    """[start, stop) of a 1-D ink profile, without outer runs (split by empty gaps) lighter than MIN_SHARE."""
    inked = np.flatnonzero(profile > 0)
    first, last = int(inked[0]), int(inked[-1])
    if last - first + 1 == len(inked):  # one run: the usual case
        return first, last + 1
    gaps = np.flatnonzero(np.diff(inked) > 1)
    starts, stops = inked[np.r_[0, gaps + 1]], inked[np.r_[gaps, len(inked) - 1]] + 1
    masses = np.add.reduceat(profile, starts)  # each run's mass (the gaps it spans are zero)
    kept = np.flatnonzero(masses >= MIN_SHARE * masses.sum())
    return int(starts[kept[0]]), int(stops[kept[-1]])


def _with_threshold(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """The tuple with the Otsu threshold of its last array added."""
    return (*value, _otsu(value[-1]))


def _with_thresholds(values: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`_with_threshold` of each, the thresholds computed in one pass (arrays of one dtype: float32, as the stages
    above make them)."""
    arrays = [value[-1] for value in values]
    thresholds = _otsu_each(arrays) if len({array.dtype for array in arrays}) == 1 else map(_otsu, arrays)
    return [(*value, threshold) for value, threshold in zip(values, thresholds, strict=True)]


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold over OTSU_LEVELS levels from 0 to the maximum (> 0): the level that best splits the
    values in two."""
    top = float(values.max())
    level = (values.ravel() * (OTSU_LEVELS / top)).astype(np.intp)
    counts = np.bincount(level, minlength=OTSU_LEVELS + 1)
    counts[OTSU_LEVELS - 1] += counts[OTSU_LEVELS]  # the maximum (and rounding just above it) in the last level
    p = counts[:OTSU_LEVELS] / level.size
    w0 = np.cumsum(p)  # share of values at or below each level, and their mean times that share:
    mu0 = np.cumsum(p * (_LEVEL_CENTRES * (top / OTSU_LEVELS)))
    spread = w0 * (1 - w0)
    # between-class variance; an empty class scores 0
    between = np.divide((mu0[-1] * w0 - mu0) ** 2, spread, out=np.zeros(OTSU_LEVELS), where=spread > 0)
    return (int(np.argmax(between[:-1])) + 1) * top / OTSU_LEVELS


def _otsu_each(values: list[np.ndarray]) -> list[float]:
    """`_otsu` of each array (all of one dtype), computed for all at once: each array's values binned into a row
    of its own, then `_otsu`'s arithmetic row by row, so each threshold is the same float, bit for bit."""
    sizes = np.array([value.size for value in values])
    flat = np.concatenate([value.ravel() for value in values])
    top = np.maximum.reduceat(flat, np.cumsum(sizes) - sizes).astype(np.float64)
    scale = (OTSU_LEVELS / top).astype(flat.dtype)  # as `_otsu` multiplies: in the arrays' own precision
    row = np.repeat(np.arange(len(values)) * (OTSU_LEVELS + 1), sizes)
    level = (flat * np.repeat(scale, sizes)).astype(np.intp) + row
    counts = np.bincount(level, minlength=len(values) * (OTSU_LEVELS + 1)).reshape(len(values), OTSU_LEVELS + 1)
    counts[:, OTSU_LEVELS - 1] += counts[:, OTSU_LEVELS]
    p = counts[:, :OTSU_LEVELS] / sizes[:, None]
    w0 = np.cumsum(p, axis=1)
    mu0 = np.cumsum(p * (_LEVEL_CENTRES * (top / OTSU_LEVELS)[:, None]), axis=1)
    spread = w0 * (1 - w0)
    between = np.divide((mu0[:, -1:] * w0 - mu0) ** 2, spread, out=np.zeros(spread.shape), where=spread > 0)
    return ((np.argmax(between[:, :-1], axis=1) + 1) * top / OTSU_LEVELS).tolist()  # type: ignore[no-any-return]


_LEVEL_CENTRES = np.arange(OTSU_LEVELS) + 0.5


def _window_bright(window: np.ndarray) -> tuple[float, np.ndarray]:
    """(h, w) signed ink -> its noise sigma and its bright side, if it has one."""
    bright = np.maximum(window, 0)
    if not bright.any():
        raise _no_digit()
    return _noise_sigma(window), bright


def _clean(parts: tuple[float, np.ndarray, float]) -> np.ndarray:
    """A window's noise sigma, bright side and its Otsu threshold -> [0, 1]: below a few noise sigmas -> 0,
    stroke level -> 1, edges in between."""
    sigma, bright, threshold = parts
    low = min(NOISE_SIGMAS * sigma, threshold / 2)  # heavy noise must not eat the strokes
    high = _quantile(bright[bright > threshold], 0.9)  # the stroke core, not its noisiest pixel
    return np.minimum(np.maximum((bright - low) / max(high - low, 1e-6), 0), 1)  # np.clip's checks cost more


def _crop_to_digit(clean: np.ndarray) -> np.ndarray:
    """Tight crop around the ink, ignoring specks that a gap separates from the digit."""
    (y0, y1), (x0, x1) = _span(clean.sum(axis=1)), _span(clean.sum(axis=0))
    return clean[y0:y1, x0:x1]


def _thicken(digit: np.ndarray) -> np.ndarray:
    """(h, w) -> (h + 2r, w + 2r): strokes thinner than nearly all of MNIST's widened to its median."""
    long_side = max(digit.shape)
    stroke = _stroke_width(digit > 0.5)
    if stroke * BOX / long_side >= THIN_STROKE:
        return digit
    # dilating by r widens the stroke by 2r and the digit too: solve (w + 2r) / (L + 2r) = MNIST / BOX
    radius = round((MNIST_STROKE * long_side - stroke * BOX) / (2 * (BOX - MNIST_STROKE)))
    return _dilate(np.pad(digit, radius), radius) if radius > 0 else digit


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: one erosion strips a pixel off each side of every stroke."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return 2 / max(1 - float(inner.sum()) / max(float(mask.sum()), 1.0), 1e-3)


def _dilate(values: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by a (2r+1)^2 square, separable; (h, w) -> (h, w), edges clamp."""
    window = 2 * radius + 1
    for axis in (0, 1):
        padded = np.pad(values, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        values = np.lib.stride_tricks.sliding_window_view(padded, window, axis=axis).max(axis=-1)
    return values


# --- MNIST's normalisation ----------------------------------------------------------------------


def _resize_float(values: np.ndarray, long_side: int) -> np.ndarray:
    """(H, W) float32 -> long side at most long_side (area average: noise shrinks, edges stay)."""
    height, width = values.shape
    scale = long_side / max(height, width)
    if scale >= 1:
        return values
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, Image.Resampling.BOX))


def _fit_box(digit: np.ndarray) -> np.ndarray:
    """(h, w) -> long side exactly BOX, aspect ratio kept (Lanczos: MNIST's anti-aliased edges)."""
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return digit
    resized = np.asarray(Image.fromarray(digit.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    return np.minimum(np.maximum(resized, 0), 1)


_INDEX = np.arange(BOX)  # int64, as np.arange gives: the products and sums are float64


def _centre_of_mass_to_centre(digit: np.ndarray) -> np.ndarray:
    """(h, w) with h, w <= 20 -> (28, 28) float32, shifted by whole pixels to put the mass at the centre."""
    height, width = digit.shape
    total = float(digit.sum())
    cy = float((digit.sum(axis=1) * _INDEX[:height]).sum()) / total
    cx = float((digit.sum(axis=0) * _INDEX[:width]).sum()) / total
    top, left = round(CENTRE - cy), round(CENTRE - cx)  # may reach past the field for a lopsided digit
    field = np.zeros((SIDE + 2 * BOX, SIDE + 2 * BOX), dtype=np.float32)  # margin so any placement fits
    field[BOX + top : BOX + top + height, BOX + left : BOX + left + width] = digit
    out = field[BOX : BOX + SIDE, BOX : BOX + SIDE]
    return out / max(float(out.max()), 1e-6)  # stroke maximum 1, as in MNIST


# Upload -> 28x28, in order: (H, W) signed ink and its (h, w) average -> the average's bright side, and its Otsu
# threshold -> (h, w) window around the digit, <= DIGIT_SIDE -> its bright side, and its threshold -> (h', w') in
# [0, 1], tight around the ink -> long side BOX -> (28, 28)
STAGES: tuple[Callable[[Any], Any] | Together, ...] = (
    _check_size,
    _grayscale,
    Together(_ink, _ink_each),
    Together(_digit_bright, _digit_bright_each),
    Together(_with_threshold, _with_thresholds),
    _digit_window,
    _window_bright,
    Together(_with_threshold, _with_thresholds),
    _clean,
    _crop_to_digit,
    _thicken,
    _fit_box,
    _centre_of_mass_to_centre,
)
