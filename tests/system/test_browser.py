"""The draw-a-digit page at GET /, end to end: the real service in a subprocess, a real headless Chromium.

The browser is Debian's /usr/bin/chromium driven by Playwright for Python; nothing is downloaded.
Digits are drawn the way a person draws them, by pointer events along strokes; screenshots land in
artifacts/browser/ (docs/screenshot.png is artifacts/browser/desktop-7.png from a run, copied by hand).

    pytest tests/system/test_browser.py        # about 30 s on 2 busy CPU cores (6 s of it starting the service)
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.preprocess import to_mnist
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.digits import Sample
from tests.support.service import ROOT, png_bytes

ARTIFACTS = ROOT / "artifacts" / "browser"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.slow  # CI installs Debian's chromium; without it these fail, they never skip
expect.set_options(timeout=15_000)  # two shared CPU cores: the first forward pass can take a while

Stroke = list[tuple[float, float]]  # points as fractions of the canvas side, (0, 0) top left


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> Stroke:
    """From the top, anticlockwise as most people write a 0, overlapping a little where it closes."""
    return [(cx - rx * math.sin(t), cy - ry * math.cos(t)) for t in (2.15 * math.pi * i / n for i in range(n + 1))]


ONE: list[Stroke] = [[(0.54, 0.15), (0.51, 0.50), (0.47, 0.85)]]  # slightly slanted
SEVEN: list[Stroke] = [[(0.27, 0.22), (0.50, 0.21), (0.73, 0.20), (0.61, 0.43), (0.52, 0.64), (0.45, 0.85)]]
ZERO: list[Stroke] = [ellipse(0.5, 0.5, 0.21, 0.33)]
FOUR: list[Stroke] = [[(0.55, 0.15), (0.28, 0.62), (0.75, 0.62)], [(0.60, 0.38), (0.58, 0.86)]]  # pen lifted once
WAVE: list[Stroke] = [[(0.15 + 0.7 * t, 0.5 + 0.15 * math.sin(4 * math.pi * t)) for t in np.linspace(0, 1, 40)]]
DRAWN = [(1, 5, ONE), (7, 3, SEVEN), (0, 9, ZERO), (4, 0, FOUR)]  # (digit, number to add, strokes)


# ---- the service and the browser ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"uvicorn exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    pytest.fail(f"{url}/readyz not 200 within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`python -m uvicorn app.main:app` on a free port, on CPU, ready; its log is artifacts/browser/uvicorn.log."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), ARTIFACTS / "uvicorn.log"
    env = {**os.environ, "DIGITSUM_DEVICE": "cpu", "DIGITSUM_TORCH_THREADS": "1"}
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, server: str, **context_options: object) -> Page:
    """The page at /, with every console error, page error and off-origin request collected in page.problems."""
    page = browser.new_context(**{"viewport": DESKTOP, **context_options}).new_page()  # type: ignore[arg-type]
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda r: r.url.startswith((server, "data:")) or problems.append(f"off-origin {r.url}"))
    page.problems = problems  # type: ignore[attr-defined]
    page.goto(server + "/")
    return page


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    page = open_page(browser, server)
    yield page
    page.context.close()
    # A 4xx the test provoked logs "Failed to load resource"; anything else (a CSP violation, a JS error) fails.
    assert [p for p in page.problems if "status of 422" not in p] == []  # type: ignore[attr-defined]


# ---- driving the page -------------------------------------------------------------------------------------


def along(page: Page, stroke: Stroke, step_px: float = 8) -> list[tuple[float, float]]:
    """A stroke in page pixels, cut into moves of at most step_px, as a hand's pointer events arrive."""
    pad = page.locator("#pad")
    pad.scroll_into_view_if_needed()  # on a phone, picking the number below it scrolls it partly away
    box = pad.bounding_box()
    assert box is not None
    points = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in stroke]
    dense = points[:1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        steps = max(1, math.ceil(math.dist((x0, y0), (x1, y1)) / step_px))
        dense += [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps) for k in range(1, steps + 1)]
    return dense


