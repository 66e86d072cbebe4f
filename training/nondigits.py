"""Things that are not a digit, drawn as the draw page draws: what the network should meet with doubt.

Someone trying the page draws a letter, a smiley or a doodle, and a network trained on digits alone answers it
with a confident digit. With `--nondigit-share`, training shows it such drawings with a flat target (outlier
exposure, Hendrycks et al., 2019: training/train.py), so its confidence on them drops below the service's
low-confidence threshold. It is off by default: it also tipped a few borderline drawn digits into wrong answers
(benchmarks/results/recipes_nondigits.md).

The drawings come from random geometry and from the training split's own pen paths, never from an evaluation
set: a tangle, a zigzag, scattered strokes, and two training digits side by side (a "12").
benchmarks/drawn_set.py draws the letters, shapes and scribbles that the evaluation uses with its own code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.preprocess import to_mnist
from app.upload import NoDigitFound
from training.page import SIZES, in_processes, render
from training.strokes import Stroke, digit_strokes

Paths = list[np.ndarray]  # pen paths (k, 2) as (x, y), in any units: `fitted` places them on the canvas


def tangle(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """A tangle: a random walk whose heading turns a little at each step, long enough to cross itself again and
    again (a digit crosses itself at most twice, an 8's middle)."""
    steps = int(rng.integers(80, 160))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.6, steps))
    return [np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1), 0)]


def zigzag(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """One stroke through 6 to 10 random corners (a digit has at most four: a 4)."""
    return [rng.uniform(0, 1, (int(rng.integers(6, 11)), 2))]


def scattered(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """3 to 6 straight strokes at random places and angles."""
    return [rng.uniform(0, 1, (2, 2)) for _ in range(int(rng.integers(3, 7)))]


def two_digits(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """The pen paths of two training digits side by side, apart, in one box (a "12"). Not stacked or overlapping:
    a 0 over a 0 is an 8, a 0 over a 1 a 9, a 1 across a 7 a 7."""
    first, second = (
        [np.array(s) for s in digit_strokes(digits[int(i)], rng, sizes=(0.5, 0.5))]
        for i in rng.integers(len(digits), size=2)
    )
    gap = np.concatenate(first)[:, 0].max() - np.concatenate(second)[:, 0].min() + rng.uniform(0.03, 0.15)
    return first + [path + (gap, 0.0) for path in second]


KINDS: dict[str, Callable[[np.random.Generator, np.ndarray], Paths]] = {
    "tangle": tangle, "zigzag": zigzag, "scattered": scattered, "two digits": two_digits,
}  # fmt: skip


def nondigit_strokes(rng: np.random.Generator, digits: np.ndarray) -> list[Stroke]:
    """One drawing of a random kind (`digits`: training images (N, 28, 28), for "two digits"), on the canvas."""
    kind = list(KINDS.values())[int(rng.integers(len(KINDS)))]
    return fitted(kind(rng, digits), rng)


def fitted(paths: Paths, rng: np.random.Generator) -> list[Stroke]:
    """Paths stretched into a random box of the canvas, as the page's strokes."""
    points = np.concatenate(paths)
    low, extent = points.min(0), np.maximum(np.ptp(points, 0), 1e-6)
    size = rng.uniform(*SIZES) * np.array([rng.uniform(0.6, 1.0), 1.0])[rng.permutation(2)]  # (width, height)
    corner = np.array([rng.uniform(0.06, 0.94 - size[0]), rng.uniform(0.06, 0.94 - size[1])])
    return [[(float(x), float(y)) for x, y in corner + (path - low) / extent * size] for path in paths]


def _drawn_many(args: tuple[np.ndarray, list[int]]) -> np.ndarray:
    digits, seeds = args
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        while True:  # a drawing too faint to find ink in (a tiny zigzag) is drawn again
            try:
                out.append(np.round(to_mnist(render(nondigit_strokes(rng, digits))) * 255).astype(np.uint8))
                break
            except NoDigitFound:
                continue
    return np.stack(out)


def nondigit_drawings(count: int, digits: np.ndarray, seed: int, processes: int | None = None) -> np.ndarray:
    """(count, 28, 28) uint8: non-digits drawn on the page and preprocessed as its upload is; drawing i uses the
    seed (seed, i) alone, so the result does not depend on `processes`. `digits`: training images (N, 28, 28)."""
    seeds = [seed * 1_000_003 + 500_000_000 + i for i in range(count)]  # apart from training/page.py's seeds
    return np.concatenate(
        in_processes(_drawn_many, [(digits, seeds[i : i + 250]) for i in range(0, count, 250)], processes)
    )
