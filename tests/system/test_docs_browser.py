"""/docs end to end, offline: real uvicorn, Debian's headless Chromium, Swagger UI's "Try it out" on POST /predict.

Swagger UI's JavaScript and CSS must come from the service itself (no CDN is reachable here, in CI or on an
air-gapped GPU host), and its form must offer a file picker for `image`. The screenshot is artifacts/docs.png.

    pytest tests/system/test_docs_browser.py        # about 15 s on 2 busy CPU cores (6 s of it starting the service)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.digits import Sample
from tests.support.live_server import LiveServer, live_server
from tests.support.service import ROOT, png_bytes

ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.slow  # without chromium this fails, it never skips
expect.set_options(timeout=15_000)  # two shared CPU cores: the first forward pass can take a while


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    ARTIFACTS.mkdir(exist_ok=True)
    with live_server(ARTIFACTS / "docs-uvicorn.log", env={"DIGITSUM_TORCH_THREADS": "1"}) as server:
        yield server


@pytest.fixture
def docs(server: LiveServer) -> Iterator[Page]:
    """/docs in Chromium, with every request that leaves the service and every page error in page.problems."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        problems: list[str] = []

        def off_origin(request: Request) -> None:
            if not request.url.startswith((server.url, "data:")):
                problems.append(f"off-origin {request.url}")

        page.on("request", off_origin)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.problems = problems  # type: ignore[attr-defined]
        page.goto(server.url + "/docs")
        yield page
        browser.close()


def test_try_it_out_uploads_a_test_digit_and_shows_the_sum(docs: Page, sample: Sample, tmp_path: Path) -> None:
    label = int(sample.test.labels[0])
    digit_png = tmp_path / f"test-0-label-{label}.png"
    digit_png.write_bytes(png_bytes(sample.test.images[0]))

    operation = docs.locator("#operations-prediction-predict_predict_post")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    image = operation.locator("tr[data-property-name=image] input")
    number = operation.locator("tr[data-property-name=number] input")
    expect(image).to_have_attribute("type", "file")  # a picker, not a text box for a string
    expect(number).to_have_value("3")  # the schema's example

    image.set_input_files(digit_png)
    number.fill("4")
    with docs.expect_response(lambda r: "/predict" in r.url and r.request.method == "POST") as response:
        operation.get_by_role("button", name="Execute").click()
    assert response.value.status == 200, response.value.text()

    shown = operation.locator(".live-responses-table .response")
    expect(shown.locator(".response-col_status")).to_have_text("200")
    body = shown.locator(".response-col_description pre").first
    expect(body).to_contain_text(re.compile(rf'"digit": {label},\s'))  # pretty-printed by Swagger UI
    expect(body).to_contain_text(re.compile(rf'"sum": {label + 4},\s'))
    body.scroll_into_view_if_needed()
    docs.screenshot(path=ARTIFACTS / "docs.png")
    assert docs.problems == []  # type: ignore[attr-defined]
