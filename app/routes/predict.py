"""POST /predict and /predict/batch: decode (bytes -> 28x28) -> predict (batched network) -> encode (JSON)."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from fastapi import APIRouter, Request, Response
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from app.errors import InvalidField
from app.forms import FormField, FormSpec
from app.handlers import parameter_error_sentence
from app.metrics import DECODE_SECONDS
from app.model import Prediction
from app.predictor import Answer, Predictor
from app.schemas import BatchItemOut, BatchOut, ErrorOut, PredictionOut
from app.settings import Settings

router = APIRouter(tags=["prediction"])

MODEL_HEADER = "X-Model-SHA256"  # the first 12 hex digits of the checkpoint's sha256: watch a rollout from outside

# ?debug=true: read by `debug_flag` as FastAPI reads a bool query parameter, and documented as FastAPI documents one
DEBUG = TypeAdapter(bool)
DEBUG_HELP = "Also return the 28x28 image the network saw."
DEBUG_PARAMETER = {
    "name": "debug",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "description": DEBUG_HELP, "default": False, "title": "Debug"},
    "description": DEBUG_HELP,
}

PREDICT_FORM = FormSpec(
    "multipart/form-data with the file field 'image' and the field 'number'",
    (
        FormField(
            "image",
            files=True,
            many=False,
            send="the picture as a multipart/form-data file field named 'image'",
            kind="a file upload (multipart/form-data with a filename)",
            description="A picture of one handwritten digit: PNG, JPEG, WEBP, BMP, GIF or TIFF.",
        ),
        FormField(
            "number",
            files=False,
            many=False,
            send="an integer from 0 to 9 as the form field 'number'",
            kind="an integer from 0 to 9",
            description="An integer from 0 to 9 to add to the digit.",
        ),
    ),
)
BATCH_FORM = FormSpec(
    "multipart/form-data with file fields 'images' and fields 'numbers'",
    (
        FormField(
            "images",
            files=True,
            many=True,
            send="each picture as a file field named 'images'",
            kind="file uploads (multipart/form-data)",
            description="Pictures of handwritten digits, one file field each.",
        ),
        FormField(
            "numbers",
            files=False,
            many=True,
            send="one integer 0-9 per image as fields named 'numbers'",
            kind="integers from 0 to 9",
            description="One integer 0-9 per image, in the same order; or a single one for every image.",
        ),
    ),
)
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in [
        (400, "The body is not a well-formed multipart/form-data form"),
        (408, "The body did not arrive within the upload time limit"),
        (413, "Body over the upload cap, or an image over the pixel, memory or CPU cap of decoding"),
        (415, "The body is not a form, or the image is not a decodable single frame of an allowed format"),
        (422, "A field is missing, invalid or repeated, or no digit was found in the image"),
        (503, "Not ready, overloaded (see Retry-After) or the forward pass failed"),
        (504, "The image or the model could not be processed in time"),
    ]
}


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses=ERRORS,
    openapi_extra={**PREDICT_FORM.openapi(), "parameters": [DEBUG_PARAMETER]},
)
async def predict(request: Request) -> Response:
    """Recognise the handwritten digit and add the number; digit and sum both come from the network."""
    debug = debug_flag(request)
    predictor, settings = current(request)
    form = await PREDICT_FORM.read(request)
    number = form["number"]
    predictor.require_ready()
    deadline = predictor.deadline()
    start = time.perf_counter()
    decoded_image = await predictor.decode(form["image"], deadline)
    decoded = time.perf_counter()
    DECODE_SECONDS.observe(decoded - start)
    timed = await predictor.predict(decoded_image, number, deadline)
    answer = timed.value
    prediction = encode(
        answer.prediction, number, low_confidence_threshold(settings, predictor), answer.pixels if debug else None
    )
    timing = (
        f"decode;dur={(decoded - start) * 1000:.2f}, queue;dur={timed.queue_s * 1000:.2f}, "
        f"inference;dur={timed.inference_s * 1000:.2f}"
    )
    return json_response(prediction, predictor, {"Server-Timing": timing})


def debug_flag(request: Request) -> bool:
    """?debug=, as FastAPI would read a `debug: bool = False` parameter (the last one sent), without the work its
    dependency solving does on every request: 'true', '1', 'yes', 'on' and their opposites, any case."""
    value = request.query_params.get("debug")
    if value is None:
        return False
    try:
        return DEBUG.validate_python(value)
    except ValidationError as exc:
        raise InvalidField(parameter_error_sentence({**exc.errors()[0], "loc": ("query", "debug")})) from None


def current(request: Request) -> tuple[Predictor, Settings]:
    """The app's predictor and settings (read here, not through Depends: each dependency is per-request work)."""
    return request.app.state.predictor, request.app.state.settings


def json_response(
    body: PredictionOut | BatchOut, predictor: Predictor, headers: dict[str, str] | None = None
) -> Response:
    """The answer as JSON, serialised once by its model (`response_model` documents it, and would validate it again)."""
    headers = {MODEL_HEADER: predictor.model.sha256[:12], **(headers or {})}
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


def low_confidence_threshold(settings: Settings, predictor: Predictor) -> float:
    """DIGITSUM_LOW_CONFIDENCE when set, else the threshold calibrated into the model's card."""
    return predictor.model.low_confidence_threshold if settings.low_confidence is None else settings.low_confidence


@router.post("/predict/batch", response_model=BatchOut, responses=ERRORS, openapi_extra=BATCH_FORM.openapi())
async def predict_batch(request: Request) -> Response:
    """Many images in one request, answered in order; each item has its own result or its own error."""
    predictor, settings = current(request)
    form = await BATCH_FORM.read(request)
    uploads, numbers = form["images"], form["numbers"]
    predictor.require_ready()
    if len(uploads) > settings.max_batch_size:
        raise InvalidField(f"images has {len(uploads)} files; send at most {settings.max_batch_size} per request.")
    if len(numbers) not in (1, len(uploads)):
        raise InvalidField(
            f"numbers has {len(numbers)} values for {len(uploads)} images; send one per image, or a single one for all."
        )
    numbers = numbers * len(uploads) if len(numbers) == 1 else numbers
    deadline = predictor.deadline()
    results = await predictor.predict_many(await predictor.decode_many(uploads, deadline), numbers, deadline)
    threshold = low_confidence_threshold(settings, predictor)
    return json_response(
        BatchOut(
            results=[
                BatchItemOut(index=i, status=200, prediction=encode(result.prediction, number, threshold, None))
                if isinstance(result, Answer)
                else BatchItemOut(index=i, status=result.status_code, detail=result.detail)
                for i, (result, number) in enumerate(zip(results, numbers, strict=True))
            ]
        ),
        predictor,
    )


def encode(result: Prediction, number: int, low_confidence: float, pixels: np.ndarray | None) -> PredictionOut:
    digit_confidence = result.digit_probabilities[result.digit]
    return PredictionOut(
        digit=result.digit,
        sum=result.sum,
        number=number,
        digit_confidence=round(digit_confidence, 6),
        sum_confidence=round(result.sum_probabilities[result.sum], 6),
        heads_agree=result.heads_agree,
        no_digit=result.no_digit,
        low_confidence=digit_confidence < low_confidence or not result.heads_agree or result.no_digit,
        digit_probabilities=[round(p, 6) for p in result.digit_probabilities],
        input_image=None if pixels is None else png_data_url(pixels),
    )


def png_data_url(pixels: np.ndarray) -> str:
    """(28, 28) float in [0, 1] -> 'data:image/png;base64,...' (about 400 bytes)."""
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
