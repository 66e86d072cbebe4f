"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.dependencies import PredictorDep
from app.schemas import ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers HTTP."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def readyz(predictor: PredictorDep, response: Response) -> ReadyOut:
    """Ready: the model is loaded, warmed up and passed its self-test (else 503 with the reason)."""
    if not predictor.ready:
        response.status_code = 503
    return ReadyOut(ready=predictor.ready, reason=predictor.status)
