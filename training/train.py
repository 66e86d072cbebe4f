"""Train DigitSumNet: `python -m training --help`.

Default run on the sample split (4,000 train / 1,000 test real MNIST digits), 2 CPU cores:
see models/digitsum.json for the measured time and accuracy (README has the table).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import data as digit_data
from training.augment import augment, brush_render
from training.calibrate import calibrate, expected_calibration_error, flag_rates
from training.config import TrainConfig
from training.data import PairedDigits
from training.export import FORMAT_VERSION, cpu_latency_ms, export_torchscript, git_commit, now_utc
from training.model import MNIST_MEAN, MNIST_STD, DigitSumNet, parameter_count
from training.plots import plot_confusion, plot_curves
from training.strokes import stroke_maps

log = logging.getLogger("training")

DRY_RUN_IMAGES = 512  # --dry-run trains and evaluates on this many images
DRY_RUN_HOLDOUT_PER_DIGIT = 5


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
    """Both heads' cross-entropies and log-probabilities."""
    digit_lp, sum_lp = model(images, numbers)
    # cross_entropy re-applies log_softmax, a no-op on log-probabilities
    digit_loss = F.cross_entropy(digit_lp.float(), digits, label_smoothing=label_smoothing)
    return digit_loss, F.nll_loss(sum_lp, sums), digit_lp, sum_lp


