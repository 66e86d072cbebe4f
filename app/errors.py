"""Errors that stop the service at startup, reported as one line."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("digitsum")


class StartupError(RuntimeError):
    """Bad configuration or checkpoint; the message says what to fix."""


class OneLineStartupFailure:
    """ASGI middleware: a StartupError ends startup with its one-line message, not a traceback.

    The lifespan logs the line itself; Starlette would send uvicorn the whole traceback text.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_without_traceback(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and StartupError.__name__ in message.get("message", ""):
                message = {**message, "message": ""}  # uvicorn then prints only "Application startup failed."
            await send(message)

        await self.app(scope, receive, send_without_traceback)
