"""The service's errors: each knows its HTTP status; app/handlers.py turns any of them into {"detail": ...}.

Raise a `ServiceError` subclass where the problem is found; its message is ONE human sentence for the
client. `StartupError` is the other family: bad configuration or checkpoint, reported as one line at startup.
Light to import (Starlette's exception only): the decoder processes import it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from starlette.exceptions import HTTPException


class ServiceError(HTTPException):
    """A request the service answers with its class's `status` and `detail`, one sentence.

    A Starlette HTTPException, so it also passes through the framework's own body parsing unchanged.
    """

    status: ClassVar[int] = 500
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(self.status, detail, dict(headers or self.default_headers))

    def __str__(self) -> str:
        return self.detail


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404


class BodyTooSlow(ServiceError):
    status = 408
    default_headers = {"Connection": "close"}


class BodyTooLarge(ServiceError):
    status = 413
    default_headers = {"Connection": "close"}


class NotAForm(ServiceError):
    status = 415


class InvalidField(ServiceError):
    status = 422


class Unavailable(ServiceError):
    """Not ready, at capacity, or the forward pass failed: the client may retry (Retry-After says when)."""

    status = 503
    default_headers = {"Retry-After": "1"}


class TimedOut(ServiceError):
    status = 504


class StartupError(RuntimeError):
    """Bad configuration or checkpoint; the message says what to fix."""
