"""POST /predict: decode (bytes -> 28x28) -> predict (batched network) -> encode (JSON)."""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from PIL import Image

from app.batching import BatcherClosed, BatchFailed, BatchTimeout, QueueFull, Timed
from app.dependencies import PredictorDep, SettingsDep
from app.metrics import DECODE_SECONDS, REJECTED
from app.model import Prediction
from app.predictor import Predictor
from app.preprocess import ImageError, ImageTooLarge, NoDigitFound
from app.schemas import ErrorOut, PredictionOut
from app.validation import one_form

router = APIRouter(tags=["prediction"])

ImageField = Annotated[
    UploadFile, File(description="A picture of one handwritten digit: PNG, JPEG, WEBP, BMP, GIF or TIFF.")
]
NumberField = Annotated[int, Form(ge=0, le=9, description="An integer from 0 to 9 to add to the digit.", examples=[3])]
DebugQuery = Annotated[bool, Query(description="Also return the 28x28 image the network saw.")]

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in [
        (400, "The body is not a well-formed multipart/form-data form"),
        (408, "The body did not arrive within the upload time limit"),
        (413, "Body over the upload cap, or image over the pixel cap"),
        (415, "The body is not a form, or the image is not a decodable single frame of an allowed format"),
        (422, "A field is missing, invalid or repeated, or no digit was found in the image"),
        (503, "Not ready, overloaded (see Retry-After) or the forward pass failed"),
        (504, "The model could not answer in time"),
    ]
}


@router.post("/predict", response_model=PredictionOut, responses=ERRORS, dependencies=[Depends(one_form)])
async def predict(
    image: ImageField,
    number: NumberField,
    predictor: PredictorDep,
    settings: SettingsDep,
    response: Response,
    debug: DebugQuery = False,
) -> PredictionOut:
    """Recognise the handwritten digit and add the number; digit and sum both come from the network."""
    if not predictor.ready:
        raise HTTPException(
            503, f"The model is not ready yet ({predictor.status}); retry shortly.", {"Retry-After": "1"}
        )
    start = time.perf_counter()
    pixels = await decode(image, predictor)
    decoded = time.perf_counter()
    timed = await infer(predictor, pixels, number)
    DECODE_SECONDS.observe(decoded - start)
    response.headers["Server-Timing"] = (
        f"decode;dur={(decoded - start) * 1000:.2f}, queue;dur={timed.queue_s * 1000:.2f}, "
        f"inference;dur={timed.inference_s * 1000:.2f}"
    )
    threshold = predictor.model.low_confidence_threshold if settings.low_confidence is None else settings.low_confidence
    return encode(timed.value, number, threshold, pixels if debug else None)


async def decode(image: UploadFile, predictor: Predictor) -> np.ndarray:
    """Upload -> (28, 28) float32, MNIST-style, off the event loop so a big photo stalls no one else."""
    data = await image.read()
    try:
        return await predictor.decode(data)
    except ImageError as exc:
        status = 413 if isinstance(exc, ImageTooLarge) else 422 if isinstance(exc, NoDigitFound) else 415
        REJECTED.labels(type(exc).__name__).inc()
        raise HTTPException(status, str(exc)) from None


async def infer(predictor: Predictor, pixels: np.ndarray, number: int) -> Timed[Prediction]:
    try:
        return await predictor.predict(pixels, number)
    except QueueFull as exc:
        REJECTED.labels("queue_full").inc()
        raise HTTPException(
            503, "The service is at capacity; retry shortly.", {"Retry-After": str(exc.retry_after_s)}
        ) from None
    except BatchTimeout:
        raise HTTPException(504, "The model could not answer in time; retry shortly.") from None
    except (BatchFailed, BatcherClosed):
        raise HTTPException(
            503, "The model failed on this request's batch; retry shortly.", {"Retry-After": "1"}
        ) from None


def encode(result: Prediction, number: int, low_confidence: float, pixels: np.ndarray | None) -> PredictionOut:
    digit_confidence = result.digit_probabilities[result.digit]
    return PredictionOut(
        digit=result.digit,
        sum=result.sum,
        number=number,
        digit_confidence=round(digit_confidence, 6),
        sum_confidence=round(result.sum_probabilities[result.sum], 6),
        heads_agree=result.heads_agree,
        low_confidence=digit_confidence < low_confidence or not result.heads_agree,
        digit_probabilities=[round(p, 6) for p in result.digit_probabilities],
        input_image=None if pixels is None else png_data_url(pixels),
    )


def png_data_url(pixels: np.ndarray) -> str:
    """(28, 28) float in [0, 1] -> 'data:image/png;base64,...' (about 400 bytes)."""
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
