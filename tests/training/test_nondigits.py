"""Non-digits drawn on the page for training (training/nondigits.py) and how training learns doubt from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.data import DigitData
from training.model import DigitSumNet
from training.nondigits import KINDS, fitted, nondigit_drawings, nondigit_strokes, two_digits
from training.page import render
from training.train import NONDIGIT_WEIGHT, losses, with_nondigits


@pytest.fixture(scope="module")
def digits(sample: DigitData) -> np.ndarray:
    return sample.train.images[::40].numpy()


def test_drawings_are_seeded_and_the_same_in_any_number_of_processes(digits: np.ndarray) -> None:
    one = nondigit_drawings(300, digits, seed=3, processes=1)
    two = nondigit_drawings(300, digits, seed=3, processes=2)
    assert one.shape == (300, 28, 28) and one.dtype == np.uint8
    assert np.array_equal(one, two)
    assert not np.array_equal(one, nondigit_drawings(300, digits, seed=4, processes=1))
    assert len({image.tobytes() for image in one}) == 300  # every drawing its own


def test_drawings_are_fitted_like_an_upload(digits: np.ndarray) -> None:
    """Preprocessed as the page's upload is: the long side fitted into 20 of 28 pixels, centre of mass at the centre."""
    for image in nondigit_drawings(40, digits, seed=0, processes=1).astype(np.float32) / 255:
        rows, cols = np.nonzero(image > 0.1)
        assert 18 <= max(np.ptp(rows), np.ptp(cols)) + 1 <= 22
        grid = np.arange(28)
        centre = (image.sum(1) @ grid / image.sum(), image.sum(0) @ grid / image.sum())
        assert all(abs(c - 14) <= 1 for c in centre)


def test_every_kind_is_drawn_on_the_canvas(digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for name, kind in KINDS.items():
        for _ in range(50):
            strokes = fitted(kind(rng, digits), rng)
            points = np.concatenate([np.array(stroke) for stroke in strokes])
            assert points.min() >= 0.06 - 1e-6 and points.max() <= 0.94 + 1e-6, name
            assert (np.asarray(render(strokes)) < 128).any(), name
    assert len(nondigit_strokes(rng, digits)) >= 1


def test_two_digits_stand_apart_side_by_side(digits: np.ndarray) -> None:
    """Never on top of each other: a 1 across a 7 is a 7, a 0 over a 0 an 8."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        paths = two_digits(rng, digits)
        left_of_the_rest = [
            k
            for k in range(1, len(paths))
            if np.concatenate(paths[:k])[:, 0].max() < np.concatenate(paths[k:])[:, 0].min()
        ]
        assert left_of_the_rest  # the first digit's paths all end before the second's begin


def test_a_batch_gets_its_share_of_non_digits_after_its_digits() -> None:
    images, numbers = torch.zeros(16, 1, 28, 28), torch.arange(16) % 10
    pool = torch.full((5, 28, 28), 255, dtype=torch.uint8)
    out, out_numbers = with_nondigits(images, numbers, pool, 0.25, torch.Generator().manual_seed(0))
    assert out.shape == (20, 1, 28, 28) and out_numbers.shape == (20,)
    assert torch.equal(out[:16], images) and torch.equal(out_numbers[:16], numbers)
    assert torch.equal(out[16:], torch.ones(4, 1, 28, 28))  # the pool's images, in [0, 1]
    assert ((out_numbers[16:] >= 0) & (out_numbers[16:] <= 9)).all()


def test_non_digits_are_pulled_towards_a_flat_digit_distribution() -> None:
    """Their digit loss is the cross-entropy to uniform, weighted; they give the sum head nothing to learn."""
    torch.manual_seed(0)
    model = DigitSumNet(width=4).eval()
    images, numbers = torch.rand(6, 1, 28, 28), torch.tensor([1, 2, 3, 4, 5, 6])
    digits = torch.tensor([0, 1, 2, 3])
    sums = digits + numbers[:4]
    digit_loss, sum_loss, digit_lp, sum_lp = losses(model, images, numbers, digits, sums)
    all_lp, all_sum_lp = model(images, numbers)
    flat = F.cross_entropy(all_lp[4:], torch.full((2, 10), 0.1))
    assert digit_loss.item() == pytest.approx((F.nll_loss(all_lp[:4], digits) + NONDIGIT_WEIGHT * flat).item())
    assert sum_loss.item() == pytest.approx(F.nll_loss(all_sum_lp[:4], sums).item())
    assert digit_lp.shape == (4, 10) and sum_lp.shape == (4, 19)
