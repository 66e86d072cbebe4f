"""What routes get from the app: the predictor and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.predictor import Predictor
from app.settings import Settings


# async: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per request for an attribute read
async def current_predictor(request: Request) -> Predictor:
    return request.app.state.predictor  # type: ignore[no-any-return]


async def current_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


PredictorDep = Annotated[Predictor, Depends(current_predictor)]
SettingsDep = Annotated[Settings, Depends(current_settings)]