def draw(page: Page, strokes: list[Stroke]) -> None:
    """Mouse down, many small moves, up: the pointer events a hand makes, big on the canvas."""
    for stroke in strokes:
        (x, y), *rest = along(page, stroke)
        page.mouse.move(x, y)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(x, y)
        page.mouse.up()


def predict(page: Page, press: bool = True) -> dict:
    """Press Predict (or wait for the automatic prediction) and return the JSON the page received."""
    with page.expect_response(lambda r: "/predict" in r.url) as response:
        if press:
            page.get_by_role("button", name="Predict").click()
    return response.value.json()


def predict_with_key(page: Page, key: str) -> dict:
    with page.expect_response(lambda r: "/predict" in r.url and r.request.method == "POST") as response:
        page.keyboard.press(key)
    return response.value.json()


def pick(page: Page, number: int) -> None:
    page.get_by_role("radio", name=str(number), exact=True).check()


def save_seen(result: dict, name: str) -> None:
    """The 28x28 image the network saw, for a person to look at when a drawn digit is misread."""
    (ARTIFACTS / name).write_bytes(base64.b64decode(result["input_image"].split(",", 1)[1]))


def expect_result(page: Page, digit: int, number: int) -> None:
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#digit")).to_have_text(str(digit))
    expect(page.locator("#number-out")).to_have_text(str(number))
    expect(page.locator("#sum")).to_have_text(str(digit + number))
    expect(page.locator("#status")).to_contain_text(f"{digit} + {number} = {digit + number}")
    expect(page.locator("#bars li")).to_have_count(10)
    expect(page.locator("#seen")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))


# ---- tests ------------------------------------------------------------------------------------------------


def test_page_is_self_contained_under_a_strict_content_security_policy(server: str) -> None:
    with urllib.request.urlopen(server + "/") as response:
        csp = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "img-src 'self' data:" in csp
    assert "<script>" not in html and "style=" not in html and "http" not in html  # no inline code, no CDN
    for asset in ("app.js", "style.css", "favicon.svg"):
        with urllib.request.urlopen(f"{server}/static/{asset}") as response:
            assert response.status == 200
    with urllib.request.urlopen(server + "/openapi.json") as response:
        assert "/" not in json.load(response)["paths"]  # the page is for people, not in the API schema


@pytest.mark.parametrize(("digit", "number", "strokes"), DRAWN, ids=[f"drawn-{d}" for d, _, _ in DRAWN])
def test_a_drawn_digit_is_recognised_and_added(page: Page, digit: int, number: int, strokes: list[Stroke]) -> None:
    page.get_by_label("Predict when I lift the pen").uncheck()  # only the button predicts here
    pick(page, number)
    draw(page, strokes)
    result = predict(page)
    save_seen(result, f"seen-drawn-{digit}.png")
    assert (result["digit"], result["sum"]) == (digit, digit + number), "see artifacts/browser/seen-drawn-*.png"
    expect_result(page, digit, number)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=ARTIFACTS / f"desktop-{digit}.png")


