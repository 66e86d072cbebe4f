"""POST /predict/batch: many images in one request, answered in order, one bad image failing only itself."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import preprocess as preprocess_module
from tests.support import hostile_inputs as hi
from tests.support.digits import Sample
from tests.support.service import png_bytes

Files = list[tuple[str, tuple[str, bytes]]]


def files(*uploads: bytes) -> Files:
    return [("images", (f"{i}.png", upload)) for i, upload in enumerate(uploads)]


def test_each_image_is_answered_in_order_with_its_own_number(client: TestClient, sample: Sample) -> None:
    picks = [0, 150, 420, 777, 999]
    uploads = [png_bytes(sample.test.images[i]) for i in picks]
    numbers = [3, 0, 9, 5, 1]
    response = client.post("/predict/batch", files=files(*uploads), data={"numbers": [str(n) for n in numbers]})
    assert response.status_code == 200, response.text
    assert len(response.headers["X-Model-SHA256"]) == 12
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(picks)))
    for result, i, number in zip(results, picks, numbers, strict=True):
        single = client.post("/predict", files={"image": ("d.png", uploads[picks.index(i)])}, data={"number": number})
        assert result["status"] == 200 and result["detail"] is None
        assert result["prediction"] == single.json()  # the same answer as alone
        assert result["prediction"]["digit"] == int(sample.test.labels[i])


def test_uploads_decoded_in_processes_and_thumbnails_share_a_request(client: TestClient, sample: Sample) -> None:
    """Bigger uploads go to the decoder processes together while the thumbnails wait in the batch queue; each
    item gets the answer it gets alone."""
    picks = [3, 40, 250, 612]
    uploads = [
        png_bytes(np.asarray(Image.fromarray(sample.test.images[i]).resize((280, 280)))) if k % 2 else
        png_bytes(sample.test.images[i])
        for k, i in enumerate(picks)
    ]  # fmt: skip
    response = client.post("/predict/batch", files=files(*uploads), data={"numbers": "6"})
    assert response.status_code == 200, response.text
    for result, upload, i in zip(response.json()["results"], uploads, picks, strict=True):
        single = client.post("/predict", files={"image": ("d.png", upload)}, data={"number": 6}).json()
        assert result["prediction"] == single
        assert single["digit"] == int(sample.test.labels[i])


def test_one_number_applies_to_every_image(client: TestClient, sample: Sample) -> None:
    uploads = [png_bytes(sample.test.images[i]) for i in (0, 500)]
    results = client.post("/predict/batch", files=files(*uploads), data={"numbers": "4"}).json()["results"]
    assert [r["prediction"]["number"] for r in results] == [4, 4]


def test_a_bad_image_fails_alone_with_its_own_status_and_sentence(client: TestClient, sample: Sample) -> None:
    good = png_bytes(sample.test.images[0])
    uploads = [good, b"not an image", png_bytes(np.full((40, 40), 255, np.uint8)), hi.png_bomb(10_000, 5_000), good]
    response = client.post("/predict/batch", files=files(*uploads), data={"numbers": "2"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 415, 422, 413, 200]
    assert (
        results[1]["detail"]
        == "The upload is not an image in an accepted format; send a PNG, JPEG, WebP, BMP, GIF or TIFF image."
    )
    assert results[2]["detail"].startswith("No digit found in the image")
    assert "more than the limit of 40,000,000" in results[3]["detail"]
    assert all(r["prediction"] is None for r in results[1:4])


def test_more_images_than_a_batch_is_422(client: TestClient, sample: Sample) -> None:
    uploads = [png_bytes(sample.test.images[0])] * 65
    response = client.post("/predict/batch", files=files(*uploads), data={"numbers": "1"})
    assert (response.status_code, response.json()["detail"]) == (
        422,
        "images has 65 files; send at most 64 per request.",
    )


def test_numbers_that_do_not_match_the_images_are_422(client: TestClient, sample: Sample) -> None:
    uploads = [png_bytes(sample.test.images[0])] * 3
    response = client.post("/predict/batch", files=files(*uploads), data={"numbers": ["1", "2"]})
    assert (response.status_code, response.json()["detail"]) == (
        422,
        "numbers has 2 values for 3 images; send one per image, or a single one for all.",
    )
    response = client.post("/predict/batch", files=files(*uploads[:1]), data={"numbers": ["12"]})
    assert (response.status_code, response.json()["detail"]) == (422, "numbers must be integers from 0 to 9, got '12'.")


def test_missing_fields_and_a_body_that_is_not_a_form(client: TestClient, sample: Sample) -> None:
    response = client.post("/predict/batch", data={"numbers": "1"}, files=[("other", ("x", b"y"))])
    assert (response.status_code, response.json()["detail"]) == (
        422,
        "images is required: send each picture as a file field named 'images'.",
    )
    response = client.post("/predict/batch", json={"images": []})
    assert response.status_code == 415 and response.json()["detail"].startswith("The body is application/json")


def test_a_bug_in_one_thumbnails_preprocessing_fails_only_that_image(
    client: TestClient, sample: Sample, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Thumbnails are preprocessed in the batch thread, beside the others of their batch: an unexpected error in
    one is logged and answered like an undecodable file, and the rest of the batch is served."""
    real = preprocess_module._grayscale

    def broken_on_blank(image):  # type: ignore[no-untyped-def]
        if not np.asarray(image).any():
            raise RuntimeError("a bug")
        return real(image)

    stages = tuple(broken_on_blank if stage is real else stage for stage in preprocess_module.STAGES)
    monkeypatch.setattr(preprocess_module, "STAGES", stages)
    uploads = [
        png_bytes(sample.test.images[0]),
        png_bytes(np.zeros((28, 28), np.uint8)),
        png_bytes(sample.test.images[1]),
    ]
    with caplog.at_level(logging.ERROR, logger="digitsum"):
        results = client.post("/predict/batch", files=files(*uploads), data={"numbers": "2"}).json()["results"]
    assert [r["status"] for r in results] == [200, 415, 200]
    assert results[1]["detail"] == "The image could not be decoded; send a PNG or JPEG image."
    assert "preprocessing a thumbnail failed" in caplog.text


def test_a_bug_in_a_stage_run_for_the_whole_batch_fails_only_the_image_it_concerns(
    client: TestClient, sample: Sample, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The Otsu thresholds of a batch's thumbnails are computed together: when that raises, the images are retried
    one by one, and only the one that still fails gets an error."""
    real_otsu = preprocess_module._otsu

    def broken_together(arrays):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    def broken_on_one_size(values):  # type: ignore[no-untyped-def]
        if values.shape == (30, 30):
            raise RuntimeError("a bug")
        return real_otsu(values)

    monkeypatch.setattr(preprocess_module, "_otsu_each", broken_together)
    monkeypatch.setattr(preprocess_module, "_otsu", broken_on_one_size)
    odd = np.zeros((30, 30), np.uint8)
    odd[1:29, 1:29] = sample.test.images[2]
    uploads = [png_bytes(sample.test.images[0]), png_bytes(odd), png_bytes(sample.test.images[1])]
    with caplog.at_level(logging.ERROR, logger="digitsum"):
        results = client.post("/predict/batch", files=files(*uploads), data={"numbers": "2"}).json()["results"]
    assert [r["status"] for r in results] == [200, 415, 200]
    assert [r["prediction"]["digit"] for r in (results[0], results[2])] == [int(d) for d in sample.test.labels[:2]]
    assert "preprocessing a thumbnail failed" in caplog.text
