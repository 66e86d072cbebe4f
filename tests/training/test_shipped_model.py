"""The shipped checkpoint meets the training issue's targets on the sample's test split."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from tests.support.service import SHIPPED_MODEL
from training.data import DigitData, PairedDigits


def load_shipped() -> tuple[torch.jit.ScriptModule, dict]:  # type: ignore[type-arg]
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(SHIPPED_MODEL), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra["metadata.json"])


@torch.inference_mode()
def test_shipped_model_meets_the_accuracy_targets(sample: DigitData) -> None:
    module, metadata = load_shipped()
    pairs = PairedDigits(sample.test, exhaustive=True)  # 1,000 images x 10 integers
    digit_pred, sum_pred = [], []
    for images, numbers, _, _ in pairs.batches(2000, torch.device("cpu")):
        digit_lp, sum_lp = module(images, numbers)
        digit_pred.append(digit_lp.argmax(1))
        sum_pred.append(sum_lp.argmax(1))
    digit_acc = (torch.cat(digit_pred) == pairs.digits).float().mean().item()
    sum_acc = (torch.cat(sum_pred) == pairs.sums).float().mean().item()
    # 98.5%: the default recipe holds 100 images out to calibrate on and trains on page drawings, which cost
    # MNIST's own test split 0.3% (99.2% before) for +1.7% on page drawings (README, "Recipes")
    assert digit_acc >= 0.985 and sum_acc >= 0.985
    assert abs(sum_acc - digit_acc) <= 0.001  # the sum head adds no errors of its own
    assert metadata["metrics"]["digit_accuracy"] == round(digit_acc, 5)  # the card tells the truth
    assert metadata["dataset"]["name"] == "sample"


@torch.inference_mode()
def test_sum_head_is_exact_for_all_100_pairs() -> None:
    module, _ = load_shipped()
    digits, numbers = torch.arange(10).repeat_interleave(10), torch.arange(10).repeat(10)
    sum_logits = module.sum(F.one_hot(digits, 10).float(), numbers)
    assert torch.equal(sum_logits.argmax(1), digits + numbers)
