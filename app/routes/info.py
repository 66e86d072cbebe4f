"""What is being served, and how it is doing."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response

from app.dependencies import PredictorDep
from app.metrics import render
from app.schemas import ModelOut

router = APIRouter(tags=["info"])


@router.get("/model", response_model=ModelOut)
async def model_card(predictor: PredictorDep) -> ModelOut:
    """The checkpoint's card, its sha256, and the device in use and why."""
    return ModelOut(**predictor.model.describe())


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus metrics: latency by route and status, queue wait, batch sizes, inference time, in-flight."""
    body, content_type = await anyio.to_thread.run_sync(render)  # ~ms per scrape: not on the event loop
    return Response(body, media_type=content_type)