@pytest.mark.parametrize(("digit", "strokes"), [(0, ZERO), (4, FOUR), (7, SEVEN)], ids=["0", "4", "7"])
def test_training_draws_strokes_as_this_page_does(page: Page, digit: int, strokes: list[Stroke]) -> None:
    """training/page.py makes the page's drawings for training: the same strokes must give what the network sees."""
    from training.page import render  # the service's tests never need training/; this one checks it against the page

    draw(page, strokes)
    result = predict(page)
    seen_png = base64.b64decode(result["input_image"].split(",", 1)[1])
    seen = np.asarray(Image.open(io.BytesIO(seen_png)), dtype=np.float32) / 255
    ours = to_mnist(render(strokes))
    # centring by the centre of mass rounds to whole pixels, so the two may sit one pixel apart
    apart = min(np.abs(np.roll(seen, (dy, dx), (0, 1)) - ours).mean() for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert result["digit"] == digit
    assert apart < 0.03 and abs(ours.sum() / seen.sum() - 1) < 0.1, (apart, ours.sum(), seen.sum())


def test_lifting_the_pen_predicts_by_itself(page: Page) -> None:
    pick(page, 2)
    draw(page, ONE)
    result = predict(page, press=False)
    assert result["digit"] == 1
    expect_result(page, 1, 2)


def test_keyboard_alone_changes_the_number_and_predicts(page: Page) -> None:
    draw(page, ZERO)
    page.locator("input[name=number]:checked").focus()  # 3 is preselected
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("radio", name="4", exact=True)).to_be_checked()
    result = predict_with_key(page, "Enter")
    assert (result["digit"], result["number"]) == (0, 4)
    expect_result(page, 0, 4)


def test_an_uploaded_and_a_dropped_test_image_are_recognised(page: Page, sample: Sample, tmp_path: Path) -> None:
    first, second = (int(sample.test.labels[i]) for i in (0, 1))
    path = tmp_path / f"test-0-label-{first}.png"
    path.write_bytes(png_bytes(sample.test.images[0]))
    pick(page, 6)
    with page.expect_response(lambda r: "/predict" in r.url) as response:
        page.locator("#file").set_input_files(path)
    assert response.value.json()["digit"] == first
    expect_result(page, first, 6)

    data = base64.b64encode(png_bytes(sample.test.images[1])).decode()
    transfer = page.evaluate_handle(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        data,
    )
    with page.expect_response(lambda r: "/predict" in r.url) as response:
        page.locator("#drop").dispatch_event("drop", {"dataTransfer": transfer})
    assert response.value.json()["digit"] == second
    expect_result(page, second, 6)


def test_an_api_error_is_shown_as_a_sentence(page: Page, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(np.full((64, 64), 255, dtype=np.uint8)))
    with page.expect_response(lambda r: "/predict" in r.url) as response:
        page.locator("#file").set_input_files(blank)
    assert response.value.status == 422
    error = page.get_by_role("alert")
    expect(error).to_be_visible()
    expect(error).to_contain_text("No digit found")
    expect(page.locator("#result")).to_be_hidden()
    page.screenshot(path=ARTIFACTS / "desktop-error.png")


def test_a_blank_canvas_is_never_sent(page: Page) -> None:
    posts: list[str] = []
    page.on("request", lambda r: "/predict" in r.url and posts.append(r.url))
    page.get_by_role("button", name="Predict").click()
    draw(page, ONE)
    page.get_by_label("Predict when I lift the pen").uncheck()
    page.get_by_role("button", name="Clear").click()
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#status")).to_contain_text("draw a digit or upload a picture first")
    expect(page.get_by_role("alert")).to_be_hidden()
    page.wait_for_timeout(300)  # a request the click started would have been sent by now
    assert posts == []


def ink_centre(page: Page) -> tuple[float, float, int]:
    """Centre of the dark pixels of the canvas bitmap, in bitmap pixels, and their count."""
    return tuple(  # type: ignore[return-value]
        page.evaluate(
            """() => {
                const pad = document.getElementById("pad");
                const data = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
                let sx = 0, sy = 0, n = 0;
                for (let i = 0; i < data.length; i += 4) {
                    if (data[i] < 128) { const p = i / 4; sx += p % pad.width; sy += Math.floor(p / pad.width); n++; }
                }
                return [sx / n, sy / n, n];
            }"""
        )
    )


def content_point(page: Page, u: float, v: float) -> tuple[float, float, float]:
    """Page coordinates of the point (u, v) of the canvas content box (inside its border); bitmap px per CSS px."""
    x, y, scale = page.evaluate(
        """([u, v]) => {
            const pad = document.getElementById("pad");
            const box = pad.getBoundingClientRect();
            return [box.left + pad.clientLeft + u * pad.clientWidth, box.top + pad.clientTop + v * pad.clientHeight,
                    pad.width / pad.clientWidth];
        }""",
        [u, v],
    )
    return x, y, scale


