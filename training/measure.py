"""What the model card reports about a trained network, measured in one explicit step after training.

The figures themselves live in the card (models/digitsum.json) and in benchmarks/results/train.md
(`python benchmarks/train_time.py`), never in comments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from training.calibrate import expected_calibration_error, flag_rates
from training.data import PairedDigits, Split
from training.model import DigitSumNet

# One upload at a time, and a full batch: {batch size: timed passes}. 50 passes of 256 images were 6 s of every
# training run; 11 give the median of ~2,800 images.
LATENCY_BATCHES = {1: 50, 256: 11}


@dataclass(frozen=True)
class Measurements:
    test: dict[str, Any]  # evaluate() on every test image with all ten integers
    sum_head_exact_pairs: int  # of the 100 (digit, integer) pairs
    cpu_inference: dict[str, float]  # ms per image at each of LATENCY_BATCHES, and the threads used
    calibration: dict[str, Any] | None  # as fitted on held-out training images, then checked on the test split


def measure(model: DigitSumNet, test: Split, device: torch.device, calibration: dict[str, Any] | None) -> Measurements:
    """Everything the card reports about the network: accuracy and calibration on the test split, the sum head
    alone, CPU cost."""
    pairs = PairedDigits(test, exhaustive=True)
    final = evaluate(model, pairs, device)
    return Measurements(
        test=final,
        sum_head_exact_pairs=sum_head_exact_pairs(model),
        cpu_inference=cpu_inference(model),
        calibration=None if calibration is None else calibration_on_test(calibration, final, pairs),
    )


def calibration_on_test(calibration: dict[str, Any], final: dict[str, Any], pairs: PairedDigits) -> dict[str, Any]:
    """The fit's card section plus what its low-confidence threshold flags on the test split."""
    correct = (final["digit_pred"] == pairs.digits).numpy()
    threshold = calibration["low_confidence_threshold"]
    return {**calibration, "test_flags": flag_rates(final["confidence"], correct, threshold)}


@torch.inference_mode()
def evaluate(model: DigitSumNet, pairs: PairedDigits, device: torch.device) -> dict[str, Any]:
    """Losses and accuracies of both heads, plus the digit predictions for a confusion matrix."""
    model.eval()
    digit_loss = sum_loss = 0.0
    digit_preds, sum_preds, confidences = [], [], []
    for images, numbers, digits, sums in pairs.batches(1000, device):
        digit_lp, sum_lp = model(images, numbers)
        # the digit loss as train.losses computes it, without label smoothing
        digit_loss += F.cross_entropy(digit_lp.float(), digits).item() * len(digits)
        sum_loss += F.nll_loss(sum_lp, sums).item() * len(digits)
        digit_preds.append(digit_lp.argmax(1).cpu())
        sum_preds.append(sum_lp.argmax(1).cpu())
        confidences.append(digit_lp.max(1).values.exp().float().cpu())
    digit_pred, sum_pred = torch.cat(digit_preds), torch.cat(sum_preds)
    confidence, correct = torch.cat(confidences).numpy(), (digit_pred == pairs.digits).numpy()
    return {
        "test_digit_ece": expected_calibration_error(confidence, correct),
        "confidence": confidence,
        "test_digit_loss": digit_loss / len(pairs),
        "test_sum_loss": sum_loss / len(pairs),
        "test_digit_acc": (digit_pred == pairs.digits).float().mean().item(),
        "test_sum_acc": (sum_pred == pairs.sums).float().mean().item(),
        "digit_pred": digit_pred,
    }


@torch.inference_mode()
def sum_head_exact_pairs(model: DigitSumNet) -> int:
    """How many of the 100 (digit, integer) pairs the sum head alone maps to the right sum."""
    digits, numbers = torch.arange(10).repeat_interleave(10), torch.arange(10).repeat(10)
    device = next(model.parameters()).device
    sum_logits = model.sum(F.one_hot(digits, 10).float().to(device), numbers.to(device))
    return int((sum_logits.argmax(1).cpu() == digits + numbers).sum())


def cpu_inference(model: DigitSumNet) -> dict[str, float]:
    """CPU time per image of the exported form, on this machine: a guide, not a guarantee."""
    inference = model.inference_copy()
    timings: dict[str, float] = {
        f"ms_per_image_batch{batch}": round(cpu_latency_ms(inference, batch, repeats), 4)
        for batch, repeats in LATENCY_BATCHES.items()
    }
    return {**timings, "threads": torch.get_num_threads()}


def cpu_latency_ms(model: torch.nn.Module, batch_size: int, repeats: int) -> float:
    """Median time of one forward pass per image, in milliseconds, after 5 warm-up passes."""
    images, numbers = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 5):
            start = time.perf_counter()
            model(images, numbers)
            times.append(time.perf_counter() - start)
    return sorted(times[5:])[repeats // 2] * 1000 / batch_size
