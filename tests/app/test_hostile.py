"""Hostile and careless requests against the live app: each gets the right 4xx and one human sentence.

The tables are the contract: BAD lists what a client may get wrong and the answer it gets; GOOD lists odd
but legitimate uploads that must be served. After them all the service still answers correctly and has
never answered 5xx. The slow-upload test needs real sockets, so it runs against real uvicorn.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support import hostile_inputs as hi
from tests.support.digits import Sample
from tests.support.live_server import LiveServer, live_server
from tests.support.service import png_bytes

Request = dict[str, Any]  # keyword arguments of client.post
SEND = "send multipart/form-data with the file field 'image' and the field 'number'"
NUMBER_RANGE = "number must be an integer from 0 to 9, got"


def upload(data: bytes, number: str = "3", filename: str = "digit.png", content_type: str = "image/png") -> Request:
    return {"files": {"image": (filename, data, content_type)}, "data": {"number": number}}


def raw(body: bytes, content_type: str | None) -> Request:
    return {"content": body, "headers": {"Content-Type": content_type} if content_type else {}}


def fields(*parts: tuple[str, bytes, str | None]) -> Request:
    """Fields in order, repeats allowed: (name, content, filename or None for a text field)."""
    return raw(hi.multipart(list(parts)), f"multipart/form-data; boundary={hi.BOUNDARY}")


def many_fields(count: int, filename: str | None) -> Callable[[np.ndarray], Request]:
    return lambda d: fields(
        ("image", png_bytes(d), "d.png"), ("number", b"3", None), *[(f"extra{i}", b"x", filename) for i in range(count)]
    )


@dataclass(frozen=True)
class Bad:
    name: str
    request: Callable[[np.ndarray], Request]  # a real digit, (28, 28) uint8 -> the request
    status: int
    detail: str | re.Pattern[str]  # the exact sentence, or a pattern where app/preprocess.py words it


def phrase(text: str) -> re.Pattern[str]:
    return re.compile(re.escape(text))


BAD = [
    # --- the file is not a usable image
    Bad("empty file", lambda d: upload(b""), 415, phrase("The upload is empty")),
    Bad("text sent as .png", lambda d: upload(b"hello, this is not a picture"), 415, phrase("not an image")),
    Bad("truncated PNG", lambda d: upload(hi.truncated(hi.encode(hi.paper(d), "PNG"))), 415, phrase("truncated")),
    Bad("truncated JPEG", lambda d: upload(hi.truncated(hi.encode(hi.paper(d), "JPEG"))), 415, phrase("truncated")),
    Bad(
        "bad header checksum",
        lambda d: upload(hi.bad_header_checksum(png_bytes(d))),
        415,
        re.compile("not an image|corrupt"),
    ),
    Bad(
        "corrupt pixel data", lambda d: upload(hi.corrupt_middle(hi.encode(hi.paper(d), "PNG"))), 415, phrase("corrupt")
    ),
    Bad(
        "SVG",
        lambda d: upload(hi.SVG, filename="digit.svg", content_type="image/svg+xml"),
        415,
        phrase("not an image in an accepted format"),
    ),
    Bad("animated GIF", lambda d: upload(hi.animated_gif(d), filename="d.gif"), 415, phrase("single frame")),
    Bad("multi-page TIFF", lambda d: upload(hi.multipage_tiff(d), filename="d.tif"), 415, phrase("single frame")),
    Bad("LAB colour TIFF", lambda d: upload(hi.lab_tiff()), 415, phrase("colour mode LAB")),
    # --- decodes, but holds no digit
    Bad("1x1 pixel", lambda d: upload(hi.grey(0, side=1)), 422, phrase("No digit found")),
    Bad("all white", lambda d: upload(hi.grey(255)), 422, phrase("No digit found")),
    Bad("all black", lambda d: upload(hi.grey(0)), 422, phrase("No digit found")),
    Bad("36 MP blank, under the cap", lambda d: upload(hi.png_bomb(6000, 6000)), 422, phrase("No digit found")),
    # --- decompression bombs: refused from the header, before a pixel is decoded
    Bad(
        "49 MP bomb, under Pillow's limit",
        lambda d: upload(hi.png_bomb(7000, 7000)),
        413,
        phrase("49,000,000 pixels (7000x7000), more than the limit of 40,000,000"),
    ),
    Bad(
        "100 MP bomb, over Pillow's limit",
        lambda d: upload(hi.png_bomb(10_000, 10_000)),
        413,
        phrase("100,000,000 pixels (10000x10000), more than the limit of 40,000,000"),
    ),
    Bad("400 MP bomb, Pillow refuses", lambda d: upload(hi.png_bomb(20_000, 20_000)), 413, phrase("40,000,000")),
    Bad("4 GP GIF bomb", lambda d: upload(hi.gif_bomb(), filename="d.gif"), 413, phrase("40,000,000")),
    # --- number
    Bad("number 3.5", lambda d: upload(png_bytes(d), "3.5"), 422, f"{NUMBER_RANGE} '3.5'."),
    Bad("number -1", lambda d: upload(png_bytes(d), "-1"), 422, f"{NUMBER_RANGE} '-1'."),
    Bad("number 10", lambda d: upload(png_bytes(d), "10"), 422, f"{NUMBER_RANGE} '10'."),
    Bad("number 1e1", lambda d: upload(png_bytes(d), "1e1"), 422, f"{NUMBER_RANGE} '1e1'."),
    Bad("number abc", lambda d: upload(png_bytes(d), "abc"), 422, f"{NUMBER_RANGE} 'abc'."),
    Bad("number Arabic-Indic 3", lambda d: upload(png_bytes(d), "\u0663"), 422, f"{NUMBER_RANGE} '\u0663'."),
    Bad("number of 5000 digits", lambda d: upload(png_bytes(d), "7" * 5000), 422, f"{NUMBER_RANGE} '{'7' * 40}...'."),
    Bad(
        "number empty",
        lambda d: upload(png_bytes(d), ""),
        422,
        "number is required: send an integer from 0 to 9 as the form field 'number'.",
    ),
    Bad(
        "number of 2 MB",
        lambda d: upload(png_bytes(d), "7" * 2_000_000),
        400,
        f"A text field of the form is too large; {SEND}, a single digit.",
    ),
    # --- fields missing, repeated or of the wrong kind
    Bad(
        "number missing",
        lambda d: fields(("image", png_bytes(d), "d.png")),
        422,
        "number is required: send an integer from 0 to 9 as the form field 'number'.",
    ),
    Bad(
        "image missing",
        lambda d: fields(("number", b"3", None)),
        422,
        "image is required: send the picture as a multipart/form-data file field named 'image'.",
    ),
    Bad(
        "a browser's file input with no file chosen",
        lambda d: fields(("image", b"", ""), ("number", b"3", None)),
        422,
        "image is required: send the picture as a multipart/form-data file field named 'image'.",
    ),
    Bad(
        "number sent twice",
        lambda d: fields(("image", png_bytes(d), "d.png"), ("number", b"3", None), ("number", b"4", None)),
        422,
        "number was sent 2 times; send it once.",
    ),
    Bad(
        "image sent twice",
        lambda d: fields(("image", png_bytes(d), "a.png"), ("image", png_bytes(d), "b.png"), ("number", b"3", None)),
        422,
        "image was sent 2 times; send it once.",
    ),
    Bad(
        "number sent as a file",
        lambda d: fields(("image", png_bytes(d), "d.png"), ("number", b"3", "n.txt")),
        422,
        "number must be a plain form field holding an integer from 0 to 9, not a file.",
    ),
    Bad(
        "image sent as text",
        lambda d: fields(("image", b"iVBORw0KGgo=", None), ("number", b"3", None)),
        422,
        "image must be a file upload (multipart/form-data with a filename), not a text field.",
    ),
    Bad(
        "debug=maybe",
        lambda d: {**upload(png_bytes(d)), "params": {"debug": "maybe"}},
        422,
        phrase("query parameter debug is invalid"),
    ),
    # --- the body is not a well-formed form
    Bad(
        "JSON body",
        lambda d: {"json": {"image": "x", "number": 3}},
        415,
        f"The body is application/json, not a form; {SEND}.",
    ),
    Bad("text body", lambda d: raw(b"3", "text/plain"), 415, f"The body is text/plain, not a form; {SEND}."),
    Bad("no body, no Content-Type", lambda d: raw(b"", None), 415, f"The request has no Content-Type; {SEND}."),
    Bad(
        "multipart without a boundary",
        lambda d: raw(b"abc", "multipart/form-data"),
        400,
        "The multipart/form-data Content-Type has no boundary; let your HTTP client write that header "
        "(curl -F, requests' files=...) instead of setting it by hand.",
    ),
    Bad(
        "multipart with a bad part header",
        lambda d: raw(
            f"--{hi.BOUNDARY}\r\nno colon\r\n\r\nx\r\n".encode(), f"multipart/form-data; boundary={hi.BOUNDARY}"
        ),
        400,
        phrase("The multipart/form-data body is malformed"),
    ),
    Bad(
        "a part with no name",
        lambda d: raw(
            f'--{hi.BOUNDARY}\r\nContent-Disposition: form-data; filename="d.png"\r\n\r\nx\r\n'
            f"--{hi.BOUNDARY}--\r\n".encode(),
            f"multipart/form-data; boundary={hi.BOUNDARY}",
        ),
        400,
        f"A part of the form has no name in its Content-Disposition header; {SEND}.",
    ),
    Bad(
        "a urlencoded form, which cannot hold the file",
        lambda d: {"data": {"number": "3"}},
        422,
        "image is required: send the picture as a multipart/form-data file field named 'image'.",
    ),
    Bad("2000 text fields", many_fields(2000, None), 400, f"The form has too many fields; {SEND} only."),
    Bad("2000 files", many_fields(2000, "x.png"), 400, f"The form has too many files; {SEND} only."),
    Bad(
        "10k-char filename",
        lambda d: upload(png_bytes(d), filename="x" * 10_000),
        400,
        phrase("a part's header (e.g. its filename) is over 4 KB"),
    ),
    Bad(
        "body over the cap",
        lambda d: upload(b"\0" * (5 * 1024 * 1024 + 1)),
        413,
        "The request body is larger than the 5.24288 MB limit; send a smaller image.",
    ),
    Bad(
        "body over the cap, no Content-Length",
        lambda d: raw(
            iter([b"-" * 3_000_000] * 2),  # type: ignore[arg-type]
            f"multipart/form-data; boundary={hi.BOUNDARY}",
        ),
        413,
        "The request body is larger than the 5.24288 MB limit; send a smaller image.",
    ),
]


@dataclass(frozen=True)
class Good:
    name: str
    request: Callable[[np.ndarray], Request]
    number: int  # what the answer's `number` must be


BAD += [
    Bad(
        "1,000-scan progressive JPEG",
        lambda d: upload(hi.many_scans_jpeg(d, 1000), filename="d.jpg", content_type="image/jpeg"),
        415,
        phrase("progressive scans, more than the 64 accepted"),
    ),
    Bad("RLE8 BMP of 4096x4096 in 1 KB", lambda d: upload(hi.rle_bmp(4096, 4096)), 415, phrase("RLE-compressed BMP")),
    Bad(
        "40 MP lossless WebP in 38 bytes",
        lambda d: upload(hi.webp_lossless(), filename="d.webp", content_type="image/webp"),
        413,
        "The image needs about 305 MB to decode, more than the 300 MB an upload may use; send a smaller one.",
    ),
]


def batch(*parts: tuple[str, bytes, str | None]) -> Request:
    return fields(*parts)


# The batch endpoint: what is wrong with the request as a whole is refused whole; a bad image fails alone
# (tests/app/test_batch.py).
BAD_BATCH = [
    Bad(
        "images as a text field",
        lambda d: batch(("images", b"not a file", None), ("numbers", b"1", None)),
        422,
        "images must be file uploads (multipart/form-data), not a text field.",
    ),
    Bad(
        "numbers as a file",
        lambda d: batch(("images", png_bytes(d), "d.png"), ("numbers", b"1", "n.txt")),
        422,
        "numbers must be a plain form field holding integers from 0 to 9, not a file.",
    ),
    Bad(
        "an empty number among them",
        lambda d: batch(
            ("images", png_bytes(d), "a.png"),
            ("images", png_bytes(d), "b.png"),
            ("numbers", b"1", None),
            ("numbers", b"", None),
        ),
        422,
        "numbers must be integers from 0 to 9, got ''.",
    ),
    Bad(
        "no numbers",
        lambda d: batch(("images", png_bytes(d), "d.png")),
        422,
        "numbers is required: send one integer 0-9 per image as fields named 'numbers'.",
    ),
    Bad("JSON body", lambda d: raw(b'{"images": []}', "application/json"), 415, phrase("not a form")),
    Bad("2000 files", lambda d: batch(*[("images", b"x", "x.png")] * 2000), 400, phrase("too many files")),
]


GOOD = [
    Good("16-bit greyscale PNG", lambda d: upload(hi.png16(d)), 3),
    Good("CMYK JPEG", lambda d: upload(hi.cmyk_jpeg(d), filename="d.jpg", content_type="image/jpeg"), 3),
    Good("palette PNG with transparency", lambda d: upload(hi.palette_with_transparency(d)), 3),
    Good(
        "JPEG named .png, sent as text/plain",
        lambda d: upload(hi.encode(hi.paper(d), "JPEG"), content_type="text/plain"),
        3,
    ),
    Good("path-like filename", lambda d: upload(png_bytes(d), filename="../../etc/passwd"), 3),
    Good("4000-char filename", lambda d: upload(png_bytes(d), filename="x" * 4000 + ".png"), 3),
    Good("filename with quotes and non-ASCII", lambda d: upload(png_bytes(d), filename='d\u00efgit "7".png'), 3),
    Good("number with spaces ' 7 '", lambda d: upload(png_bytes(d), " 7 "), 7),
    Good("number '+7', read as Python's int() reads it", lambda d: upload(png_bytes(d), "+7"), 7),
    Good("number '07'", lambda d: upload(png_bytes(d), "07"), 7),
    Good("number '7.0', read as pydantic reads an int", lambda d: upload(png_bytes(d), "7.0"), 7),
    Good(
        "an unknown extra field",
        lambda d: fields(("image", png_bytes(d), "d.png"), ("number", b"5", None), ("comment", b"hi", None)),
        5,
    ),
]


@pytest.fixture(scope="module")
def digit(sample: Sample) -> tuple[np.ndarray, int]:
    """A test-split digit the shipped model gets right with high confidence."""
    return sample.test.images[0], int(sample.test.labels[0])


def is_a_sentence(text: object) -> bool:
    return isinstance(text, str) and 10 < len(text) < 300 and "\n" not in text and text.endswith(".")


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 100 MP bomb: refused all the same
def test_a_bad_request_gets_its_4xx_and_a_sentence(
    client: TestClient, digit: tuple[np.ndarray, int], case: Bad
) -> None:
    assert_refused(client.post("/predict", **case.request(digit[0])), case)


def assert_refused(response: Any, case: Bad) -> None:
    """The case's status, and its sentence: exact, or matching its pattern; JSON, with a request id."""
    detail = response.json()["detail"]
    assert (response.status_code, is_a_sentence(detail)) == (case.status, True), detail
    if isinstance(case.detail, str):
        assert detail == case.detail
    else:
        assert case.detail.search(detail), detail
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch("[0-9a-f]{32}", response.headers["X-Request-ID"])