def test_a_tap_leaves_a_dot_exactly_under_the_pointer(page: Page) -> None:
    page.get_by_label("Predict when I lift the pen").uncheck()
    page.locator("#pad").scroll_into_view_if_needed()
    assert page.evaluate("document.getElementById('pad').clientLeft") > 0  # the case that used to be off: a border
    x, y, _ = content_point(page, 0.25, 0.30)
    page.mouse.click(x, y)  # press and release without moving
    cx, cy, n = ink_centre(page)
    assert n > 300  # a disc of the pen's width (39 px across on the 560 px bitmap), not nothing
    assert abs(cx - 0.25 * 560) < 0.75 and abs(cy - 0.30 * 560) < 0.75  # under the pointer, not 2 px off
    result = predict(page)
    assert "digit" in result  # the dot was sent and answered, not refused as blank


def test_doubt_is_shown_when_the_heads_disagree(page: Page) -> None:
    """The service's answer when its heads split (tests/app/test_consistency.py builds such inputs for real)."""
    split = {
        "digit": 2, "sum": 5, "number": 3, "digit_confidence": 0.41, "sum_confidence": 0.7, "heads_agree": False,
        "low_confidence": True, "digit_probabilities": [0.01] * 2 + [0.41] + [0.01] * 4 + [0.52] + [0.01] * 2,
        "input_image": None,
    }  # fmt: skip
    page.route("**/predict*", lambda route: route.fulfill(json=split))
    page.get_by_label("Predict when I lift the pen").uncheck()
    draw(page, ONE)
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#hint")).to_be_visible()
    expect(page.locator("#hint")).to_contain_text("disagree")
    expect(page.locator("#result")).to_have_class(re.compile("unsure"))
    expect(page.locator("#status")).to_contain_text("Best guess 2")
    expect(page.locator("#status")).to_contain_text("2 + 3 = 5")


def test_a_wave_is_no_digit_and_the_page_says_so(page: Page) -> None:
    """The shipped model's detector on the real page: a wave is no digit, and the page says so beside its guess."""
    page.get_by_label("Predict when I lift the pen").uncheck()
    draw(page, WAVE)
    result = predict(page)
    assert result["no_digit"] is True and result["low_confidence"] is True
    assert result["sum"] == result["digit"] + result["number"]
    expect(page.locator("#hint")).to_be_visible()
    expect(page.locator("#hint")).to_contain_text("does not look like a digit")
    expect(page.locator("#status")).to_contain_text("Best guess")


def test_a_finger_draws_on_a_phone(browser: Browser, server: str) -> None:
    page = open_page(browser, server, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
        page.get_by_label("Predict when I lift the pen").uncheck()
        pick(page, 8)
        page.locator("#pad").scroll_into_view_if_needed()
        scrolled = page.evaluate("window.scrollY")
        touch_draw(page, SEVEN)
        assert page.evaluate("window.scrollY") == scrolled  # touch-action: none, the finger drew instead of scrolling
        result = predict(page)
        save_seen(result, "seen-finger-7.png")
        assert (result["digit"], result["sum"]) == (7, 15)
        expect_result(page, 7, 8)
        page.screenshot(path=ARTIFACTS / "phone-7.png", full_page=True)
        assert page.problems == []  # type: ignore[attr-defined]
    finally:
        page.context.close()


def touch_draw(page: Page, strokes: list[Stroke]) -> None:
    """Touch events through the DevTools protocol, as a finger sends them (page.mouse would be a mouse)."""
    cdp = page.context.new_cdp_session(page)
    for stroke in strokes:
        points = along(page, stroke)
        for kind, (x, y) in zip(["touchStart"] + ["touchMove"] * (len(points) - 1), points, strict=True):
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
