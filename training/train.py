"""Train DigitSumNet: `python -m training --help`.

Default run on the sample split (4,000 train / 1,000 test real MNIST digits), 2 CPU cores:
see models/digitsum.json for the measured time and accuracy (README has the table).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import data as digit_data
from training.augment import augment
from training.calibrate import calibrate
from training.config import TrainConfig
from training.data import PairedDigits
from training.detector import train_detector
from training.export import Provenance, export_torchscript, model_card
from training.measure import evaluate, measure
from training.model import DigitSumNet
from training.nondigits import nondigit_drawings
from training.page import drawn_versions, redraw_some
from training.plots import plot_confusion, plot_curves

log = logging.getLogger("training")

DRY_RUN_IMAGES = 512  # --dry-run trains and evaluates on this many images
DRY_RUN_HOLDOUT_PER_DIGIT = 5
DRAWN_VERSIONS = 3  # page drawings made of each training image before training (training/page.py)
CURVE_EVERY = 5  # epochs between the learning curves' test points (a forward pass over the test split)
NONDIGITS = 4_000  # non-digit drawings made before training, sampled into every batch (--nondigit-share)
NONDIGIT_WEIGHT = 0.5  # their loss against the digit loss: outlier exposure's usual weight (Hendrycks et al.)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but no CUDA GPU is available; use --device auto or cpu")
    return torch.device("cuda" if requested != "cpu" and torch.cuda.is_available() else "cpu")


def losses(
    model: DigitSumNet,
    images: torch.Tensor,
    numbers: torch.Tensor,
    digits: torch.Tensor,
    sums: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both heads' cross-entropies and log-probabilities. Images past the first len(digits) are non-digits: their
    digit loss (weighted in) is the cross-entropy to a flat distribution, and the sum head has nothing to learn."""
    digit_lp, sum_lp = model(images, numbers)
    n = len(digits)
    # cross_entropy re-applies log_softmax, a no-op on log-probabilities
    digit_loss = F.cross_entropy(digit_lp[:n].float(), digits, label_smoothing=label_smoothing)
    if len(images) > n:
        digit_loss = digit_loss - NONDIGIT_WEIGHT * digit_lp[n:].float().mean()
    return digit_loss, F.nll_loss(sum_lp[:n], sums), digit_lp[:n], sum_lp[:n]


@dataclass
class TrainState:
    """What one run's training steps update; `fit` builds it once and hands it to every epoch."""

    model: DigitSumNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # batch order and augmentation
    device: torch.device


