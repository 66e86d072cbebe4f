"""Compare training recipes on training-split data only (the held-out images and the drawn set), never the test split.

    python -m training --dataset sample --drawn-share 0.2 --out runs/share02/digitsum.pt    # one run per recipe
    python -m benchmarks.recipes runs/*/digitsum.pt      # -> benchmarks/results/recipes.md

Held-out: the 400 training images every recipe keeps out of training (last 40 per digit), as 28x28.
Drawn: data/drawn/digits (benchmarks/drawn_set.py: the same held-out images' strokes drawn on the page).
The shipped recipe is the one with the best mean of the two; the test split is read only afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from app.model import DeviceChoice, Model
from benchmarks.accuracy import DRAWN, decoded
from benchmarks.drawn_set import held_out_digits

RESULTS = Path(__file__).parent / "results" / "recipes.md"


def accuracy(model: Model, pixels: np.ndarray, labels: np.ndarray) -> float:
    answers = model.predict(pixels, [0] * len(pixels))
    return float(np.mean([a.digit == t for a, t in zip(answers, labels, strict=True)]))


def main(paths: list[Path]) -> None:
    torch.set_num_threads(2)
    images, labels = held_out_digits()
    drawn_paths = sorted((DRAWN / "digits").glob("*.png"))
    drawn, refused = decoded([p.read_bytes() for p in drawn_paths])
    drawn_labels = np.array([int(p.stem.split("-")[1]) for p in drawn_paths])[~refused]
    lines = [
        "# Recipes compared on training-split data only",
        "",
        f"Regenerate: `python -m benchmarks.recipes CHECKPOINTS...`; held-out: {len(labels)} images, "
        f"drawn: {len(drawn_labels)} drawings. Test-split figures are in each card, read after choosing.",
        "",
        "| checkpoint | recipe (non-default flags) | held-out acc | drawn acc | mean | train s |",
        "|---|---|---|---|---|---|",
    ]
    for path in paths:
        model = Model(path, DeviceChoice(torch.device("cpu"), "recipes"))
        config = model.metadata["training"]["config"]
        flags = {k: v for k, v in config.items() if k in ("drawn_share", "epochs", "width", "holdout_per_digit")}
        held = accuracy(model, images.astype(np.float32) / 255, labels)
        on_drawn = accuracy(model, drawn, drawn_labels)
        seen = " (trained on them)" if not config.get("holdout_per_digit") else ""  # no hold-out: these trained it
        lines.append(
            f"| {path} | {json.dumps(flags)} | {100 * held:.2f}%{seen} | {100 * on_drawn:.2f}%{seen} "
            f"| {50 * (held + on_drawn):.2f}% | {model.metadata['training']['seconds']} |"
        )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
