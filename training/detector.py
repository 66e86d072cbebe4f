"""The non-digit detector: a small head on the digit CNN that says when a drawing is no digit at all.

A network trained on digits alone answers a letter or a doodle with a confident digit. Teaching the digit network
doubt on such drawings (outlier exposure, `--nondigit-share`) also tipped borderline drawn digits into wrong
answers (benchmarks/results/recipes_nondigits.md). So a head, `DigitSumNet.detector`, learns digits against
non-digits once the digit network is trained, from the digit CNN's last feature maps with the CNN frozen: it can
flag an answer (the service's `no_digit` and `low_confidence`) but never change one, and the service's
convolutions run once for both (the separate small CNN it replaced caught about as many on the training-side
measures, README, and cost a tenth to a fifth of the forward pass).

Its digits are the training split's, half of them drawn as the page draws them, augmented as the digit network's
are; its non-digits are training/nondigits.py's drawings. Its threshold flags 1% of the held-out training images'
views (training/calibrate.py), and 500 non-digits of a seed that training never uses measure what it catches.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.augment import augment
from training.calibrate import held_out_views
from training.config import TrainConfig
from training.data import DigitData, Split
from training.model import DigitSumNet
from training.nondigits import nondigit_drawings
from training.page import redraw_some

# Non-digit drawings made before training (about 3.5 s on 2 cores). 6 epochs over 3,000 caught as many unseen
# non-digits as 10 over 6,000 (73-74% vs 72%, at the same 1% of held-out views flagged) in 10 s instead of 21 s.
NONDIGITS = 3_000
DIGITS_PER_STEP, NONDIGITS_PER_STEP = 128, 64  # a step's batch: digits are what it must never flag
FLAG_DIGIT_SHARE = 0.01  # the threshold flags this share of the held-out digit views
UNFITTED_THRESHOLD = 0.5  # no held-out images to fit on: the detector's own even odds
CHECK_NONDIGITS, CHECK_SEED = 500, 999  # drawings of a seed that training never uses, to measure the catch rate
POOL_SEED_OFFSET = 17  # its pool apart from --nondigit-share's (the run's seed)


def train_detector(model: DigitSumNet, data: DigitData, held: Split, drawings: torch.Tensor | None,
                   config: TrainConfig, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Train `model.detector`, fit its threshold, and measure it: the card's `detector` section. The test split is
    read only to report what the threshold flags of it."""
    section = fit_detector(model, data.train, drawings, config, device)
    section.update(fit_threshold(model, data.train, held, config.seed, device))
    on_test = probabilities(model, data.test.images.unsqueeze(1).float().div(255).to(device))
    section["test_split_flagged"] = round(float(np.mean(on_test > section["threshold"])), 4)
    return section


def fit_detector(model: DigitSumNet, train: Split, drawings: torch.Tensor | None, config: TrainConfig,
                 device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Train `model.detector` in place; returns its card section (threshold still to fit: `fit_threshold`)."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed + POOL_SEED_OFFSET)
    count = min(NONDIGITS, 4 * len(train.labels))  # a dry run's few digits get a few non-digits
    nondigits = torch.from_numpy(nondigit_drawings(count, train.images.numpy(), config.seed + POOL_SEED_OFFSET))
    steps = config.detector_epochs * max(1, len(train.labels) // DIGITS_PER_STEP)
    detector = model.detector
    optimizer = torch.optim.AdamW(detector.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps)
    target = torch.cat([torch.zeros(DIGITS_PER_STEP), torch.ones(NONDIGITS_PER_STEP)]).to(device)
    # The digit CNN as it is exported and served (batch norm folded): the head learns the maps it will read, and
    # the network it reads them from is a copy, never trained. Its forward is a third cheaper than the unfolded one's.
    frozen = model.inference_copy().to(device)
    if device.type == "cpu":
        frozen = frozen.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for _ in range(steps):
        index = torch.randint(0, len(train.labels), (DIGITS_PER_STEP,), generator=generator)
        digits = train.images[index].to(device).unsqueeze(1).float().div_(255)
        if drawings is not None:
            digits = redraw_some(digits, index, drawings, config.drawn_share, generator)
        picked = nondigits[torch.randint(0, len(nondigits), (NONDIGITS_PER_STEP,), generator=generator)]
        images = torch.cat([digits, picked.to(device).unsqueeze(1).float().div_(255)])
        seen = augment(images, generator, lowres_share=config.lowres_share)
        if device.type == "cpu":
            seen = seen.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            maps = frozen.feature_maps(seen)
        loss = F.binary_cross_entropy_with_logits(detector(maps.clone()).float(), target)  # clone: autograd may keep it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return {"nondigits": count, "epochs": config.detector_epochs, "seconds": round(time.perf_counter() - start, 1)}


@torch.inference_mode()
def probabilities(model: DigitSumNet, images: torch.Tensor) -> np.ndarray:
    """(N, 1, 28, 28) in [0, 1] -> (N,) P(no digit), in chunks."""
    model.eval()
    return torch.cat([model.nondigit_probability(chunk).cpu() for chunk in images.split(1000)]).numpy()


def fit_threshold(model: DigitSumNet, train: Split, held: Split, seed: int, device: torch.device) -> dict[str, Any]:
    """The threshold that flags FLAG_DIGIT_SHARE of the held-out views, and what it flags of both kinds."""
    if len(held.labels):
        digits = probabilities(model, held_out_views(held, seed, device).images)
        threshold = float(np.quantile(digits, 1 - FLAG_DIGIT_SHARE))
        how = f"flags {FLAG_DIGIT_SHARE:.0%} of the views of {len(held.labels)} held-out training images"
    else:
        digits, threshold, how = np.zeros(0), UNFITTED_THRESHOLD, "no held-out images: even odds"
    check = nondigit_drawings(CHECK_NONDIGITS, train.images.numpy(), CHECK_SEED)
    caught = probabilities(model, torch.from_numpy(check).unsqueeze(1).float().div(255).to(device)) > threshold
    return {
        "threshold": round(threshold, 6),
        "fitted": how,
        "held_out_views_flagged": round(float(np.mean(digits > threshold)), 4) if len(digits) else None,
        "unseen_nondigits_caught": round(float(caught.mean()), 4),
    }
