"""The drawn dev half by source image, and the same strokes drawn by training/page.py instead of the browser.

    python -m benchmarks.drawn_sources CHECKPOINTS...      # -> benchmarks/results/drawn_sources.md

benchmarks/drawn_set.py draws each of 100 held-out training images six times; the dev half, on which recipes are
chosen, is 50 of them. So its accuracy moves in steps of a source's six drawings, and a hard source counts six
times. This lists, per checkpoint, the dev sources it gets wrong. It also re-derives every drawing's strokes from
the set's seed and draws them again with training/page.py's renderer: a checkpoint that reads both alike owes its
errors to the digits, not to the browser. It needs the drawn set on disk, made with drawn_set.py's defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.model import DeviceChoice, Model
from app.preprocess import to_mnist
from benchmarks.accuracy import drawings, files
from benchmarks.drawn_set import digit_jobs
from benchmarks.recipes import checkpoints_cli, write_table
from training.page import render

RESULTS = Path(__file__).parent / "results" / "drawn_sources.md"


def main(paths: list[Path], out: Path = RESULTS) -> None:
    torch.set_num_threads(2)
    browser, labels = drawings(files("digits"))
    jobs = digit_jobs(len(labels), np.random.default_rng(0))  # drawn_set.py's default seed
    assert [job.label for job in jobs] == labels.tolist(), "data/drawn was made with other settings: make it again"
    redrawn = np.stack([to_mnist(render(job.strokes)) for job in jobs])
    dev = np.arange(len(jobs)) % 2 == 0
    sources, truth = np.array([job.source for job in jobs])[dev], labels[dev]
    lines = [
        "# The drawn dev half by source, browser against training/page.py",
        "",
        f"Regenerate: `python -m benchmarks.drawn_sources{'' if out == RESULTS else f' --out {out}'} CHECKPOINTS...`. "
        "Every drawing is asked with the number 0, as benchmarks/recipes.py asks. Dev half: "
        f"{dev.sum()} drawings of {len(set(sources))} source images. The same strokes drawn by "
        f"training/page.py differ from the browser's uploads, both preprocessed, by "
        f"{np.abs(browser - redrawn).mean():.3f} per pixel on average (pixels in [0, 1]).",
        "",
        "| checkpoint | dev acc, browser | dev acc, training/page.py | dev sources with errors | errors by source "
        "(digit #source: wrong of its drawings) |",
        "|---|---|---|---|---|",
    ]
    for path in paths:
        model = Model(path, DeviceChoice(torch.device("cpu"), "drawn sources"))
        wrong, page_wrong = (
            np.array([a.digit for a in model.predict(pixels[dev], [0] * int(dev.sum()))]) != truth
            for pixels in (browser, redrawn)
        )
        by_source = [
            f"{truth[sources == k][0]} #{k}: {wrong[sources == k].sum()}/{(sources == k).sum()}"
            for k in sorted(set(sources[wrong].tolist()))
        ]
        lines.append(
            f"| {path} | {100 * (1 - wrong.mean()):.2f}% | {100 * (1 - page_wrong.mean()):.2f}% "
            f"| {len(by_source)} of {len(set(sources))} | {', '.join(by_source) or 'none'} |"
        )
    write_table(lines, out)


if __name__ == "__main__":
    checkpoints_cli(main, "python -m benchmarks.drawn_sources", __doc__, RESULTS)
