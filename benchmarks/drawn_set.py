"""Build the drawn-digit and non-digit sets the way users make them: pointer strokes on the real page, in Chromium.

    python -m benchmarks.drawn_set                 # data/drawn/: 600 digits + 100 non-digits (20 min on 2 busy cores)
    python -m benchmarks.drawn_set --digits 200    # a quicker, smaller set

Digits: the pen paths (skeletons) of the 100 training images that the default recipe holds out for
calibration (`--holdout-per-digit 10`: the last 10 of each digit of the sample's training split; never test
data), so no model trained by it has seen them, nor their drawings. Each is
replayed with the mouse 6 times at random sizes (25-85% of the canvas) and positions, so the page's fixed
brush makes strokes thin to thick. Non-digits: letters, shapes and scribbles drawn the same way. What the
page uploads on Predict (its canvas PNG) is saved as data/drawn/{digits,other}/NNNN-LABEL.png.
"""

from __future__ import annotations

import argparse
import base64
import math
from dataclasses import dataclass

import numpy as np
from playwright.sync_api import Page, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.digits import load_sample
from tests.support.live_server import live_server
from tests.support.service import ROOT
from training.strokes import Stroke, digit_strokes

OUT = ROOT / "data" / "drawn"
HELD_OUT_PER_DIGIT = 10  # training/config.py holdout_per_digit: these images train nothing
STEP_PX = 10  # the mouse moves at most this far between pointer events (a hand at 60 events/s moves 5-15 px)


def held_out_digits(per_digit: int = HELD_OUT_PER_DIGIT) -> tuple[np.ndarray, np.ndarray]:
    """The last `per_digit` training images of each digit: what `--holdout-per-digit` keeps out of training."""
    train = load_sample().train
    index = np.concatenate([np.flatnonzero(train.labels == d)[-per_digit:] for d in range(10)])
    return train.images[index], train.labels[index]


@dataclass(frozen=True)
class DigitJob:
    source: int  # which of held_out_digits() is drawn
    label: int
    strokes: list[Stroke]


def digit_jobs(count: int, rng: np.random.Generator) -> list[DigitJob]:
    """The set's digit drawings, in file order: drawing i is source order[i % 100] at a random size and place.
    Even file numbers (the dev half) and odd ones (the report half) draw different sources."""
    images, labels = held_out_digits()
    order = rng.permutation(len(labels))
    sources = [int(order[i % len(labels)]) for i in range(count)]
    return [DigitJob(k, int(labels[k]), digit_strokes(images[k], rng)) for k in sources]


