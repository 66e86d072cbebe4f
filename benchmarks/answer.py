"""What both benchmark servers (naive, LitServe) answer: the service's fields, from the network's probabilities."""

from __future__ import annotations

import json

import numpy as np
import torch

from app.model import decide
from app.settings import DEFAULT_MODEL

MAX_PIXELS = 40_000_000  # the service's default DIGITSUM_MAX_PIXELS
NONDIGIT_THRESHOLD = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["detector"]["threshold"]


def network(model: torch.jit.ScriptModule, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The checkpoint's `answer` method, in a frame of its own: the profile (benchmarks/serve.py) charges what runs
    under it to the network, as it does app.model.Model.network's."""
    return model.answer(images, numbers)  # type: ignore[no-any-return]


def answer(digit_p: np.ndarray, sum_p: np.ndarray, number: int, nondigit: float) -> dict[str, object]:
    """(10,) and (19,) probabilities and the detector's P(no digit) -> the JSON fields of the service's answer.
    Every server calls the checkpoint's `answer` method, as the service does: the same network work per image."""
    digits, agrees = decide(digit_p[None], sum_p[None], np.array([number]))
    digit, agree = int(digits[0]), bool(agrees[0])
    total = digit + number
    return {
        "digit": digit,
        "sum": total,
        "number": number,
        "digit_confidence": round(float(digit_p[digit]), 6),
        "sum_confidence": round(float(sum_p[total]), 6),
        "heads_agree": agree,
        "no_digit": bool(nondigit > NONDIGIT_THRESHOLD),
        "digit_probabilities": [round(float(p), 6) for p in digit_p],
    }
