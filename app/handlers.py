"""Every error a client can meet becomes {"detail": "<one sentence>"} here, and nowhere else.

* Our own errors (app/errors.py) carry their status and sentence: `service_error_handler`. The forms' field
  errors are among them (app/forms.py).
* FastAPI's request validation (query parameters such as ?debug=): a sentence per parameter.
* Starlette's own HTTP errors (404, 405), which it gives only as terse text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import ServiceError
from app.metrics import REJECTED


def error_response(exc: ServiceError) -> JSONResponse:
    """The one way an error of ours reaches a client (also from middleware, outside the handlers)."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    REJECTED.labels(type(exc).__name__).inc()
    return error_response(exc)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    REJECTED.labels("InvalidField").inc()
    return JSONResponse({"detail": parameter_error_sentence(exc.errors()[0])}, status_code=422)


def parameter_error_sentence(error: Mapping[str, Any]) -> str:
    """One error of pydantic's list -> 'query parameter debug is invalid (Input should be a valid boolean...)'."""
    where, name = (list(error.get("loc", ())) + ["", ""])[:2]
    if error.get("type") == "missing":
        return f"{where} parameter {name} is required."
    return f"{where} parameter {name} is invalid ({error.get('msg', 'bad value')}), got {shown(error.get('input'))}."


def shown(value: object, limit: int = 40) -> str:
    return repr(value if len(str(value)) <= limit else shorten(str(value), limit))


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's terse details ('Not Found', 'Method Not Allowed') -> one sentence that helps."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"There is nothing at {shorten(request.url.path)}; the API is described at /docs."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        detail = f"{request.method} is not allowed on {shorten(request.url.path)}; use {allowed}."
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)
