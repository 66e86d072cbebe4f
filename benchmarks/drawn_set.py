"""Build the drawn-digit and non-digit sets the way users make them: pointer strokes on the real page, in Chromium.

    python -m benchmarks.drawn_set                 # data/drawn/: 600 digits + 100 non-digits (20 min on 2 busy cores)
    python -m benchmarks.drawn_set --digits 200    # a quicker, smaller set

Digits: the pen paths (skeletons) of the 400 training images that `--holdout-per-digit 40` holds out for
calibration (the last 40 of each digit of the sample's training split; never test data), each
replayed with the mouse at 1-2 random sizes (25-85% of the canvas) and positions, so the page's fixed
brush makes strokes thin to thick. Non-digits: letters, shapes and scribbles drawn the same way. What the
page uploads on Predict (its canvas PNG) is saved as data/drawn/{digits,other}/NNNN-LABEL.png.
"""

from __future__ import annotations

import argparse
import base64
import math

import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright
from skimage.morphology import skeletonize

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.digits import load_sample
from tests.support.live_server import live_server
from tests.support.service import ROOT

OUT = ROOT / "data" / "drawn"
HELD_OUT_PER_DIGIT = 40  # training/config.py holdout_per_digit: these images train nothing
STEP_PX = 10  # the mouse moves at most this far between pointer events (a hand at 60 events/s moves 5-15 px)
Stroke = list[tuple[float, float]]  # (x, y) in [0, 1] of the canvas

NEIGHBOURS = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]  # 4-neighbours first


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    train = load_sample().train
    index = np.concatenate([np.flatnonzero(train.labels == d)[-HELD_OUT_PER_DIGIT:] for d in range(10)])
    return train.images[index], train.labels[index]


def skeleton(digit: np.ndarray) -> np.ndarray:
    """(28, 28) uint8 -> (56, 56) bool centre line (as training/strokes.py makes it)."""
    big = np.asarray(Image.fromarray(digit).resize((56, 56), Image.Resampling.BILINEAR), dtype=np.float32)
    return skeletonize(big / 255 > 0.4)


def trace(skel: np.ndarray) -> list[np.ndarray]:
    """Skeleton pixels -> pen paths (k, 2) as (row, col): walk from endpoints (then any pixel, for loops)."""
    on = {(int(r), int(c)) for r, c in zip(*np.nonzero(skel), strict=True)}
    todo = set(on)

    def around(p: tuple[int, int], pool: set[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(p[0] + dr, p[1] + dc) for dr, dc in NEIGHBOURS if (p[0] + dr, p[1] + dc) in pool]

    paths = []
    while todo:
        ends = [p for p in todo if len(around(p, on)) <= 1]
        start = min(ends or todo)  # top-most end first, as people start at the top
        drawn = around(start, on - todo)  # a branch starts where the pen already went: join it
        path, here = [*drawn[:1], start], start
        todo.discard(start)
        while nxt := around(here, todo):
            here = nxt[0]
            todo.discard(here)
            path.append(here)
        if len(path) > 8 and max(abs(path[-1][0] - path[0][0]), abs(path[-1][1] - path[0][1])) <= 1:
            path.append(path[0])  # a loop (0, 6, 8, 9): close it
        elif back := around(here, on - set(path)):
            path.append(back[0])  # the walk ended beside earlier ink (the middle of a 3): touch it
        if len(path) >= 3:
            paths.append(smooth(np.array(path, dtype=np.float32)))
    return paths


def smooth(path: np.ndarray, window: int = 5) -> np.ndarray:
    """A moving average takes the pixel staircase out of a traced path; its two ends stay put."""
    if len(path) <= window:
        return path
    kernel = np.ones(window) / window
    padded = np.concatenate([np.repeat(path[:1], window // 2, 0), path, np.repeat(path[-1:], window // 2, 0)])
    out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], 1)
    out[0], out[-1] = path[0], path[-1]
    return out


def digit_strokes(digit: np.ndarray, rng: np.random.Generator) -> list[Stroke]:
    """The digit's pen paths, scaled to a random size and placed at a random spot of the canvas."""
    paths = trace(skeleton(digit))
    points = np.concatenate(paths)
    top, left = points.min(0)
    extent = max(float(np.ptp(points[:, 0])), float(np.ptp(points[:, 1])), 1.0)
    size = rng.uniform(0.25, 0.85)  # share of the canvas the digit's long side covers
    h, w = np.ptp(points[:, 0]) / extent * size, np.ptp(points[:, 1]) / extent * size
    y0, x0 = rng.uniform(0.06, 0.94 - h), rng.uniform(0.06, 0.94 - w)
    return [
        [(x0 + (c - left) / extent * size, y0 + (r - top) / extent * size) for r, c in path[::2].tolist() + [path[-1]]]
        for path in paths
    ]


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
    images, labels = held_out_digits()
    jobs: list[tuple[str, str, list[Stroke]]] = []
    order = rng.permutation(len(labels))
    for i in range(args.digits):
        k = int(order[i % len(labels)])
        jobs.append(("digits", str(labels[k]), digit_strokes(images[k], rng)))
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
