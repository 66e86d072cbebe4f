"""app/forms.py reads a multipart body as it arrives: the same form in one piece or in many small chunks."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from app.errors import BadRequest
from app.forms import MAX_FIELD_BYTES
from app.routes.predict import BATCH_FORM, PREDICT_FORM
from tests.support import hostile_inputs as hi

CONTENT_TYPE = f"multipart/form-data; boundary={hi.BOUNDARY}"
IMAGE = bytes(range(256)) * 3 + b"\r\n--not-the-boundary\r\n"  # bytes a parser could take for a delimiter


def request_of(body: bytes, chunk: int) -> Request:
    """A request whose body arrives `chunk` bytes at a time, as a slow client's does."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", CONTENT_TYPE.encode())]}
    return Request(scope, receive)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_a_form_reads_the_same_whatever_its_chunks(chunk: int) -> None:
    body = hi.multipart([("image", IMAGE, "d.png"), ("comment", "é".encode(), None), ("number", b"6", None)])
    assert asyncio.run(PREDICT_FORM.read(request_of(body, chunk))) == {"image": IMAGE, "number": 6}


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_a_batch_form_keeps_its_files_and_numbers_in_order(chunk: int) -> None:
    images = [IMAGE + bytes([i]) for i in range(5)]
    parts = [("images", image, f"{i}.png") for i, image in enumerate(images)]
    body = hi.multipart([*parts, *[("numbers", str(n).encode(), None) for n in (3, 1, 4, 1, 5)]])
    assert asyncio.run(BATCH_FORM.read(request_of(body, chunk))) == {"images": images, "numbers": [3, 1, 4, 1, 5]}


def test_a_text_field_over_its_cap_is_refused_while_it_arrives() -> None:
    body = hi.multipart([("number", b"7" * (MAX_FIELD_BYTES + 1), None), ("image", IMAGE, "d.png")])
    with pytest.raises(BadRequest, match="A text field of the form is too large"):
        asyncio.run(PREDICT_FORM.read(request_of(body, 4096)))
