"""Real MNIST digits dressed up as the files users upload: photos, scans, canvas drawings, odd formats.

`user_style_uploads` cycles through VARIANTS, one per image, and is deterministic for a seed. Every
variant starts from the 28x28 digit upscaled (users never send 28x28), then adds what its name says.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Upload = tuple[bytes, int, str]  # (file bytes, true digit, variant name)
Maker = Callable[[np.ndarray, np.random.Generator], bytes]

# exif_transpose's inverse: the stored pixels for each Orientation tag, from the upright image
_STORE_FOR_ORIENTATION = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def user_style_uploads(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[Upload]:
    """uint8 digits (N, 28, 28) + labels (N,) -> N uploads, variants in turn, deterministic for the seed."""
    rng = np.random.default_rng(seed)
    names = list(VARIANTS)
    uploads = []
    for i, (digit, label) in enumerate(zip(images, labels, strict=True)):
        name = names[i % len(names)]
        uploads.append((VARIANTS[name](np.asarray(digit), rng), int(label), name))
    return uploads


# --- building blocks ----------------------------------------------------------------------------


def _ink(digit: np.ndarray, size: int) -> np.ndarray:
    """(28, 28) uint8 -> (size, size) float32 ink coverage in [0, 1], smoothly upscaled."""
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255


def _paint(ink: np.ndarray, paper: np.ndarray | float, colour: np.ndarray | float) -> np.ndarray:
    """Ink of a colour over paper: (H, W) coverage -> (H, W[, 3]) uint8."""
    if np.ndim(colour) or np.ndim(paper) == 3:
        ink = ink[..., None]
    return np.clip(np.rint(paper * (1 - ink) + np.asarray(colour) * ink), 0, 255).astype(np.uint8)


def _place(ink: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(h, w) ink at a random position on an empty (H, W) canvas."""
    out = np.zeros(canvas, dtype=np.float32)
    top = int(rng.integers(0, canvas[0] - ink.shape[0] + 1))
    left = int(rng.integers(0, canvas[1] - ink.shape[1] + 1))
    out[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return out


def _polarity(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey uint8: half white-on-black like MNIST, half dark ink on light paper."""
    if rng.random() < 0.5:
        return _paint(ink, 0.0, 255.0)
    return _paint(ink, float(rng.uniform(200, 255)), float(rng.uniform(0, 60)))


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# --- the variants -------------------------------------------------------------------------------


def inverted(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on light paper, as every scan is."""
    ink = _ink(digit, int(rng.integers(120, 321)))
    return _encode(Image.fromarray(_paint(ink, float(rng.uniform(200, 255)), float(rng.uniform(0, 60)))), "PNG")


def scaled_up(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """MNIST's look, but at the size of a screenshot."""
    return _encode(Image.fromarray(_paint(_ink(digit, int(rng.integers(200, 601))), 0.0, 255.0)), "PNG")


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A small digit anywhere on a big, not square, canvas."""
    canvas = (int(rng.integers(300, 701)), int(rng.integers(300, 701)))
    ink = _place(_ink(digit, int(rng.integers(60, 161))), canvas, rng)
    return _encode(Image.fromarray(_polarity(ink, rng)), "PNG")


def noisy(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Sensor noise: Gaussian, sigma 5-15% of full scale, on every pixel."""
    grey = _polarity(_ink(digit, int(rng.integers(150, 351))), rng).astype(np.float32)
    grey += rng.normal(0, rng.uniform(0.05, 0.15) * 255, grey.shape)
    return _encode(Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)), "PNG")


def jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG artefacts: quality 60-90."""
    grey = _polarity(_ink(digit, int(rng.integers(100, 401))), rng)
    return _encode(Image.fromarray(grey), "JPEG", quality=int(rng.integers(60, 91)))


def transparent(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A canvas drawing: strokes in alpha, dark or light colour, on a transparent background."""
    alpha = np.rint(_ink(digit, int(rng.integers(200, 401))) * 255).astype(np.uint8)
    dark = rng.random() < 0.5
    colour = rng.integers(0, 80, 3) if dark else rng.integers(180, 256, 3)
    rgba = np.empty((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour.astype(np.uint8)
    rgba[alpha == 0, :3] = 255 * int(rng.random() < 0.5)  # what hides under alpha 0 varies by app
    rgba[..., 3] = alpha
    return _encode(Image.fromarray(rgba), "PNG")


def photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo: off-white paper, a lighting gradient, paper grain, dark blue ink, focus blur, JPEG."""
    height, width = int(rng.integers(300, 521)), int(rng.integers(300, 521))
    ink = _place(_ink(digit, int(rng.uniform(0.4, 0.75) * min(height, width))), (height, width), rng)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.35)
    ys, xs = np.ogrid[0:height, 0:width]
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / max(height, width)  # (H, W) in about [-1, 1]
    grain = rng.standard_normal((height, width), dtype=np.float32) * 0.02
    light = (1 - strength * ramp + grain).astype(np.float32)
    paper = np.array([235, 228, 210], dtype=np.float32) * light[..., None]  # (H, W, 3)
    blue_ink = np.array([rng.uniform(15, 45), rng.uniform(25, 55), rng.uniform(80, 130)], dtype=np.float32)
    image = Image.fromarray(_paint(ink, paper, blue_ink)).filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.8)))
    return _encode(image, "JPEG", quality=int(rng.integers(75, 91)))


def palette(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 16-colour palette PNG (coloured ink on coloured paper); half with a transparent background index."""
    ink = _ink(digit, int(rng.integers(100, 301)))
    paper, colour = rng.integers(170, 256, 3).astype(np.float64), rng.integers(0, 90, 3).astype(np.float64)
    image = Image.fromarray(_paint(ink, paper, colour)).quantize(16)
    if rng.random() < 0.5:
        return _encode(image, "PNG", transparency=image.getpixel((0, 0)))
    return _encode(image, "PNG")


def png16(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 16-bit greyscale PNG using the full 0-65535 range (Pillow's convert("L") would clip it)."""
    grey = _polarity(_ink(digit, int(rng.integers(100, 301))), rng).astype(np.uint16) * 257
    return _encode(Image.fromarray(grey), "PNG")


def exif_rotated(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A camera JPEG storing the pixels sideways or upside down, with the Orientation tag to undo it."""
    upright = Image.fromarray(_polarity(_ink(digit, int(rng.integers(200, 401))), rng)).convert("RGB")
    orientation = int(rng.choice(list(_STORE_FOR_ORIENTATION)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(_STORE_FOR_ORIENTATION[orientation])
    return _encode(stored, "JPEG", quality=int(rng.integers(80, 96)), exif=exif.tobytes())


VARIANTS: dict[str, Maker] = {
    "inverted": inverted,
    "scaled_up": scaled_up,
    "off_centre": off_centre,
    "noisy": noisy,
    "jpeg": jpeg,
    "transparent": transparent,
    "photo": photo,
    "palette": palette,
    "png16": png16,
    "exif_rotated": exif_rotated,
}
