"""What is being served, and how it is doing."""

from __future__ import annotations

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
    body, content_type = render()
    return Response(body, media_type=content_type)
