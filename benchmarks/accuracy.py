"""The shipped network where people meet it: test split, user-style uploads, digits drawn on the page, non-digits.

    python -m benchmarks.drawn_set      # first, once: data/drawn/ (the drawn digits and non-digits)
    python -m benchmarks.accuracy       # -> benchmarks/results/accuracy.md and .json (about 1 min on 2 CPU cores)
    python -m benchmarks.accuracy --model runs/x/digitsum.pt --out /tmp/x.md

The drawn digits are split in two halves by file number: benchmarks/recipes.py compares recipes on the even
ones (the dev half), so the odd ones (the report half) are the drawn figure that no choice has seen.
Digits by other writers are scikit-learn's copy of the UCI optical digits (1,797 digits written by 43 people,
8x8 at 17 grey levels), each sent as a 64x64 PNG scan; nothing is trained, tuned or chosen on them.

Every answer is the service's own (app.model.Model.predict after app.preprocess for files), with every
image asked with all ten numbers; low_confidence is the service's rule with the card's calibrated threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from app.model import DeviceChoice, Model
from app.preprocess import preprocess
from app.settings import DEFAULT_MODEL
from app.upload import ImageError
from tests.support.digits import load_sample
from tests.support.service import ROOT, png_bytes
from tests.support.uploads import user_style_uploads

RESULTS = Path(__file__).parent / "results" / "accuracy.md"
DRAWN = ROOT / "data" / "drawn"
MAX_PIXELS = 40_000_000
FALLBACK_THRESHOLD = 0.6  # a card without calibration: the service's old default
BINS = 15
DRAWN_REPORT = "drawn on the page, report half (strokes of 100 held-out training images)"


def ece(confidence: np.ndarray, correct: np.ndarray) -> float:
    which = np.minimum((confidence * BINS).astype(int), BINS - 1)
    return float(sum((which == b).mean() * abs(correct[which == b].mean() - confidence[which == b].mean())
                     for b in range(BINS) if (which == b).any()))  # fmt: skip


def answers(model: Model, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Every image with all ten numbers, through Model.predict."""
    images, numbers = np.repeat(pixels, 10, axis=0), np.tile(np.arange(10), len(pixels))
    out = [
        p for k in range(0, len(images), 500) for p in model.predict(images[k : k + 500], numbers[k : k + 500].tolist())
    ]
    return {
        "digit": np.array([p.digit for p in out]),
        "sum": np.array([p.sum for p in out]),
        "number": numbers,
        "confidence": np.array([p.digit_probabilities[p.digit] for p in out]),
        "probs": np.array([p.digit_probabilities for p in out]),
        "agree": np.array([p.heads_agree for p in out]),
        "no_digit": np.array([p.no_digit for p in out]),
    }