@pytest.mark.parametrize("case", GOOD, ids=[case.name for case in GOOD])
def test_an_odd_but_valid_upload_is_served(client: TestClient, digit: tuple[np.ndarray, int], case: Good) -> None:
    response = client.post("/predict", **case.request(digit[0]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["digit"], body["number"], body["sum"]) == (digit[1], case.number, digit[1] + case.number)
    assert not body["low_confidence"]


@pytest.mark.parametrize(("threshold", "low"), [(0.0, False), (1.0, True)])
def test_low_confidence_is_digit_confidence_under_the_threshold(
    client: TestClient, digit: tuple[np.ndarray, int], monkeypatch: pytest.MonkeyPatch, threshold: float, low: bool
) -> None:
    """Not a 4xx: an unclear picture is answered, and flagged (DIGITSUM_LOW_CONFIDENCE, default 0.6)."""
    monkeypatch.setattr(client.app.state.settings, "low_confidence", threshold)  # type: ignore[attr-defined]
    body = client.post("/predict", **upload(png_bytes(digit[0]))).json()
    assert body["low_confidence"] is low and 0 < body["digit_confidence"] < 1


def test_wrong_method_and_path_get_sentences(client: TestClient) -> None:
    assert client.get("/predict").json() == {"detail": "GET is not allowed on /predict; use POST."}
    response = client.post("/nowhere")
    assert (response.status_code, response.json()) == (
        404,
        {"detail": "There is nothing at /nowhere; the API is described at /docs."},
    )


def predict_5xx_count(client: TestClient) -> float:
    """5xx answers of /predict so far, from the process-wide metrics (other test modules add to them too)."""
    samples = re.findall(
        r'digitsum_request_duration_seconds_count\{[^}]*route="/predict",status="5\d\d"\} (\S+)',
        client.get("/metrics").text,
    )
    return sum(float(value) for value in samples)


@pytest.fixture(scope="module", autouse=True)
def predict_5xx_before(client: TestClient) -> float:
    return predict_5xx_count(client)


def test_after_all_that_the_service_is_healthy_and_never_answered_5xx(
    client: TestClient, sample: Sample, predict_5xx_before: float
) -> None:
    response = client.post("/predict", **upload(png_bytes(sample.test.images[1]), "4"))
    assert response.status_code == 200
    assert response.json()["digit"] == int(sample.test.labels[1])
    assert client.get("/readyz").status_code == 200
    assert predict_5xx_count(client) == predict_5xx_before


# --- slow uploads, over real sockets ------------------------------------------------------------

UPLOAD_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = Path(tmp_path_factory.mktemp("slow")) / "uvicorn.log"
    with live_server(log, env={"DIGITSUM_UPLOAD_TIMEOUT_S": str(UPLOAD_TIMEOUT_S)}) as server:
        yield server


def send_slowly(server: LiveServer, body: bytes, first: int, interval_s: float) -> tuple[bytes, float]:
    """Send the headers and `first` bytes of the body, then one byte per interval (0: nothing more).

    Returns everything the server sent until it closed the connection, and when it started answering.
    """
    start = time.monotonic()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={hi.BOUNDARY}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body[:first])
        sock.settimeout(interval_s or 10)
        sent, received = first, b""
        while not received:
            try:
                received = sock.recv(65536)
            except TimeoutError:
                # quiet just before the server's deadline: a byte it never reads would make its close an RST,
                # and the RST could discard the 408 before we read it
                if sent < len(body) and time.monotonic() - start < UPLOAD_TIMEOUT_S - 0.3:
                    sock.sendall(body[sent : sent + 1])
                    sent += 1
            assert time.monotonic() - start < 10, "no answer to a slow upload within 10 s"
        answered = time.monotonic() - start
        sock.settimeout(5)
        while chunk := sock.recv(65536):  # the server closes the connection after the answer
            received += chunk
    return received, answered


