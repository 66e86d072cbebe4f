"""Compare training recipes on training-split data only (the held-out images and the drawn set), never the test split.

    python -m training --dataset sample --drawn-share 0.2 --out runs/share02/digitsum.pt    # one run per recipe
    python -m benchmarks.recipes runs/*/digitsum.pt      # -> benchmarks/results/recipes.md
    python -m benchmarks.recipes --out benchmarks/results/recipes_augment.md runs/*/digitsum.pt   # another table

Held-out: the training images the recipe kept out of training (the last `--holdout-per-digit` of each digit),
as 28x28. Page-drawn: each held-out image drawn 8 times by training/page.py (seed 999; training never uses
it), which draws as the page does (tests/system/test_browser.py checks it): thousands of drawings, where the
browser set has hundreds. Drawn: the dev half of data/drawn/digits (benchmarks/drawn_set.py: the strokes of
the last 10 training images of each digit replayed on the page; benchmarks/accuracy.py reports the other half).
The shipped recipe is the one with the best mean of the three; the test split is read only afterwards.
Non-digits (outside the mean): 500 drawings of training/nondigits.py's kinds (seed 999; training's use
--seed), whose "two digits" are held-out images, answered without the service's low-confidence flag: confident
answers for something that is no digit. Coarse scans (outside the mean): each held-out image averaged down to
10x10 cells at 17 grey levels, enlarged to a 64x64 scan and preprocessed as an upload is: a small scan or
thumbnail, of training-split digits. Digits called no_digit (outside the mean): the share of the held-out images,
of their page drawings and of their coarse scans that the non-digit detector takes for no digit at all, what the
detector costs digits.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.model import DeviceChoice, Model, Prediction
from app.preprocess import to_mnist
from benchmarks.accuracy import answers, drawings, drawn_halves, flagged
from benchmarks.drawn_set import HELD_OUT_PER_DIGIT, held_out_digits
from training.nondigits import nondigit_drawings
from training.page import drawn_versions

RESULTS = Path(__file__).parent / "results" / "recipes.md"
PAGE_DRAWINGS, PAGE_SEED = 8, 999  # training's drawings use seeds from --seed (0 by default): never this one
NONDIGITS = 500


def confident_share(model: Model, pixels: np.ndarray) -> float:
    """Share of images answered without the service's low-confidence flag (the card's threshold), with number 0."""
    return float(np.mean(~flagged(answers(model, pixels), model.low_confidence_threshold)[::10]))


def read(model: Model, pixels: np.ndarray) -> list[Prediction]:
    """The service's answer for each (28, 28) image, asked with the number 0."""
    return model.predict(pixels, [0] * len(pixels))


def accuracy(answers: list[Prediction], labels: np.ndarray) -> float:
    return float(np.mean([a.digit == t for a, t in zip(answers, labels, strict=True)]))


def no_digit_share(answers: list[Prediction]) -> float:
    """Share of digits that the non-digit detector calls no digit: what the detector costs digits (0 without one)."""
    return float(np.mean([a.no_digit for a in answers]))


def coarse_scan(image: np.ndarray, cells: int = 10, levels: int = 17, side: int = 64) -> np.ndarray:
    """A uint8 28x28 digit as a coarse scan reaches the network: `cells` x `cells` averages at `levels` grey
    levels, enlarged to `side` x `side`, then the service's preprocessing."""
    grid = np.asarray(Image.fromarray(image).resize((cells, cells), Image.Resampling.BOX), np.float32)
    quantised = np.round(grid / 255 * (levels - 1)) * 255 / (levels - 1)
    return to_mnist(Image.fromarray(quantised.astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR))


RECIPE_FLAGS = (
    "drawn_share", "nondigit_share", "detector_epochs", "epochs", "width", "holdout_per_digit", "elastic_px",
    "lowres_share", "seed",
)  # fmt: skip


def main(paths: list[Path], out: Path = RESULTS) -> None:
    torch.set_num_threads(2)
    drawn, drawn_labels = drawings(drawn_halves()["dev"])
    lines = [
        "# Recipes compared on training-split data only",
        "",
        f"Regenerate: `python -m benchmarks.recipes --out {out} CHECKPOINTS...`; held-out: each recipe's own, "
        f"drawn (dev half): {len(drawn_labels)} drawings. Test-split figures are in each card, read after choosing.",
        "",
        "| checkpoint | recipe | held-out acc | page-drawn acc | drawn acc | mean of the three | coarse scans "
        "| non-digits answered confidently | digits called no_digit: held-out / page-drawn / coarse | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        model = Model(path, DeviceChoice(torch.device("cpu"), "recipes"))
        config = model.metadata["training"]["config"]
        flags = {k: v for k, v in config.items() if k in RECIPE_FLAGS}
        per_digit = config.get("holdout_per_digit", 0)
        images, labels = held_out_digits(per_digit) if per_digit else held_out_digits()
        page_drawn = drawn_versions(images, PAGE_DRAWINGS, seed=PAGE_SEED).reshape(-1, 28, 28)
        held_answers = read(model, images.astype(np.float32) / 255)
        page_answers = read(model, page_drawn.astype(np.float32) / 255)
        scan_answers = read(model, np.stack([coarse_scan(image) for image in images]))
        held = accuracy(held_answers, labels)
        on_page = accuracy(page_answers, np.tile(labels, PAGE_DRAWINGS))
        on_drawn = accuracy(read(model, drawn), drawn_labels)
        coarse = accuracy(scan_answers, labels)
        no_digit = " / ".join(
            f"{100 * no_digit_share(answers):.2f}%" for answers in (held_answers, page_answers, scan_answers)
        )
        others = nondigit_drawings(NONDIGITS, images, seed=PAGE_SEED).astype(np.float32) / 255
        seen = "" if per_digit >= HELD_OUT_PER_DIGIT else " (trained on them)"  # their sources trained it
        lines.append(
            f"| {path} | {json.dumps(flags)} | {100 * held:.2f}%{seen} of {len(labels)} "
            f"| {100 * on_page:.2f}%{seen} | {100 * on_drawn:.2f}%{seen} "
            f"| {100 * (held + on_page + on_drawn) / 3:.2f}% | {100 * coarse:.2f}% "
            f"| {100 * confident_share(model, others):.2f}% | {no_digit} "
            f"| {model.metadata['training']['seconds']} |"
        )
    write_table(lines, out)


def write_table(lines: list[str], out: Path) -> None:
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def checkpoints_cli(main: Callable[[list[Path], Path], None], prog: str, doc: str, results: Path) -> None:
    """`prog CHECKPOINTS... [--out FILE]`: one row of a Markdown table per checkpoint, written to FILE."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints, each with its card")
    parser.add_argument("--out", type=Path, default=results, help="the Markdown table to write")
    args = parser.parse_args()
    main(args.checkpoints, args.out)


if __name__ == "__main__":
    checkpoints_cli(main, "python -m benchmarks.recipes", __doc__, RESULTS)
