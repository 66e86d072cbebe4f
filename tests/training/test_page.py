"""Training digits drawn as the draw page draws them (training/page.py); the page itself checks the renderer in
tests/system/test_browser.py::test_training_draws_strokes_as_this_page_does."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import DigitData
from training.page import drawn, drawn_versions, render
from training.strokes import digit_strokes


@pytest.fixture(scope="module")
def digits(sample: DigitData) -> np.ndarray:
    return sample.train.images[::400].numpy()  # one of each digit


def test_drawings_are_fitted_like_mnist(digits: np.ndarray) -> None:
    for digit in digits:
        image = drawn(digit, seed=1).astype(np.float32) / 255
        rows, cols = np.nonzero(image > 0.1)
        assert 18 <= max(np.ptp(rows), np.ptp(cols)) + 1 <= 22  # the long side fitted into 20 of 28 pixels
        grid = np.arange(28)
        centre = (image.sum(1) @ grid / image.sum(), image.sum(0) @ grid / image.sum())
        assert all(abs(c - 14) <= 1 for c in centre)  # the centre of mass at the centre


def test_the_fixed_brush_makes_small_drawings_thick(digits: np.ndarray) -> None:
    """The page's pen is 7% of the canvas: a digit drawn over a fifth of it has strokes a third of its height."""
    small = [drawn(digit, seed=1, sizes=(0.2, 0.2)) for digit in digits]
    big = [drawn(digit, seed=1, sizes=(0.85, 0.85)) for digit in digits]
    ink = [sum(int((image > 128).sum()) for image in images) for images in (small, big)]
    assert ink[0] > 1.3 * ink[1]  # measured: 1.5x


def test_strokes_land_where_they_are_drawn() -> None:
    image = np.asarray(render([[(0.2, 0.5), (0.8, 0.5)]], canvas=100))  # a horizontal bar across the middle
    dark = image < 128
    rows, cols = np.nonzero(dark)
    assert abs(rows.mean() - 50) < 1 and abs(cols.mean() - 50) < 1
    assert 6 <= np.ptp(rows) + 1 <= 8  # the brush: 7% of the canvas
    assert 12 <= cols.min() <= 17 and 83 <= cols.max() <= 88  # ends at 20% and 80%, plus round caps
    assert np.asarray(render([[(0.5, 0.5)]], canvas=100)).min() < 128  # a tap is a dot


def test_drawings_are_seeded_and_the_same_in_any_number_of_processes(digits: np.ndarray) -> None:
    one = drawn_versions(digits, versions=2, seed=3, processes=1)
    two = drawn_versions(digits, versions=2, seed=3, processes=2)
    assert one.shape == (2, 10, 28, 28) and one.dtype == np.uint8
    assert np.array_equal(one, two)
    assert not np.array_equal(one[0], one[1])  # each version is another size and place
    assert not np.array_equal(one, drawn_versions(digits, versions=2, seed=4, processes=1))


def test_pen_paths_cover_the_digit(digits: np.ndarray) -> None:
    for digit in digits:
        strokes = digit_strokes(digit, np.random.default_rng(0), sizes=(0.5, 0.5))
        points = np.concatenate([np.array(stroke) for stroke in strokes])
        assert points.min() >= 0.06 - 1e-6 and points.max() <= 0.94 + 1e-6  # on the canvas, off its edge
        assert max(np.ptp(points[:, 0]), np.ptp(points[:, 1])) == pytest.approx(0.5, abs=0.02)
