"""Turn every client mistake FastAPI or Starlette catches into one human sentence in `detail`."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

FIELD_HELP = {
    "number": "an integer from 0 to 9 as the form field 'number'",
    "image": "the picture as a multipart/form-data file field named 'image'",
}
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the body FastAPI reads as a form
SEND_FORM = "send multipart/form-data with the file field 'image' and the field 'number'"

# Starlette's and FastAPI's body-parsing failures (all 400), by how their message starts.
BODY_ERRORS = {
    "Missing boundary": "The multipart/form-data Content-Type has no boundary; let your HTTP client write that "
    "header (curl -F, requests' files=...) instead of setting it by hand.",
    "Too many fields": f"The form has too many fields; {SEND_FORM} only.",
    "Too many files": f"The form has too many files; {SEND_FORM} only.",
    "Part exceeded": f"A text field of the form is too large; {SEND_FORM}, a single digit.",
    "Field exceeded": f"A text field of the form is too large; {SEND_FORM}, a single digit.",
    "Invalid multipart": "The multipart/form-data body is malformed, or a part's header (e.g. its filename) is over "
    f"4 KB; {SEND_FORM}.",
    "There was an error parsing the body": f"The request body could not be read as a form; {SEND_FORM}.",
}


def sentence(error: dict[str, Any]) -> str:
    """One error of pydantic's list -> 'number must be an integer from 0 to 9, got "3.5".'"""
    where, name = (list(error.get("loc", ())) + ["", ""])[:2]
    name = str(name)
    if error.get("type") == "missing":
        return f"{name} is required: send {FIELD_HELP.get(name, 'it')}." if name else "The request body is required."
    got = error.get("input")
    shown = repr(got if len(str(got)) <= 40 else shorten(str(got), 40))
    if name == "number" and isinstance(got, UploadFile):
        return "number must be a plain form field holding an integer from 0 to 9, not a file."
    if name == "number":
        return f"number must be an integer from 0 to 9, got {shown}."
    if name == "image":
        return "image must be a file upload (multipart/form-data with a filename), not a text field."
    return f"{where} parameter {name} is invalid ({error.get('msg', 'bad value')}), got {shown}."


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": sentence(exc.errors()[0])}, status_code=422)


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's terse details ('Not Found', 'Missing boundary in multipart.') -> one sentence that helps."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if exc.status_code == 400:
        detail = next((text for start, text in BODY_ERRORS.items() if exc.detail.startswith(start)), exc.detail)
    elif exc.status_code == 404 and exc.detail == "Not Found":
        detail = f"There is nothing at {shorten(request.url.path)}; the API is described at /docs."
    elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow", "another method")
        detail = f"{request.method} is not allowed on {shorten(request.url.path)}; use {allowed}."
    return await http_exception_handler(request, HTTPException(exc.status_code, detail, exc.headers))


async def one_form(request: Request) -> None:
    """A dependency: 415 unless the body is a form; 422 when a field of the route comes more than once.

    FastAPI has already parsed the form (request.form() is cached): it would read a JSON body as an empty
    form and report missing fields, and it silently keeps the last of repeated fields.
    """
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in FORM_TYPES:
        got = f"The body is {content_type}, not a form" if content_type else "The request has no Content-Type"
        raise HTTPException(415, f"{got}; {SEND_FORM}.")
    form = await request.form()
    for name in FIELD_HELP:
        if (count := len(form.getlist(name))) > 1:
            raise HTTPException(422, f"{name} was sent {count} times; send it once.")