def good_request_done_at(server: LiveServer, body: bytes) -> float:
    answer, _ = send_slowly(server, body, first=len(body), interval_s=0)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    return time.monotonic()


@pytest.mark.parametrize("interval_s", [0.2, 0.0], ids=["trickling one byte per 0.2 s", "stalled"])
def test_a_slow_upload_gets_408_in_bounded_time_without_blocking_others(
    slow_server: LiveServer, digit: tuple[np.ndarray, int], interval_s: float
) -> None:
    body = hi.multipart([("image", png_bytes(digit[0]), "d.png"), ("number", b"3", None)])
    others: list[float] = []

    def three_good_requests() -> None:
        others.extend(good_request_done_at(slow_server, body) for _ in range(3))

    other = threading.Thread(target=three_good_requests)
    threading.Timer(0.2, other.start).start()  # while the slow one is being uploaded
    started = time.monotonic()
    answer, answered_s = send_slowly(slow_server, body, first=100, interval_s=interval_s)
    other.join(timeout=10)
    head, _, detail = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"connection: close" in head.lower()
    assert detail == b'{"detail":"The request body did not arrive within 1 s; send it again on a faster connection."}'
    assert UPLOAD_TIMEOUT_S <= answered_s < UPLOAD_TIMEOUT_S + 5  # not before the deadline, and bounded
    assert len(others) == 3 and max(others) < started + answered_s, others  # all served while it trickled


@pytest.mark.parametrize("case", BAD_BATCH, ids=[case.name for case in BAD_BATCH])
def test_a_bad_batch_request_gets_its_4xx_and_a_sentence(
    client: TestClient, digit: tuple[np.ndarray, int], case: Bad
) -> None:
    assert_refused(client.post("/predict/batch", **case.request(digit[0])), case)
