"""What the light routes (health, model card) get from the app: the predictor; /predict reads it itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.predictor import Predictor


# async: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per request for an attribute read
async def current_predictor(request: Request) -> Predictor:
    return request.app.state.predictor  # type: ignore[no-any-return]


PredictorDep = Annotated[Predictor, Depends(current_predictor)]
