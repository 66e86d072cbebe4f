"""Turn FastAPI's validation errors into one human sentence in `detail`."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

FIELD_HELP = {
    "number": "an integer from 0 to 9 as the form field 'number'",
    "image": "the picture as a multipart/form-data file field named 'image'",
}


def sentence(error: dict[str, Any]) -> str:
    """One error of pydantic's list -> 'number must be an integer from 0 to 9, got "3.5".'"""
    where, name = (list(error.get("loc", ())) + ["", ""])[:2]
    name = str(name)
    if error.get("type") == "missing":
        return f"{name} is required: send {FIELD_HELP.get(name, 'it')}." if name else "The request body is required."
    got = error.get("input")
    shown = repr(got if len(str(got)) <= 40 else str(got)[:40] + "...")
    if name == "number":
        return f"number must be an integer from 0 to 9, got {shown}."
    if name == "image":
        return "image must be a file upload (multipart/form-data with a filename), not a text field."
    return f"{where} parameter {name} is invalid ({error.get('msg', 'bad value')}), got {shown}."


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": sentence(exc.errors()[0])}, status_code=422)