def train_epoch(
    model: DigitSumNet,
    pairs: PairedDigits,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    epoch: int,
    strokes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    model.train()
    pairs.draw(epoch)
    totals = np.zeros(5)  # digit loss, sum loss, digit correct, sum correct, count
    batches = pairs.index_batches(config.batch_size, generator)
    bar = tqdm(batches, total=len(batches), desc=f"epoch {epoch}/{config.epochs}")
    for index in bar:
        images, numbers, digits, sums = pairs.take(index, device)
        if strokes is not None:
            images = redraw_some(images, index, strokes, config.drawn_share, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            digit_loss, sum_loss, digit_lp, sum_lp = losses(
                model, augment(images, generator), numbers, digits, sums, config.label_smoothing
            )
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


def redraw_some(
    images: torch.Tensor,
    index: torch.Tensor,
    strokes: tuple[torch.Tensor, torch.Tensor],
    share: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Replace a random `share` of the batch with its digits re-drawn by the page's round brush."""
    dist, long_side = strokes
    chosen = torch.rand(len(index), generator=generator) < share
    redrawn = brush_render(dist[index].to(images.device), long_side[index].to(images.device), generator)
    return torch.where(chosen.to(images.device).view(-1, 1, 1, 1), redrawn, images)


@torch.inference_mode()
def evaluate(model: DigitSumNet, pairs: PairedDigits, device: torch.device) -> dict[str, Any]:
    """Losses and accuracies of both heads, plus the digit predictions for a confusion matrix."""
    model.eval()
    digit_loss = sum_loss = 0.0
    digit_preds, sum_preds, confidences = [], [], []
    for images, numbers, digits, sums in pairs.batches(1000, device):
        d_loss, s_loss, digit_lp, sum_lp = losses(model, images, numbers, digits, sums)
        digit_loss += d_loss.item() * len(digits)
        sum_loss += s_loss.item() * len(digits)
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


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    return torch.bincount(true * 10 + pred, minlength=100).view(10, 10).numpy()


def build_metadata(
    config: TrainConfig,
    data: digit_data.DigitData,
    model: DigitSumNet,
    final: dict[str, Any],
    seconds: float,
    epochs_run: int,
    device: torch.device,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "architecture": {
            "name": "DigitSumNet",
            "digit": f"5x conv3x3 CNN, width {config.width}",
            "sum": "linear over digit-probs x one-hot(number)",
            "parameters": parameter_count(model),
        },
        "inputs": {
            "images": "float32 (N,1,28,28) in [0,1], white digit on black, not normalised",
            "numbers": "int64 (N,) in 0..9",
        },
        "outputs": {
            "digit_log_probs": "(N,10), divided by digit_temperature before the softmax",
            "sum_log_probs": "(N,19), sums 0..18, divided by sum_temperature before the softmax",
        },
        "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD, "applied": "inside the module"},
        "dataset": {
            "name": data.name,
            "split": data.split,
            "train_images": len(data.train.labels),
            "test_images": len(data.test.labels),
        },
        "metrics": {
            "digit_accuracy": round(final["test_digit_acc"], 5),
            "sum_accuracy": round(final["test_sum_acc"], 5),
            "sum_accuracy_pairs": "every test image with all ten integers",
            "sum_head_exact_pairs": sum_head_exact_pairs(model),
        },
        "cpu_inference": {  # measured at export on the training machine: a guide, not a guarantee
            "ms_per_image_batch1": round(cpu_latency_ms(model, 1), 4),
            "ms_per_image_batch256": round(cpu_latency_ms(model, 256), 4),
            "threads": torch.get_num_threads(),
        },
        "training": {
            "config": config.as_dict(),
            "seed": config.seed,
            "epochs_run": epochs_run,
            "seconds": round(seconds, 1),
            "device": str(device),
        },
        "torch_version": torch.__version__,
        "created_at": now_utc(),
        "git_commit": git_commit(),
    }


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


def fit(
    model: DigitSumNet, data: digit_data.DigitData, config: TrainConfig, device: torch.device
) -> tuple[DigitSumNet, list[dict[str, Any]]]:
    """Train for config.epochs; returns the weights to export and the per-epoch history."""
    train_pairs = PairedDigits(data.train, seed=config.seed)
    strokes = stroke_maps(data.train.images) if config.drawn_share > 0 else None
    curve_pairs = PairedDigits(data.test, seed=config.seed + 1)  # one integer per test image, for the curves
    optimizer, scheduler = make_optimizer(model, config, config.epochs * -(-len(train_pairs) // config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        stats = train_epoch(model, train_pairs, optimizer, scheduler, config, device, generator, epoch, strokes)
        curve = evaluate(model, curve_pairs, device)
        stats.update({k: v for k, v in curve.items() if k not in ("digit_pred", "confidence")})
        history.append({"epoch": epoch, "seconds": round(time.perf_counter() - start, 2), **stats})
        log.info(
            "epoch %d: test digit %.2f%%, sum %.2f%%", epoch, 100 * curve["test_digit_acc"], 100 * curve["test_sum_acc"]
        )
    return model, history


def write_reports(out: Path, history: list[dict[str, Any]], data: digit_data.DigitData, final: dict[str, Any]) -> None:
    """History JSON and PNG plots beside the checkpoint: digitsum_history.json, _curves.png, _confusion.png."""
    stem = out.with_suffix("")
    stem.with_name(stem.name + "_history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_curves(history, stem.with_name(stem.name + "_curves.png"))
    digit_pred = final["digit_pred"][::10]  # one row per image: the digit head ignores the integer
    title = f"Digit head, {data.name} test split ({len(data.test.labels)} images)"
    plot_confusion(confusion_matrix(data.test.labels, digit_pred), stem.with_name(stem.name + "_confusion.png"), title)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig.from_args(argv)
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data = digit_data.load(config.dataset, config.data_dir)
    if config.dry_run:
        data, config.epochs = digit_data.subset(data, DRY_RUN_IMAGES), 1
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
    model, history = fit(DigitSumNet(config.width).to(device), data, config, device)
    # no held-out images, no calibration: temperatures stay 1 and the service uses its uncalibrated threshold
    calibration = calibrate(model, held, config.seed, device) if len(held.labels) else None
    seconds = time.perf_counter() - start
    test_pairs = PairedDigits(data.test, exhaustive=True)
    final = evaluate(model, test_pairs, device)
    metadata = build_metadata(config, data, model, final, seconds, len(history), device)
    metadata["metrics"]["digit_ece"] = round(final["test_digit_ece"], 5)
    if calibration is not None:
        correct = (final["digit_pred"] == test_pairs.digits).numpy()
        calibration["test_flags"] = flag_rates(final["confidence"], correct, calibration["low_confidence_threshold"])
        metadata["calibration"] = calibration
    card = export_torchscript(model, config.out, metadata)
    write_reports(config.out, history, data, final)
    log.info(
        "digit accuracy %.2f%%, sum accuracy %.2f%% (10 integers per image), %d/100 sum pairs exact, %.0f s -> %s",
        100 * final["test_digit_acc"],
        100 * final["test_sum_acc"],
        metadata["metrics"]["sum_head_exact_pairs"],
        seconds,
        config.out,
    )
    return card


if __name__ == "__main__":
    main()
