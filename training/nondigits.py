"""Things that are not a digit, drawn as the draw page draws: what the network should meet with doubt.

Someone trying the page draws a letter, a smiley or a doodle, and a network trained on digits alone answers it
with a confident digit. The non-digit detector (training/detector.py) learns to tell such drawings from digits.
With `--nondigit-share`, the digit network itself is shown them with a flat target (outlier exposure, Hendrycks
et al., 2019: training/train.py); that is off by default: it also tipped a few borderline drawn digits into wrong
answers (benchmarks/results/recipes_nondigits.md).

The drawings come from random geometry, font glyphs and the training split's own pen paths, never from an
evaluation set: a tangle, a zigzag, scattered strokes, two training digits side by side (a "12"), a letter, a
polygon or star, an arrow, crossing lines, a spiral, a wave and a face. benchmarks/drawn_set.py draws the letters,
shapes and scribbles that the evaluation uses with its own hand-placed strokes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.preprocess import to_mnist
from app.upload import NoDigitFound
from training.page import SIZES, in_processes, render
from training.strokes import Stroke, digit_strokes, skeleton, trace

Paths = list[np.ndarray]  # pen paths (k, 2) as (x, y), in any units: `fitted` places them on the canvas
FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"  # the typefaces matplotlib ships: no download
TYPEFACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "cmss10.ttf", "cmr10.ttf", "cmti10.ttf",
)  # fmt: skip
LETTERS = "ACEFHKMNPRUVWXYaefhkmnprtuvwx"  # none that a digit is drawn like: no O I l Z S B G T J b d g q s z


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


@cache
def typeface(name: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / name), 60)


def letter(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """A letter's pen paths: a glyph of a random typeface fitted into 20x20 of 28x28 like an MNIST digit, then
    traced as training digits are (training/strokes.py)."""
    glyph = Image.new("L", (120, 120), 0)
    character, face = LETTERS[int(rng.integers(len(LETTERS)))], TYPEFACES[int(rng.integers(len(TYPEFACES)))]
    ImageDraw.Draw(glyph).text((30, 20), character, fill=255, font=typeface(face))
    glyph = glyph.crop(glyph.getbbox())
    scale = 20 / max(glyph.size)
    glyph = glyph.resize([max(1, round(side * scale)) for side in glyph.size], Image.Resampling.LANCZOS)
    image = Image.new("L", (28, 28), 0)
    image.paste(glyph, ((28 - glyph.width) // 2, (28 - glyph.height) // 2))
    return [path[:, ::-1].astype(np.float64) for path in trace(skeleton(np.asarray(image)))]  # (row, col) -> (x, y)


def polygon(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """A closed polygon of 3 to 5 corners, or a five- or seven-pointed star: not round enough to be a 0."""
    corners = int(rng.integers(3, 8))
    step = 2 if corners > 5 else 1  # 6 and 7 corners: drawn as the star {5/2} or {7/2}
    corners = 5 if corners == 6 else corners
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * step * np.arange(corners + 1) / corners
    radii = 1 + rng.normal(0, 0.08, corners + 1)
    radii[-1] = radii[0]  # closed
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)]


def arrow(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """A shaft and a head, pointing anywhere."""
    angle = rng.uniform(0, 2 * np.pi)
    tip = np.array([np.cos(angle), np.sin(angle)])
    barbs = [tip - 0.45 * np.array([np.cos(angle + turn), np.sin(angle + turn)]) for turn in (0.5, -0.5)]
    return [np.stack([-tip, tip]), np.stack([barbs[0], tip, barbs[1]])]


def crossing(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """2 to 4 straight lines crossing near the middle: a plus, an x, a hash."""
    paths = []
    for _ in range(int(rng.integers(2, 5))):
        angle, middle = rng.uniform(0, np.pi), rng.normal(0, 0.25, 2)
        direction = np.array([np.cos(angle), np.sin(angle)])
        paths.append(np.stack([middle - direction, middle + direction]))
    return paths


def spiral(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """An Archimedean spiral of 1.5 to 3.5 turns, either way round."""
    t = np.linspace(0, 2 * np.pi * rng.uniform(1.5, 3.5), 80)
    return [np.stack([t * np.cos(t), rng.choice([-1, 1]) * t * np.sin(t)], 1)]


def wave(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """A sine wave of 1.5 to 4 periods."""
    x = np.linspace(0, 1, 60)
    return [np.stack([x, 0.25 * np.sin(2 * np.pi * rng.uniform(1.5, 4) * x + rng.uniform(0, 2 * np.pi))], 1)]


def face(rng: np.random.Generator, digits: np.ndarray) -> Paths:
    """A round face with two dots for eyes and a smile or a frown."""
    t, x = np.linspace(0, 2 * np.pi, 40), np.linspace(-0.5, 0.5, 12)
    mouth = np.stack([x, 0.3 + rng.choice([-1, 1]) * 0.25 * (1 - (2 * x) ** 2)], 1)
    eyes = [np.array([[side * 0.35, -0.3], [side * 0.35 + 0.01, -0.3]]) for side in (-1, 1)]
    return [np.stack([np.cos(t), np.sin(t)], 1), *eyes, mouth]


KINDS: dict[str, Callable[[np.random.Generator, np.ndarray], Paths]] = {
    "tangle": tangle, "zigzag": zigzag, "scattered": scattered, "two digits": two_digits, "letter": letter,
    "polygon": polygon, "arrow": arrow, "crossing": crossing, "spiral": spiral, "wave": wave, "face": face,
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
