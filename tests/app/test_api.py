"""The service through HTTP, with its lifespan running and the shipped model on CPU."""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from app import decoder as decoder_module
from app.main import create_app
from app.settings import Settings
from tests.support.digits import Sample
from tests.support.fakes import ConstantDigit, write_checkpoint
from tests.support.service import SHIPPED_MODEL, png_bytes, wait_ready


def post(client: TestClient, image: bytes | None, number: object = 3, **kwargs: object):  # type: ignore[no-untyped-def]
    files = {"image": ("digit.png", image, "image/png")} if image is not None else None
    data = {"number": str(number)} if number is not None else None
    return client.post("/predict", files=files, data=data, **kwargs)  # type: ignore[arg-type]


def test_recognises_real_test_digits_and_sums_them(client: TestClient, sample: Sample) -> None:
    labels = sample.test.labels
    picks = [int(i) for digit in range(10) for i in np.flatnonzero(labels == digit)[:10]]  # 100 images
    correct = 0
    for k, i in enumerate(picks):
        number = k % 10
        response = post(client, png_bytes(sample.test.images[i]), number)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["number"] == number
        assert body["sum"] == body["digit"] + number  # the network's sum head agrees with its digit head
        assert len(body["digit_probabilities"]) == 10
        assert body["digit_confidence"] == pytest.approx(body["digit_probabilities"][body["digit"]], abs=1e-6)
        if body["heads_agree"]:  # a split is decided jointly: then the digit head's own top may lose
            assert body["digit_confidence"] == pytest.approx(max(body["digit_probabilities"]), abs=1e-6)
        correct += body["digit"] == labels[i]
    assert correct >= 98


def test_answer_fields_timing_and_request_id(client: TestClient, sample: Sample) -> None:
    response = post(client, png_bytes(sample.test.images[0]), 4, headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    assert set(response.json()) >= {
        "digit",
        "sum",
        "number",
        "digit_confidence",
        "sum_confidence",
        "digit_probabilities",
        "low_confidence",
    }
    timing = response.headers["Server-Timing"]
    assert all(f"{name};dur=" in timing for name in ("decode", "queue", "inference"))
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.json()["input_image"] is None


def test_debug_returns_the_28x28_image_the_network_saw(client: TestClient, sample: Sample) -> None:
    response = post(client, png_bytes(sample.test.images[0]), 1, params={"debug": "true"})
    url = response.json()["input_image"]
    assert url.startswith("data:image/png;base64,")
    seen = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert seen.size == (28, 28) and seen.mode == "L"


@pytest.mark.parametrize(
    ("number", "detail"),
    [
        (None, "number is required: send an integer from 0 to 9 as the form field 'number'."),
        ("abc", "number must be an integer from 0 to 9, got 'abc'."),
        ("3.5", "number must be an integer from 0 to 9, got '3.5'."),
        ("10", "number must be an integer from 0 to 9, got '10'."),
        ("-1", "number must be an integer from 0 to 9, got '-1'."),
    ],
)
def test_bad_number_is_422_with_a_sentence(client: TestClient, sample: Sample, number: object, detail: str) -> None:
    response = post(client, png_bytes(sample.test.images[0]), number)
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


def test_missing_image_is_422(client: TestClient) -> None:
    response = post(client, None, 3)
    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "image is required: send the picture as a multipart/form-data file field named 'image'."
    )


def test_not_an_image_is_415(client: TestClient) -> None:
    response = post(client, b"hello, this is text", 3)
    assert response.status_code == 415
    assert response.json()["detail"].endswith(".")


def test_image_over_the_pixel_cap_is_413(sample: Sample) -> None:
    app = create_app(Settings(model_path=SHIPPED_MODEL, device="cpu", max_pixels=256 * 256))
    big = png_bytes(np.zeros((300, 300), np.uint8))
    with TestClient(app) as small_cap:
        wait_ready(small_cap)
        response = post(small_cap, big, 3)
    assert response.status_code == 413
    assert "pixel" in response.json()["detail"].lower()


def test_body_over_the_upload_cap_is_413(client: TestClient) -> None:
    response = post(client, b"\0" * (5 * 1024 * 1024 + 1), 3)
    assert response.status_code == 413
    assert response.json()["detail"] == "The request body is larger than the 5.24288 MB limit; send a smaller image."


def test_blank_image_is_422_no_digit(client: TestClient) -> None:
    response = post(client, png_bytes(np.full((28, 28), 255, np.uint8)), 3)
    assert response.status_code == 422
    assert "no digit" in response.json()["detail"].lower()


