"""Do the digit and the sum ever contradict the number sent? Old rule (each head's argmax) vs the joint decision.

    python -m benchmarks.consistency    # writes benchmarks/results/consistency.md (about 20 s on 2 CPU cores)

Sets: the sample's 1,000 test digits, and blends of two test digits of different classes (pixel-wise
weighted means, weights 0.35-0.65), built to split the digit distribution between two classes. Every image
is asked with all ten numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.model import DeviceChoice, Model
from app.settings import DEFAULT_MODEL
from tests.support.digits import load_sample

RESULTS = Path(__file__).parent / "results" / "consistency.md"


def blends(images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n weighted means of two test digits of different classes, (n, 28, 28) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(labels), n), rng.integers(0, len(labels), n)
    keep = labels[a] != labels[b]
    w = rng.uniform(0.35, 0.65, n)[:, None, None]
    mixed = (w * images[a] + (1 - w) * images[b]) / 255
    return mixed[keep].astype(np.float32)


def heads(model: Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image with all ten numbers: digit probs (N*10, 10), sum probs (N*10, 19), numbers (N*10,)."""
    batch = torch.from_numpy(np.repeat(images, 10, axis=0)[:, None])
    numbers = torch.arange(10).repeat(len(images))
    with torch.inference_mode():
        digit_lp, sum_lp = model.module(batch, numbers)
    return digit_lp.exp().numpy(), sum_lp.exp().numpy(), numbers.numpy()


def measure(model: Model, images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    digit_p, sum_p, numbers = heads(model, images)
    old_digit, old_sum = digit_p.argmax(1), sum_p.argmax(1)
    answers = model.predict(np.repeat(images, 10, axis=0), numbers.tolist())  # what the service answers
    new_digit = np.array([a.digit for a in answers])
    row: dict[str, float] = {
        "answers": len(numbers),
        "old_contradictions": int((old_digit + numbers != old_sum).sum()),
        "new_contradictions": sum(a.digit + int(n) != a.sum for a, n in zip(answers, numbers, strict=True)),
        "heads_disagree": sum(not a.heads_agree for a in answers),
    }
    if labels is not None:
        truth = np.repeat(labels, 10)
        row["old_digit_acc"] = float((old_digit == truth).mean())
        row["old_sum_acc"] = float((old_sum == truth + numbers).mean())
        row["joint_acc"] = float((new_digit == truth).mean())
    return row


def main() -> None:
    torch.set_num_threads(2)
    model = Model(DEFAULT_MODEL, DeviceChoice(torch.device("cpu"), "benchmark"))
    test = load_sample().test
    rows = {
        "test split (1,000 x 10 numbers)": measure(model, test.images.astype(np.float32) / 255, test.labels),
        "two-digit blends (x 10 numbers)": measure(model, blends(test.images, test.labels, 2000), None),
    }
    lines = [
        "# Self-consistency: digit + number = sum?",
        "",
        f"Model {DEFAULT_MODEL.name} sha256 {model.sha256[:12]}; regenerate with `python -m benchmarks.consistency`.",
        "Old rule: each head's own argmax. Joint: argmax over d of P_digit(d) * P_sum(d + number) (app/model.py).",
        "",
        "| set | answers | old rule: contradictions | joint: contradictions | heads disagree (flagged) "
        "| old digit acc | old sum acc | joint acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        accs = [f"{100 * r[k]:.2f}%" if k in r else "n/a" for k in ("old_digit_acc", "old_sum_acc", "joint_acc")]
        lines.append(
            f"| {name} | {r['answers']:,} | {r['old_contradictions']} | {r['new_contradictions']} "
            f"| {r['heads_disagree']} | " + " | ".join(accs) + " |"
        )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
