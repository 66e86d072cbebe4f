"""Honest confidence: temperatures and the low-confidence threshold, fitted on training images held out of training.

The held-out images are seen in the ways users send them (plain, drawn as the draw page draws them at random
sizes, slanted and shifted), so the fit covers the inputs the service meets, and the test split is
never touched. Temperatures divide each head's logits inside the exported module; the threshold goes in the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.augment import augment
from training.data import Split
from training.model import DigitSumNet
from training.page import drawn_versions

ECE_BINS = 15
FLAG_RIGHT_SHARE = 0.02  # the threshold flags this share of right answers on the held-out views (target: <= 3%)
TEMPERATURES = torch.exp(torch.linspace(np.log(0.25), np.log(8.0), 241))  # grid search: deterministic, no optimiser


@dataclass
class Views:
    """Held-out images as the network meets them, with their digits and one number each."""

    images: torch.Tensor  # (N, 1, 28, 28) in [0, 1]
    digits: torch.Tensor
    numbers: torch.Tensor


def held_out_views(held: Split, seed: int, device: torch.device) -> Views:
    """Five views of each held-out image: plain, two page drawings, augmented, drawn and augmented."""
    generator = torch.Generator().manual_seed(seed + 7)
    plain = held.images.unsqueeze(1).float() / 255
    drawn = torch.from_numpy(drawn_versions(held.images.numpy(), 3, seed + 7)).unsqueeze(2).float() / 255
    views = [plain, drawn[0], drawn[1], augment(plain.clone(), generator), augment(drawn[2], generator)]
    images = torch.cat(views)
    digits = held.labels.repeat(len(views))
    numbers = torch.randint(0, 10, (len(digits),), generator=generator)
    return Views(images.to(device), digits.to(device), numbers.to(device))


@torch.inference_mode()
def view_logits(model: DigitSumNet, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    digit, total = [], []
    for index in torch.arange(len(views.digits)).split(1000):
        d, s = model.logits(views.images[index], views.numbers[index])
        digit.append(d.float().cpu())
        total.append(s.float().cpu())
    return torch.cat(digit), torch.cat(total)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature of the grid with the lowest negative log-likelihood."""
    nll = torch.stack([F.cross_entropy(logits / t, targets) for t in TEMPERATURES])
    return float(TEMPERATURES[int(nll.argmin())])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of answers) x |accuracy - mean confidence|."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def flag_rates(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = confidence < threshold
    wrong = ~correct
    return {
        "flagged_errors": float(flagged[wrong].mean()) if wrong.any() else 1.0,
        "flagged_right": float(flagged[correct].mean()) if correct.any() else 0.0,
        "errors": int(wrong.sum()),
        "answers": len(correct),
    }


def calibrate(model: DigitSumNet, held: Split, seed: int, device: torch.device) -> dict[str, Any]:
    """Fit both temperatures and the threshold on the held-out views; set the temperatures on the model."""
    views = held_out_views(held, seed, device)
    digit_logits, sum_logits = view_logits(model, views)
    digits, sums = views.digits.cpu(), (views.digits + views.numbers).cpu()
    t_digit, t_sum = fit_temperature(digit_logits, digits), fit_temperature(sum_logits, sums)
    model.digit_temperature.fill_(t_digit)
    model.sum_temperature.fill_(t_sum)
    before = F.softmax(digit_logits, 1).max(1).values.numpy()
    after_p = F.softmax(digit_logits / t_digit, 1)
    after, correct = after_p.max(1).values.numpy(), (after_p.argmax(1) == digits).numpy()
    threshold = float(np.quantile(after[correct], FLAG_RIGHT_SHARE)) if correct.any() else 0.5
    return {
        "digit_temperature": round(t_digit, 4),
        "sum_temperature": round(t_sum, 4),
        "low_confidence_threshold": round(threshold, 4),
        "fitted_on": f"{len(held.labels)} training images held out of training, 5 views each "
        "(plain, 2 page drawings, augmented, drawn + augmented)",
        "held_out_digit_accuracy": round(float(correct.mean()), 5),
        "held_out_ece_before": round(expected_calibration_error(before, correct), 5),
        "held_out_ece_after": round(expected_calibration_error(after, correct), 5),
        "held_out_flags": flag_rates(after, correct, threshold),
    }
