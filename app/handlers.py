"""Every error a client can meet becomes {"detail": "<one sentence>"} here, and nowhere else.

* Our own errors (app/errors.py) carry their status and sentence: `service_error_handler`.
* FastAPI's request validation: a sentence per field, from the help the route attached (`explains_fields`).
* Starlette's own HTTP errors (404, 405, and the 400s of form parsing, which Starlette gives only as text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.errors import ServiceError
from app.metrics import REJECTED

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True)
class FieldHelp:
    send: str  # what to send: "number is required: send <send>."
    kind: str  # what it must be: "number must be <kind>, got '3.5'."


def explains_fields(form: str, **help: FieldHelp) -> Callable[[Endpoint], Endpoint]:
    """Attach to a route the sentences that tell a client how to send its form (`form`) and each of its fields."""

    def attach(endpoint: Endpoint) -> Endpoint:
        endpoint.form_help, endpoint.field_help = form, help  # type: ignore[attr-defined]
        return endpoint

    return attach


def send_form(request: Request) -> str:
    """'send multipart/form-data with ...', as the route that got the request explains its form."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    return f"send {getattr(endpoint, 'form_help', 'multipart/form-data')}"


def error_response(exc: ServiceError) -> JSONResponse:
    """The one way an error of ours reaches a client (also from middleware, outside the handlers)."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    REJECTED.labels(type(exc).__name__).inc()
    return error_response(exc)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    help = getattr(getattr(request.scope.get("route"), "endpoint", None), "field_help", {})
    REJECTED.labels("InvalidField").inc()
    return JSONResponse({"detail": field_error_sentence(exc.errors()[0], help)}, status_code=422)


def field_error_sentence(error: Mapping[str, Any], help: Mapping[str, FieldHelp]) -> str:
    """One error of pydantic's list -> 'number must be an integer from 0 to 9, got "3.5".'"""
    where, name = (list(error.get("loc", ())) + ["", ""])[:2]
    name = str(name)
    field = help.get(name)
    got = error.get("input")
    if error.get("type") == "missing":
        if not name:
            return "The request body is required."
        return f"{name} is required: send {field.send}." if field else f"{where} parameter {name} is required."
    if field is None:
        return f"{where} parameter {name} is invalid ({error.get('msg', 'bad value')}), got {shown(got)}."
    if isinstance(got, UploadFile):
        return f"{name} must be a plain form field holding {field.kind}, not a file."
    if "file" in field.kind:
        return f"{name} must be {field.kind}, not a text field."
    return f"{name} must be {field.kind}, got {shown(got)}."


def shown(value: object, limit: int = 40) -> str:
    return repr(value if len(str(value)) <= limit else shorten(str(value), limit))


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# Starlette reports form parsing failures (400) only as text; these are its messages, by how they start, and
# ours ({send}: how the route explains its form).
FORM_PARSING_ERRORS = {
    "Missing boundary": "The multipart/form-data Content-Type has no boundary; let your HTTP client write that "
    "header (curl -F, requests' files=...) instead of setting it by hand.",
    "Too many fields": "The form has too many fields; {send} only.",
    "Too many files": "The form has too many files; {send} only.",
    "Part exceeded": "A text field of the form is too large; {send}, a single digit.",
    "Field exceeded": "A text field of the form is too large; {send}, a single digit.",
    "Invalid multipart": "The multipart/form-data body is malformed, or a part's header (e.g. its filename) is over "
    "4 KB; {send}.",
    "There was an error parsing the body": "The request body could not be read as a form; {send}.",
}


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's terse details ('Not Found', 'Missing boundary in multipart.') -> one sentence that helps."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 400:
        text = next((text for start, text in FORM_PARSING_ERRORS.items() if detail.startswith(start)), detail)
        detail = text.format(send=send_form(request))
    elif exc.status_code == 404:
        detail = f"There is nothing at {shorten(request.url.path)}; the API is described at /docs."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        detail = f"{request.method} is not allowed on {shorten(request.url.path)}; use {allowed}."
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)
