"""The pen paths inside MNIST digits: how a hand would draw them on the draw page.

A digit's skeleton (one pixel wide, on a 2x grid for smoother curves) is where a pen's centre went; traced
into ordered, smoothed paths and placed on the canvas at a random size (`digit_strokes`), it is what a hand
would draw. training/page.py draws it with the page's brush for training; benchmarks/drawn_set.py replays it
through the real page in Chromium for evaluation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.morphology import skeletonize

SCALE = 2  # skeletons on a 56x56 grid: a 28x28 skeleton is too jagged to draw round strokes from
INK_THRESHOLD = 0.4  # share of full ink that counts as stroke when skeletonising the upsampled digit
NEIGHBOURS = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]  # 4-neighbours first
Stroke = list[tuple[float, float]]  # (x, y) in [0, 1] of the canvas


def skeleton(digit: np.ndarray) -> np.ndarray:
    """(28, 28) uint8 -> (56, 56) bool: the digit's centre line."""
    side = 28 * SCALE
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    return skeletonize(big / 255 > INK_THRESHOLD)


def trace(skel: np.ndarray) -> list[np.ndarray]:
    """Skeleton pixels -> pen paths (k, 2) as (row, col): walk from endpoints (then any pixel, for loops)."""
    on = {(int(r), int(c)) for r, c in zip(*np.nonzero(skel), strict=True)}
    todo = set(on)

    def around(p: tuple[int, int], pool: set[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(p[0] + dr, p[1] + dc) for dr, dc in NEIGHBOURS if (p[0] + dr, p[1] + dc) in pool]

    paths = []
    while todo:
        ends = [p for p in todo if len(around(p, on)) <= 1]
        start = min(ends or todo)  # top-most end first, as people start at the top
        drawn = around(start, on - todo)  # a branch starts where the pen already went: join it
        path, here = [*drawn[:1], start], start
        todo.discard(start)
        while nxt := around(here, todo):
            here = nxt[0]
            todo.discard(here)
            path.append(here)
        if len(path) > 8 and max(abs(path[-1][0] - path[0][0]), abs(path[-1][1] - path[0][1])) <= 1:
            path.append(path[0])  # a loop (0, 6, 8, 9): close it
        elif back := around(here, on - set(path)):
            path.append(back[0])  # the walk ended beside earlier ink (the middle of a 3): touch it
        if len(path) >= 3:
            paths.append(smooth(np.array(path, dtype=np.float32)))
    return paths


def smooth(path: np.ndarray, window: int = 5) -> np.ndarray:
    """A moving average takes the pixel staircase out of a traced path; its two ends stay put."""
    if len(path) <= window:
        return path
    kernel = np.ones(window) / window
    padded = np.concatenate([np.repeat(path[:1], window // 2, 0), path, np.repeat(path[-1:], window // 2, 0)])
    out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], 1)
    out[0], out[-1] = path[0], path[-1]
    return out


def digit_strokes(
    digit: np.ndarray, rng: np.random.Generator, sizes: tuple[float, float] = (0.25, 0.85)
) -> list[Stroke]:
    """The digit's pen paths, scaled to a random size (`sizes`: its long side's share of the canvas) and placed at a
    random spot of the canvas."""
    paths = trace(skeleton(digit))
    points = np.concatenate(paths)
    top, left = points.min(0)
    extent = max(float(np.ptp(points[:, 0])), float(np.ptp(points[:, 1])), 1.0)
    size = rng.uniform(*sizes)
    h, w = np.ptp(points[:, 0]) / extent * size, np.ptp(points[:, 1]) / extent * size
    y0, x0 = rng.uniform(0.06, 0.94 - h), rng.uniform(0.06, 0.94 - w)
    return [
        [(x0 + (c - left) / extent * size, y0 + (r - top) / extent * size) for r, c in path[::2].tolist() + [path[-1]]]
        for path in paths
    ]
