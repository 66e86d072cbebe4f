"""An answer never contradicts itself: digit + number = sum in every answer, and a split between the heads is said.

The inputs are built to split the digit distribution: weighted means of two test digits of different classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.model import DeviceChoice, Model, decide
from app.preprocess import preprocess
from tests.support.digits import Sample
from tests.support.fakes import ConstantDigit, write_checkpoint
from tests.support.service import SHIPPED_MODEL, png_bytes


def test_decide_keeps_the_arithmetic_when_the_heads_split() -> None:
    """The shipped model once answered 7 + 3 = 5 for a drawn 2: digit head 7, sum head 5."""
    digit_p = np.full(10, 0.01)
    digit_p[[2, 7]] = [0.40, 0.52]
    sum_p = np.full(19, 0.01)
    sum_p[[5, 10]] = [0.70, 0.12]
    digit, agree = decide((digit_p / digit_p.sum())[None], (sum_p / sum_p.sum())[None], np.array([3]))
    assert (digit.tolist(), agree.tolist()) == (
        [2],
        [False],
    )  # 0.40 * 0.70 beats 0.52 * 0.12; and the heads alone said 7 and 5


def test_decide_on_random_distributions() -> None:
    rng = np.random.default_rng(0)
    digit_ps, sum_ps = rng.dirichlet(np.ones(10) * 0.3, 2000), rng.dirichlet(np.ones(19) * 0.3, 2000)
    numbers = rng.integers(0, 10, 2000)
    digits, agrees = decide(digit_ps, sum_ps, numbers)  # one batch: each row must be decided on its own
    for digit_p, sum_p, number, digit, agree in zip(digit_ps, sum_ps, numbers, digits, agrees, strict=True):
        joint = digit_p * sum_p[number : number + 10]
        assert joint[digit] == joint.max()
        assert agree == (digit_p.argmax() == digit and sum_p.argmax() == digit + number)


def split_blends(sample: Sample, wanted: int = 12) -> list[tuple[bytes, int]]:
    """(PNG, number) pairs on which the shipped heads' own argmaxes contradict each other after preprocessing."""
    module = torch.jit.load(str(SHIPPED_MODEL)).eval()
    rng = np.random.default_rng(1)
    images, labels = sample.test.images, sample.test.labels
    found: list[tuple[bytes, int]] = []
    for _ in range(40):  # 40 batches of 50 blends; a few percent of blends split the heads
        a, b = rng.integers(0, len(labels), (2, 50))
        w = rng.uniform(0.35, 0.65, (50, 1, 1))
        pngs = [png_bytes(np.rint(m).astype(np.uint8)) for m in w * images[a] + (1 - w) * images[b]]
        pixels = torch.from_numpy(np.stack([preprocess(p, 40_000_000) for p in pngs]))[:, None]
        for number in range(10):
            with torch.inference_mode():
                digit_lp, sum_lp = module(pixels, torch.full((50,), number))
            split = (digit_lp.argmax(1) + number != sum_lp.argmax(1)).nonzero().flatten()
            found += [(pngs[i], number) for i in split.tolist() if labels[a[i]] != labels[b[i]]]
        if len(found) >= wanted:
            break
    return found[:wanted]


@pytest.mark.slow
def test_the_api_never_contradicts_itself_on_digits_split_between_two_classes(
    client: TestClient, sample: Sample
) -> None:
    cases = split_blends(sample)
    assert len(cases) >= 5, "the blends no longer split the heads; build harder inputs"
    for png, number in cases:
        body = client.post("/predict", files={"image": ("b.png", png, "image/png")}, data={"number": str(number)})
        answer = body.json()
        assert answer["sum"] == answer["digit"] + answer["number"] == answer["digit"] + number
        assert answer["heads_agree"] is False and answer["low_confidence"] is True


def test_every_answer_on_real_digits_is_consistent(client: TestClient, sample: Sample) -> None:
    for i in range(0, 1000, 50):
        for number in (0, 9):
            files = {"image": ("d.png", png_bytes(sample.test.images[i]), "image/png")}
            answer = client.post("/predict", files=files, data={"number": str(number)}).json()
            assert answer["sum"] == answer["digit"] + number
            assert answer["heads_agree"] or answer["low_confidence"]  # a split is always flagged


@pytest.mark.parametrize(("calibration", "threshold"), [({"low_confidence_threshold": 0.83}, 0.83), (None, 0.6)])
def test_the_service_uses_the_threshold_calibrated_into_the_card(
    tmp_path: Path, calibration: dict[str, float] | None, threshold: float
) -> None:
    metadata: dict[str, object] = {"format_version": 1, "architecture": {"name": "ConstantDigit"}}
    if calibration is not None:
        metadata["calibration"] = calibration
    path = write_checkpoint(ConstantDigit(3), tmp_path / "m.pt", metadata)
    model = Model(path, DeviceChoice(torch.device("cpu"), "test"))
    assert model.low_confidence_threshold == threshold