def letter_strokes(rng: np.random.Generator) -> tuple[str, list[Stroke]]:
    """A letter, a shape or a scribble, in a random box of the canvas."""
    shapes: dict[str, list[Stroke]] = {
        "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.25, 0.55), (0.75, 0.55)]],
        "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, 0.5), (0.8, 0.5)]],
        "F": [[(1, 0), (0, 0), (0, 1)], [(0, 0.5), (0.8, 0.5)]],
        "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
        "K": [[(0, 0), (0, 1)], [(1, 0), (0, 0.55), (1, 1)]],
        "M": [[(0, 1), (0, 0), (0.5, 0.6), (1, 0), (1, 1)]],
        "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
        "R": [[(0, 1), (0, 0), (0.8, 0.05), (0.9, 0.25), (0.8, 0.45), (0, 0.5), (1, 1)]],
        "W": [[(0, 0), (0.25, 1), (0.5, 0.4), (0.75, 1), (1, 0)]],
        "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
        "Y": [[(0, 0), (0.5, 0.5), (1, 0)], [(0.5, 0.5), (0.5, 1)]],
        "triangle": [[(0.5, 0), (1, 1), (0, 1), (0.5, 0)]],
        "square": [[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
        "star": [[(0.5, 0), (0.8, 1), (0, 0.35), (1, 0.35), (0.2, 1), (0.5, 0)]],
        "cross": [[(0.5, 0), (0.5, 1)], [(0, 0.5), (1, 0.5)]],
        "spiral": [[(0.5 + t / 14 * math.cos(t), 0.5 + t / 14 * math.sin(t)) for t in np.linspace(0, 6.5, 40)]],
        "hash": [[(0.3, 0), (0.3, 1)], [(0.7, 0), (0.7, 1)], [(0, 0.35), (1, 0.35)], [(0, 0.65), (1, 0.65)]],
    }
    names = [*shapes, "scribble"]
    name = names[int(rng.integers(len(names)))]
    if name == "scribble":
        walk = np.cumsum(rng.normal(0, 0.18, (25, 2)), axis=0)
        walk = (walk - walk.min(0)) / max(float(np.ptp(walk)), 1e-6)
        strokes = [[(float(x), float(y)) for x, y in walk]]
    else:
        strokes = shapes[name]
    size = rng.uniform(0.3, 0.85)
    x0, y0 = rng.uniform(0.06, 0.94 - size), rng.uniform(0.06, 0.94 - size)
    aspect = rng.uniform(0.6, 1.0)
    return name, [[(x0 + x * size * aspect, y0 + y * size) for x, y in stroke] for stroke in strokes]


def draw(page: Page, strokes: list[Stroke]) -> None:
    """Pointer down, small moves, up, in page pixels of the canvas's content box (inside its border)."""
    left, top, width, height = page.evaluate(
        """() => { const p = document.getElementById("pad"), b = p.getBoundingClientRect();
                   return [b.left + p.clientLeft, b.top + p.clientTop, p.clientWidth, p.clientHeight]; }"""
    )
    for stroke in strokes:
        points = [(float(left + u * width), float(top + v * height)) for u, v in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            steps = max(1, math.ceil(math.dist((x0, y0), (x1, y1)) / STEP_PX))
            for k in range(1, steps + 1):
                page.mouse.move(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps)
        page.mouse.up()


# Chromium does not show Playwright a multipart body that holds a Blob, so the page's fetch is watched instead:
# the image field of the FormData it sends is kept, byte for byte, in window.sentImage (base64).
WATCH_UPLOADS = """() => {
    const send = window.fetch;
    window.fetch = async (url, options) => {
        const image = options?.body instanceof FormData ? options.body.get("image") : null;
        if (image) {
            const bytes = new Uint8Array(await image.arrayBuffer());
            window.sentImage = btoa(Array.from(bytes, b => String.fromCharCode(b)).join(""));
        }
        return send(url, options);
    };
}"""


def uploaded_png(page: Page) -> bytes:
    """Press Predict and return the image the page sent."""
    page.evaluate("window.sentImage = null")
    page.get_by_role("button", name="Predict").click()  # the answer is not needed: the next Clear drops it
    sent = (
        "async () => { while (!window.sentImage) await new Promise(r => setTimeout(r, 5)); return window.sentImage; }"
    )
    return base64.b64decode(page.evaluate(sent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--digits", type=int, default=600)
    parser.add_argument("--others", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    jobs: list[tuple[str, str, list[Stroke]]] = [
        ("digits", str(job.label), job.strokes) for job in digit_jobs(args.digits, rng)
    ]
    jobs += [("other", *letter_strokes(rng)) for _ in range(args.others)]
    for kind in ("digits", "other"):
        (OUT / kind).mkdir(parents=True, exist_ok=True)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    with live_server(ROOT / "artifacts" / "drawn-set-uvicorn.log") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url + "/")
        page.evaluate(WATCH_UPLOADS)
        page.get_by_label("Predict when I lift the pen").uncheck()
        for i, (kind, label, strokes) in enumerate(jobs):
            page.get_by_role("button", name="Clear").click()
            draw(page, strokes)
            (OUT / kind / f"{i:04d}-{label}.png").write_bytes(uploaded_png(page))
            if i % 100 == 0:
                print(f"{i}/{len(jobs)}", flush=True)
        browser.close()
    print(f"wrote {len(jobs)} drawings under {OUT}")


if __name__ == "__main__":
    main()
