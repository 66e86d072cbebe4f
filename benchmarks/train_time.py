"""Time the default training run on the sample split and report it with the model's accuracy and CPU cost.

    python benchmarks/train_time.py            # trains into a temp dir; the shipped model is untouched
    python benchmarks/train_time.py --runs 3   # several seeds: the spread of accuracy and time

Writes a markdown table to stdout and to benchmarks/results/train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def train_once(seed: int, out_dir: Path) -> dict[str, Any]:
    out = out_dir / f"seed{seed}.pt"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "training", "--dataset", "sample", "--seed", str(seed), "--out", str(out)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    card = json.loads(out.with_suffix(".json").read_text())
    return {
        "seed": seed,
        "wall_s": wall,
        **card["metrics"],
        **{f"cpu_{k}": v for k, v in card["cpu_inference"].items()},
        "epochs": card["training"]["epochs_run"],
        "train_s": card["training"]["seconds"],
        "detector_s": card.get("detector", {}).get("seconds", 0.0),
        "parameters": card["architecture"]["parameters"],
        "detector_parameters": card["architecture"].get("detector_parameters", 0),
    }


def row(r: dict[str, Any]) -> str:
    cells = [r["seed"], f"{r['wall_s']:.0f}", f"{r['train_s']:.0f}", f"{r['detector_s']:.0f}", r["epochs"],
             f"{100 * r['digit_accuracy']:.2f}%", f"{100 * r['sum_accuracy']:.2f}%",
             f"{r['parameters']:,} + {r['detector_parameters']:,}", f"{r['cpu_ms_per_image_batch1']:.3f}",
             f"{r['cpu_ms_per_image_batch256']:.3f}"]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [train_once(seed, Path(tmp)) for seed in range(args.runs)]
    lines = [
        f"Default training on the sample split, {os.cpu_count()} CPU cores, `python -m training --dataset sample`:",
        "",
        "| seed | wall time (s) | of which the digit network (s) | of which the non-digit detector (s) | epochs "
        "| digit acc | sum acc (x10 integers) | params (network + detector) | CPU ms/image, batch 1 "
        "| CPU ms/image, batch 256 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row(r) for r in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "train.md").write_text(report)


if __name__ == "__main__":
    main()