def flagged(a: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """The service's low_confidence for each of `answers`: a digit under the threshold, heads that disagree, or the
    non-digit detector's no_digit."""
    return (a["confidence"] < threshold) | ~a["agree"] | a["no_digit"]


def score(model: Model, pixels: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, object]:
    a = answers(model, pixels)
    truth = np.repeat(labels, 10)
    correct = a["digit"] == truth
    low = flagged(a, threshold)
    temperature = float(model.metadata.get("calibration", {}).get("digit_temperature", 1.0))
    raw = torch.softmax(torch.log(torch.from_numpy(a["probs"]).clamp(min=1e-30)) * temperature, 1).numpy()
    raw_conf = raw[np.arange(len(raw)), a["digit"]]
    per_image = correct[::10]  # the digit does not depend on the number unless the heads split
    confusions: dict[str, int] = {}
    for t, p in zip(labels, a["digit"][::10], strict=True):
        if t != p:
            confusions[f"{t}->{p}"] = confusions.get(f"{t}->{p}", 0) + 1
    return {
        "images": len(labels),
        "answers": len(truth),
        "accuracy": float(correct.mean()),
        "sum_accuracy": float((a["sum"] == truth + a["number"]).mean()),
        "contradictions": int((a["sum"] != a["digit"] + a["number"]).sum()),
        "heads_disagree": int((~a["agree"]).sum()),
        "ece_uncalibrated": ece(raw_conf, correct),
        "ece": ece(a["confidence"], correct),
        "flagged_errors": float(low[~correct].mean()) if (~correct).any() else None,
        "flagged_right": float(low[correct].mean()),
        "no_digit": float(a["no_digit"].mean()),
        "errors": int((~per_image).sum()),
        "per_digit": {str(d): float(per_image[labels == d].mean()) for d in range(10) if (labels == d).any()},
        "confusions": dict(sorted(confusions.items(), key=lambda kv: -kv[1])),
    }


def other_writers() -> tuple[list[bytes], np.ndarray]:
    """The UCI optical digits (43 writers, not MNIST's), each as the PNG of a 64x64 scan of its 8x8 grid."""
    uci = load_digits()
    scans = [Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
             for image in uci.images]  # fmt: skip
    return [png_bytes(np.asarray(scan)) for scan in scans], uci.target


def drawn_halves() -> dict[str, list[Path]]:
    """The drawn digits: the dev half (even file numbers: recipes are chosen on it) and the report half (odd)."""
    drawn = files("digits")
    return {"dev": drawn[0::2], "report": drawn[1::2]}


def files(kind: str) -> list[Path]:
    found = sorted((DRAWN / kind).glob("*.png"))
    assert found, f"no {DRAWN / kind}/*.png: run `python -m benchmarks.drawn_set` first"
    return found


def drawings(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed drawn digits and their labels (from the file names); every one must hold a digit."""
    pixels, refused = decoded([p.read_bytes() for p in paths])
    assert not refused.any(), f"{refused.sum()} drawn digits were refused as 'no digit'"
    return pixels, np.array([int(p.stem.split("-")[1]) for p in paths])


def decoded(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed (N, 28, 28) of the decodable ones, and which were refused as 'no digit'."""
    out, refused = [], []
    for blob in blobs:
        try:
            out.append(preprocess(blob, MAX_PIXELS))
            refused.append(False)
        except ImageError:
            refused.append(True)
    return np.stack(out) if out else np.zeros((0, 28, 28), np.float32), np.array(refused)


def non_digits(model: Model, threshold: float) -> dict[str, object]:
    paths = files("other")
    pixels, refused = decoded([p.read_bytes() for p in paths])
    a = answers(model, pixels)
    confident = ~flagged(a, threshold)[::10]
    kinds = np.array([p.stem.split("-", 1)[1] for p in paths])[~refused]
    return {
        "drawings": len(paths),
        "refused": int(refused.sum()),
        "no_digit": int(a["no_digit"][::10].sum()),
        "low_confidence": int((~confident).sum()),
        "confident_digit": int(confident.sum()),
        "confident_rate": float(confident.sum() / len(paths)),
        "confident_kinds": sorted(set(kinds[confident].tolist())),
        "contradictions": int((a["sum"] != a["digit"] + a["number"]).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = Model(args.model, DeviceChoice(torch.device("cpu"), "benchmark"))
    threshold = float(model.metadata.get("calibration", {}).get("low_confidence_threshold", FALLBACK_THRESHOLD))
    test = load_sample().test
    uploads = user_style_uploads(test.images, test.labels, seed=0)
    drawn = {half: drawings(paths) for half, paths in drawn_halves().items()}
    writers, writer_labels = other_writers()
    sets = {
        "MNIST test split, 28x28 as trained": score(
            model, test.images.astype(np.float32) / 255, test.labels, threshold
        ),
        "MNIST test split, as PNG uploads": score(
            model, np.stack([preprocess(png_bytes(i), MAX_PIXELS) for i in test.images]), test.labels, threshold
        ),
        "user-style uploads of the test split": score(
            model, np.stack([preprocess(u[0], MAX_PIXELS) for u in uploads]), test.labels, threshold
        ),
        DRAWN_REPORT: score(model, *drawn["report"], threshold),
        "drawn on the page, dev half (recipes are chosen on it)": score(model, *drawn["dev"], threshold),
        "other writers: UCI optical digits as 64x64 scans": score(
            model, np.stack([preprocess(png, MAX_PIXELS) for png in writers]), writer_labels, threshold
        ),
    }
    result = {
        "model": args.model.name,
        "sha256": model.sha256,
        "threshold": threshold,
        "sets": sets,
        "non_digits": non_digits(model, threshold),
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.write_text(report(result))
    print(report(result))


def report(r: dict) -> str:  # type: ignore[type-arg]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        "# Accuracy where people meet the network",
        "",
        f"Model {r['model']} (sha256 {r['sha256'][:12]}), low-confidence threshold {r['threshold']:.4f} "
        "(the card's). Regenerate: `python -m benchmarks.drawn_set && python -m benchmarks.accuracy`.",
        "Every image is asked with all ten numbers through app.model.Model.predict; files go through app.preprocess.",
        "",
        "| set | images | digit acc | sum acc | contradictions | heads disagree | ECE uncal. | ECE | "
        "errors flagged | right flagged | no_digit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sets"].items():
        lines.append(
            f"| {name} | {s['images']:,} | {pct(s['accuracy'])} | {pct(s['sum_accuracy'])} | {s['contradictions']} "
            f"| {s['heads_disagree']} | {s['ece_uncalibrated']:.4f} | {s['ece']:.4f} | {pct(s['flagged_errors'])} "
            f"| {pct(s['flagged_right'])} | {pct(s['no_digit'])} |"
        )
    drawn = r["sets"][DRAWN_REPORT]
    lines += [
        "",
        "Drawn digits (report half), accuracy per digit: "
        + ", ".join(f"{d}: {pct(v)}" for d, v in drawn["per_digit"].items()),
        "",
        "Drawn digits (report half), confusions (true->read: count): "
        + (", ".join(f"{k}: {v}" for k, v in drawn["confusions"].items()) or "none"),
        "",
    ]
    n = r["non_digits"]
    lines.append(
        f"Non-digits drawn on the page (letters, shapes, scribbles): {n['drawings']}; refused by preprocessing "
        f"{n['refused']}, no_digit (the detector) {n['no_digit']}, answered with low confidence (no_digit included) "
        f"{n['low_confidence']}, answered as a confident digit "
        f"{n['confident_digit']} ({pct(n['confident_rate'])}; kinds: {', '.join(n['confident_kinds']) or 'none'}); "
        f"contradictions {n['contradictions']}."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
