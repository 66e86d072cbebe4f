"""Training digits as the draw page makes them: pen paths drawn with its round brush, then the service's preprocessing.

A user meets the network through app/static/app.js: strokes of a fixed round brush (7% of the canvas) at any
size and place, uploaded as a PNG that app.preprocess fits MNIST-style. A digit drawn over a quarter of the
canvas has strokes almost a third of its height, and its loops fill; the 28x28 image the network then sees
is unlike MNIST. So each training digit's pen path (its skeleton, traced: training.strokes) is drawn on a
small canvas with that brush, at a random size and place, and `app.preprocess.to_mnist` makes the 28x28
image from it, exactly as it does for the page's upload. benchmarks/drawn_set.py replays the same pen paths
through the real page in Chromium, for evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw

from app.preprocess import to_mnist
from app.upload import NoDigitFound
from training.strokes import Stroke, digit_strokes

T = TypeVar("T")
R = TypeVar("R")

CANVAS = 140  # px; the page's is 560: a quarter the size is the same drawing once it is fitted into 20x20
SUPERSAMPLE = 2  # drawn at 2x and averaged down: anti-aliased edges, as the browser's canvas has
BRUSH = 0.07  # the pen's width as a share of the canvas side: app/static/app.js STROKE
SIZES = (0.18, 0.88)  # the long side of a drawing, as a share of the canvas: small digits are the hard ones


def render(strokes: list[Stroke], canvas: int = CANVAS, brush: float = BRUSH) -> Image.Image:
    """Strokes ((x, y) in [0, 1] of the canvas) -> an "L" image, dark ink on white, as the page draws them."""
    side = canvas * SUPERSAMPLE
    image = Image.new("L", (side, side), 255)
    pen = ImageDraw.Draw(image)
    width = brush * side
    for stroke in strokes:
        points = [(x * side, y * side) for x, y in stroke]
        if len(points) > 1:
            pen.line(points, fill=17, width=round(width), joint="curve")
        for x, y in (points[0], points[-1]):  # round caps; a tap is a dot
            pen.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=17)
    return image.reduce(SUPERSAMPLE)


def drawn(digit: np.ndarray, seed: int, sizes: tuple[float, float] = SIZES) -> np.ndarray:
    """One (28, 28) uint8 drawing of a (28, 28) uint8 digit: its pen path at a random size and place on the page."""
    rng = np.random.default_rng(seed)
    try:
        pixels = to_mnist(render(digit_strokes(digit, rng, sizes)))
    except NoDigitFound:  # a digit with no skeleton: keep it as it is
        return digit
    return np.round(pixels * 255).astype(np.uint8)


def _drawn_many(args: tuple[np.ndarray, list[int]]) -> np.ndarray:
    digits, seeds = args
    return np.stack([drawn(digit, seed) for digit, seed in zip(digits, seeds, strict=True)])


def drawn_versions(images: np.ndarray, versions: int, seed: int, processes: int | None = None) -> np.ndarray:
    """(N, 28, 28) uint8 -> (versions, N, 28, 28) uint8: each digit drawn `versions` times on the page.

    Drawing k of image i uses the seed (seed, k, i) alone, so the result does not depend on `processes`.
    """
    n = len(images)
    seeds = [[(seed * 1_000 + k) * 1_000_003 + i for i in range(n)] for k in range(versions)]
    chunks = [(images[i : i + 250], s[i : i + 250]) for s in seeds for i in range(0, n, 250)]
    return np.concatenate(in_processes(_drawn_many, chunks, processes)).reshape(versions, n, 28, 28)


def in_processes(function: Callable[[T], R], chunks: list[T], processes: int | None = None) -> list[R]:
    """[function(chunk) for chunk in chunks], in `processes` processes (None: one per CPU, at most 8)."""
    processes = processes or min(len(os.sched_getaffinity(0)), 8)
    if processes == 1 or len(chunks) == 1:
        return [function(chunk) for chunk in chunks]
    with ProcessPoolExecutor(processes) as pool:
        return list(pool.map(function, chunks))


def redraw_some(
    images: torch.Tensor, index: torch.Tensor, drawings: torch.Tensor, share: float, generator: torch.Generator
) -> torch.Tensor:
    """Replace a random `share` of the batch with one of its digits' page drawings (uint8 (versions, N, 28, 28))."""
    chosen = torch.rand(len(index), generator=generator) < share
    version = torch.randint(0, len(drawings), (len(index),), generator=generator)
    redrawn = drawings[version, index].to(images.device).unsqueeze(1).float().div_(255)
    return torch.where(chosen.to(images.device).view(-1, 1, 1, 1), redrawn, images)