def test_docs_and_openapi_are_served(client: TestClient) -> None:
    docs = client.get("/docs").text
    assert "swagger-ui" in docs and "/docs-static/swagger-ui-bundle.js" in docs and "cdn" not in docs
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]  # app/forms.py writes it, inline
    assert body["required"] and form["required"] == ["image", "number"]
    # OpenAPI 3.1 spells a file upload this way (3.0 said format: binary); Swagger UI 5 shows a file picker for it
    assert form["properties"]["image"]["type"] == "string"
    assert form["properties"]["image"]["contentMediaType"] == "application/octet-stream"
    assert form["properties"]["number"]["examples"] == [3]


def test_health_ready_model_and_metrics(client: TestClient, sample: Sample) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "reason": "ready"}
    card = client.get("/model").json()
    assert card["device"] == "cpu" and "DIGITSUM_DEVICE=cpu" in card["device_reason"]
    assert card["sha256"] == hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest()
    assert card["metadata"]["metrics"]["digit_accuracy"] >= 0.985  # tests/training/test_shipped_model.py: why
    post(client, png_bytes(sample.test.images[0]), 3)
    metrics = client.get("/metrics").text
    for name in (
        "digitsum_request_duration_seconds_bucket",
        "digitsum_queue_wait_seconds",
        "digitsum_batch_size",
        "digitsum_inference_seconds",
        "digitsum_requests_in_flight",
        "digitsum_model_info",
    ):
        assert name in metrics
    assert 'route="/predict"' in metrics


def test_readiness_stays_red_when_the_self_test_fails(tmp_path, sample: Sample) -> None:  # type: ignore[no-untyped-def]
    wrong = write_checkpoint(ConstantDigit(1), tmp_path / "always-one.pt")  # the self-test image is a 7
    with TestClient(create_app(Settings(model_path=wrong, device="cpu"))) as client:
        for _ in range(600):
            reason = client.get("/readyz").json()["reason"]
            if reason.startswith("self-test failed"):
                break
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 503
        assert reason == "self-test failed: selftest-7.png: expected digit 7, sum 9; got 1, 3"
        response = post(client, png_bytes(sample.test.images[0]), 3)
        assert response.status_code == 503
        assert response.json()["detail"].startswith("The model is not ready yet (self-test failed")


def test_thumbnails_are_preprocessed_with_their_batch_and_bigger_uploads_in_a_decoder_process(
    client: TestClient, sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: list[str] = []
    inline, in_process = decoder_module.to_mnist_each, decoder_module.DecoderProcess.round_trip
    loop_thread = client.portal.call(threading.current_thread)

    def with_the_batch(images):  # type: ignore[no-untyped-def]
        if images:  # a batch of decoded uploads finishes no thumbnail
            # one request at a time: each is a lone batch, run on the event loop (app/batching.py, lone_inline)
            where.append("loop" if threading.current_thread() is loop_thread else threading.current_thread().name)
        return inline(images)

    def in_a_process(*args):  # type: ignore[no-untyped-def]
        where.append("process")
        return in_process(*args)

    monkeypatch.setattr(decoder_module, "to_mnist_each", with_the_batch)
    monkeypatch.setattr(decoder_module.DecoderProcess, "round_trip", in_a_process)
    digit, label = sample.test.images[0], int(sample.test.labels[0])
    big = np.asarray(Image.fromarray(digit).resize((280, 280)))
    padded = io.BytesIO()  # 28x28 pixels, but more bytes than the event loop parses
    Image.fromarray(digit).save(padded, "PNG", pnginfo=text_chunk("x" * decoder_module.INLINE_MAX_BYTES))
    for image in (png_bytes(digit), png_bytes(big), padded.getvalue()):
        response = post(client, image, 1)
        assert response.status_code == 200, response.text
        assert response.json()["digit"] == label
    assert where == ["loop", "process", "process"]


def test_the_event_loop_runs_torch_on_the_configured_thread_count(client: TestClient) -> None:
    # a lone request's forward pass runs on the loop's thread; OpenMP keeps its thread count per thread
    assert client.portal.call(torch.get_num_threads) == 1


def text_chunk(text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", text)
    return info


def test_what_startup_built_is_frozen_out_of_the_garbage_collector(client: TestClient) -> None:
    # torch, the model and FastAPI are ~200k objects: a full collection walking them stalled the loop ~90 ms
    assert gc.get_freeze_count() > 100_000