def train_epoch(
    state: TrainState,
    pairs: PairedDigits,
    config: TrainConfig,
    epoch: int,
    drawings: torch.Tensor | None = None,
    nondigits: torch.Tensor | None = None,
) -> dict[str, float]:
    model, device, generator = state.model, state.device, state.generator
    optimizer, scheduler = state.optimizer, state.scheduler
    model.train()
    pairs.draw(epoch)
    totals = np.zeros(5)  # digit loss, sum loss, digit correct, sum correct, count
    batches = pairs.index_batches(config.batch_size, generator)
    elastic = (config.elastic_px, config.elastic_sigma) if config.elastic_px > 0 else None
    bar = tqdm(batches, total=len(batches), desc=f"epoch {epoch}/{config.epochs}")
    for index in bar:
        images, numbers, digits, sums = pairs.take(index, device)
        if drawings is not None:
            images = redraw_some(images, index, drawings, config.drawn_share, generator)
        if nondigits is not None:
            images, numbers = with_nondigits(images, numbers, nondigits, config.nondigit_share, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            seen = augment(images, generator, elastic, config.lowres_share)
            digit_loss, sum_loss, digit_lp, sum_lp = losses(model, seen, numbers, digits, sums, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (digit_loss + sum_loss).backward()
        optimizer.step()
        scheduler.step()
        n = len(digits)
        totals += [
            digit_loss.item() * n,
            sum_loss.item() * n,
            (digit_lp.argmax(1) == digits).sum().item(),
            (sum_lp.argmax(1) == sums).sum().item(),
            n,
        ]
        bar.set_postfix(loss=f"{(totals[0] + totals[1]) / totals[4]:.3f}", acc=f"{totals[2] / totals[4]:.2%}")
    return {
        "train_digit_loss": totals[0] / totals[4],
        "train_sum_loss": totals[1] / totals[4],
        "train_digit_acc": totals[2] / totals[4],
        "train_sum_acc": totals[3] / totals[4],
    }


def with_nondigits(
    images: torch.Tensor, numbers: torch.Tensor, nondigits: torch.Tensor, share: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch with `share` x its size of random non-digits (uint8 (N, 28, 28)) after it, each with a number."""
    count = max(1, round(share * len(images)))
    picked = nondigits[torch.randint(0, len(nondigits), (count,), generator=generator)]
    extra = picked.to(images.device).unsqueeze(1).float().div_(255)
    extra_numbers = torch.randint(0, 10, (count,), generator=generator).to(numbers.device)
    return torch.cat([images, extra]), torch.cat([numbers, extra_numbers])


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    return torch.bincount(true * 10 + pred, minlength=100).view(10, 10).numpy()


def make_optimizer(
    model: DigitSumNet, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle schedule; the sum head gets its own, larger learning rate."""
    optimizer = torch.optim.AdamW(
        [
            {"params": model.digit.parameters(), "lr": config.lr},
            {"params": model.sum.parameters(), "lr": config.sum_head_lr, "weight_decay": 0.0},
        ],
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, [config.lr, config.sum_head_lr], total_steps=total_steps)
    return optimizer, scheduler


def page_drawings(train: digit_data.Split, config: TrainConfig) -> torch.Tensor | None:
    """uint8 (DRAWN_VERSIONS, N, 28, 28): each training digit drawn as the page draws it; None without --drawn-share."""
    if config.drawn_share <= 0:
        return None
    return torch.from_numpy(drawn_versions(train.images.numpy(), DRAWN_VERSIONS, config.seed))


def fit(
    model: DigitSumNet,
    data: digit_data.DigitData,
    config: TrainConfig,
    device: torch.device,
    drawings: torch.Tensor | None = None,
) -> tuple[DigitSumNet, list[dict[str, Any]]]:
    """Train for config.epochs; returns the weights to export and the per-epoch history. `drawings`: page_drawings."""
    train_pairs = PairedDigits(data.train, seed=config.seed)
    nondigits = None
    if config.nondigit_share > 0:
        count = DRY_RUN_IMAGES if config.dry_run else NONDIGITS
        nondigits = torch.from_numpy(nondigit_drawings(count, data.train.images.numpy(), config.seed))
    curve_pairs = PairedDigits(data.test, seed=config.seed + 1)  # one integer per test image, for the curves
    optimizer, scheduler = make_optimizer(model, config, config.epochs * -(-len(train_pairs) // config.batch_size))
    state = TrainState(model, optimizer, scheduler, torch.Generator().manual_seed(config.seed), device)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        stats = train_epoch(state, train_pairs, config, epoch, drawings, nondigits)
        if epoch % CURVE_EVERY == 0 or epoch in (1, config.epochs):  # the weights do not depend on it
            curve = evaluate(model, curve_pairs, device)
            stats.update({k: v for k, v in curve.items() if k not in ("digit_pred", "confidence")})
            log.info("epoch %d: test digit %.2f%%, sum %.2f%%", epoch, 100 * stats["test_digit_acc"],
                     100 * stats["test_sum_acc"])  # fmt: skip
        history.append({"epoch": epoch, "seconds": round(time.perf_counter() - start, 2), **stats})
    return model, history


def write_reports(out: Path, history: list[dict[str, Any]], data: digit_data.DigitData, final: dict[str, Any]) -> None:
    """History JSON and PNG plots beside the checkpoint: digitsum_history.json, _curves.png, _confusion.png."""
    stem = out.with_suffix("")
    stem.with_name(stem.name + "_history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_curves(history, stem.with_name(stem.name + "_curves.png"))
    digit_pred = final["digit_pred"][::10]  # one row per image: the digit head ignores the integer
    title = f"Digit head, {data.name} test split ({len(data.test.labels)} images)"
    plot_confusion(confusion_matrix(data.test.labels, digit_pred), stem.with_name(stem.name + "_confusion.png"), title)


def run(config: TrainConfig) -> dict[str, Any]:
    """Train, measure, export and report; returns the model card (also written beside the checkpoint)."""
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data = digit_data.load(config.dataset, config.data_dir)
    if config.dry_run:
        data, config.epochs = digit_data.subset(data, DRY_RUN_IMAGES), 1
        config.detector_epochs = min(config.detector_epochs, 1)
        config.holdout_per_digit = min(config.holdout_per_digit, DRY_RUN_HOLDOUT_PER_DIGIT)
    train, held = digit_data.hold_out(data.train, config.holdout_per_digit)
    if config.holdout_per_digit:
        split = f"{data.split}; the last {config.holdout_per_digit} training images of each digit held out to calibrate"
        data = digit_data.DigitData(data.name, split, train, data.test)
    log.info(
        "training on %s: %d train / %d test images, device %s",
        data.name,
        len(data.train.labels),
        len(data.test.labels),
        device,
    )

    start = time.perf_counter()
    # channels-last: oneDNN's CPU convolutions train much faster in it (an epoch here: 8.5 s -> 5.1 s)
    model = DigitSumNet(config.width, config.detector_width).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    drawings = page_drawings(data.train, config)
    model, history = fit(model, data, config, device, drawings)
    # no held-out images, no calibration: temperatures stay 1 and the service uses its uncalibrated threshold
    calibration = calibrate(model, held, config.seed, device) if len(held.labels) else None
    provenance = Provenance.of_this_run(len(history), time.perf_counter() - start, device)
    measured = measure(model, data.test, device, calibration)
    detector = None
    if config.detector_epochs > 0:  # after the digit network: it cannot change a digit answer
        detector = train_detector(model, data, held, drawings, config, device)
        log.info("non-digit detector: %s", detector)
    card = model_card(config, data, model.describe(), measured, provenance, detector)
    card = export_torchscript(model, config.out, card)
    write_reports(config.out, history, data, measured.test)
    log.info(
        "digit accuracy %.2f%%, sum accuracy %.2f%% (10 integers per image), %d/100 sum pairs exact, %.0f s -> %s",
        100 * measured.test["test_digit_acc"],
        100 * measured.test["test_sum_acc"],
        measured.sum_head_exact_pairs,
        provenance.seconds,
        config.out,
    )
    return card


def main(argv: list[str] | None = None) -> None:
    """The `python -m training` and `digitsum-train` entry point: returns None, so the process exits 0."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(TrainConfig.from_args(argv))


if __name__ == "__main__":
    main()
