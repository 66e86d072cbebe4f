"""The DigitSum service: `uvicorn app.main:app` (or `make run`)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException

from app.decoder import INLINE_MAX_BYTES
from app.errors import ServiceError, StartupError
from app.handlers import http_error_handler, service_error_handler, validation_error_handler
from app.metrics import MODEL_INFO, forget_this_process
from app.middleware import (
    AllowedHosts,
    BodyLimits,
    CancelOnDisconnect,
    HeadAsGet,
    InternalOnly,
    OneLineStartupFailure,
    RequestContext,
    RequestIdFilter,
)
from app.model import Model, choose_device
from app.predictor import Predictor
from app.routes import docs, health, info, pages, predict
from app.settings import Settings, get_settings

log = logging.getLogger("digitsum")
INTERNAL_PATHS = frozenset({"/metrics", "/model"})  # with DIGITSUM_INTERNAL_PORT, served there alone


def load_model(settings: Settings) -> Model:
    model = Model(
        settings.model_path, choose_device(settings.device), settings.allow_missing_card, settings.nondigit_threshold
    )
    MODEL_INFO.labels(model.sha256, str(model.device), model.path.name).set(1)
    log.info("loaded %s (sha256 %s...) on %s: %s", model.path, model.sha256[:12], model.device, model.device_reason)
    return model


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load once (a bad checkpoint stops startup), then warm up and self-test before /readyz turns green."""
    settings: Settings = app.state.settings
    if settings.torch_threads:
        # Here, on the loop's thread: OpenMP keeps a thread count per thread, and lone requests run their forward
        # pass on this one (app/batching.py); threads started later (the batch thread) take the new count too.
        torch.set_num_threads(settings.torch_threads)
    try:
        model = await asyncio.to_thread(load_model, settings)
    except StartupError as exc:
        log.error("%s", exc)
        app.state.startup_error = exc  # OneLineStartupFailure: the line above is all uvicorn should print
        raise
    predictor = app.state.predictor = Predictor(model, settings)
    freeze_startup_objects()
    await predictor.start()
    # app.serve's workers wait for it before they listen; a lone uvicorn serves meanwhile (/readyz: 503)
    warm_up = app.state.warm_up = asyncio.create_task(predictor.warm_up_and_self_test())
    yield
    warm_up.cancel()
    await predictor.stop()
    forget_this_process()


def freeze_startup_objects() -> None:
    """Take what startup built (torch, the model, FastAPI: objects that live until exit) out of the GC's sight.

    Otherwise every full collection walks them all: a stall of the event loop every few seconds
    under load, which was the service's p99 at 64 connections (benchmarks/results/serve.md).
    """
    gc.collect()
    gc.freeze()


def configure_logging() -> None:
    """Our lines and python-multipart's (a warning per malformed body), each with its request id.

    Loggers that already have handlers (uvicorn --log-config app/log_config.json) are left alone.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(RequestIdFilter())
    for logger, level in ((log, logging.INFO), (logging.getLogger("python_multipart"), logging.WARNING)):
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False


def create_app(settings: Settings | None = None) -> FastAPI:
    configure_logging()
    try:
        settings = settings or get_settings()
    except StartupError as exc:
        raise SystemExit(f"digitsum: {exc}") from None
    app = FastAPI(
        title="DigitSum",
        summary="Recognise a handwritten digit and add an integer to it, both with a neural network.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # app/routes/docs.py serves Swagger UI without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(predict.router)
    app.include_router(health.router)
    app.include_router(info.router)
    app.include_router(pages.router)
    app.mount("/static", pages.static, name="static")
    app.include_router(docs.router)
    app.mount(docs.DOCS_STATIC_URL, docs.static, name="docs-static")
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    # Outermost last: ids, metrics and security headers see every answer, the body caps every read.
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_upload_bytes,
        max_seconds=settings.upload_timeout_s,
        lanes=settings.upload_lanes,
        max_waiting=settings.max_queue,
    )
    app.add_middleware(CancelOnDisconnect, min_bytes=INLINE_MAX_BYTES + 1024)  # a thumbnail and its form: not watched
    if settings.cors_origins:  # closed unless configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    if settings.internal_port:
        app.add_middleware(InternalOnly, paths=INTERNAL_PATHS, port=settings.internal_port)
    if settings.allowed_hosts:
        app.add_middleware(AllowedHosts, hosts=settings.allowed_hosts)
    app.add_middleware(RequestContext)
    app.add_middleware(OneLineStartupFailure)
    return app


app = create_app()
