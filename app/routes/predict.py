"""POST /predict and /predict/batch: decode (bytes -> 28x28) -> predict (batched network) -> encode (JSON)."""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from PIL import Image
from pydantic import Field

from app.dependencies import PredictorDep, SettingsDep
from app.errors import InvalidField, NotAForm
from app.handlers import FieldHelp, explains_fields, send_form
from app.metrics import DECODE_SECONDS
from app.model import Prediction
from app.predictor import Answer, Predictor
from app.schemas import BatchItemOut, BatchOut, ErrorOut, PredictionOut
from app.settings import Settings

router = APIRouter(tags=["prediction"])

MODEL_HEADER = "X-Model-SHA256"  # the first 12 hex digits of the checkpoint's sha256: watch a rollout from outside
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the bodies FastAPI reads as a form

ImageField = Annotated[
    UploadFile, File(description="A picture of one handwritten digit: PNG, JPEG, WEBP, BMP, GIF or TIFF.")
]
NumberField = Annotated[int, Form(ge=0, le=9, description="An integer from 0 to 9 to add to the digit.", examples=[3])]
ImagesField = Annotated[list[UploadFile], File(description="Pictures of handwritten digits, one file field each.")]
NumbersField = Annotated[
    list[Annotated[int, Field(ge=0, le=9)]],
    Form(description="One integer 0-9 per image, in the same order; or a single one for every image.", examples=[3]),
]
DebugQuery = Annotated[bool, Query(description="Also return the 28x28 image the network saw.")]

IMAGE = FieldHelp(send="the picture as a multipart/form-data file field named 'image'", kind="a file upload "
                  "(multipart/form-data with a filename)")  # fmt: skip
NUMBER = FieldHelp(send="an integer from 0 to 9 as the form field 'number'", kind="an integer from 0 to 9")
IMAGES = FieldHelp(send="each picture as a file field named 'images'", kind="file uploads (multipart/form-data)")
NUMBERS = FieldHelp(send="one integer 0-9 per image as fields named 'numbers'", kind="integers from 0 to 9")

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


def form_with(*single: str) -> Depends:  # type: ignore[valid-type]
    """A dependency: 415 unless the body is a form; 422 when one of the `single` fields comes more than once.

    FastAPI has already parsed the form (request.form() is cached): it would read a JSON body as an empty
    form and report missing fields, and it silently keeps the last of repeated fields.
    """

    async def check(request: Request) -> None:
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type not in FORM_TYPES:
            got = f"The body is {content_type}, not a form" if content_type else "The request has no Content-Type"
            raise NotAForm(f"{got}; {send_form(request)}.")
        form = await request.form()
        for name in single:
            if (count := len(form.getlist(name))) > 1:
                raise InvalidField(f"{name} was sent {count} times; send it once.")

    return Depends(check)


@router.post("/predict", response_model=PredictionOut, responses=ERRORS, dependencies=[form_with("image", "number")])
@explains_fields("multipart/form-data with the file field 'image' and the field 'number'", image=IMAGE, number=NUMBER)
async def predict(
    image: ImageField,
    number: NumberField,
    predictor: PredictorDep,
    settings: SettingsDep,
    response: Response,
    debug: DebugQuery = False,
) -> PredictionOut:
    """Recognise the handwritten digit and add the number; digit and sum both come from the network."""
    predictor.require_ready()
    deadline = predictor.deadline()
    start = time.perf_counter()
    decoded_image = await predictor.decode(await image.read(), deadline)
    decoded = time.perf_counter()
    DECODE_SECONDS.observe(decoded - start)
    timed = await predictor.predict(decoded_image, number, deadline)
    response.headers[MODEL_HEADER] = predictor.model.sha256[:12]
    response.headers["Server-Timing"] = (
        f"decode;dur={(decoded - start) * 1000:.2f}, queue;dur={timed.queue_s * 1000:.2f}, "
        f"inference;dur={timed.inference_s * 1000:.2f}"
    )
    answer = timed.value
    return encode(
        answer.prediction, number, low_confidence_threshold(settings, predictor), answer.pixels if debug else None
    )


def low_confidence_threshold(settings: Settings, predictor: Predictor) -> float:
    """DIGITSUM_LOW_CONFIDENCE when set, else the threshold calibrated into the model's card."""
    return predictor.model.low_confidence_threshold if settings.low_confidence is None else settings.low_confidence


@router.post(
    "/predict/batch", response_model=BatchOut, responses=ERRORS, dependencies=[form_with()], tags=["prediction"]
)
@explains_fields("multipart/form-data with file fields 'images' and fields 'numbers'", images=IMAGES, numbers=NUMBERS)
async def predict_batch(
    images: ImagesField, numbers: NumbersField, predictor: PredictorDep, settings: SettingsDep, response: Response
) -> BatchOut:
    """Many images in one request, answered in order; each item has its own result or its own error."""
    predictor.require_ready()
    if len(images) > settings.max_batch_size:
        raise InvalidField(f"images has {len(images)} files; send at most {settings.max_batch_size} per request.")
    if len(numbers) not in (1, len(images)):
        raise InvalidField(
            f"numbers has {len(numbers)} values for {len(images)} images; send one per image, or a single one for all."
        )
    numbers = numbers * len(images) if len(numbers) == 1 else numbers
    deadline = predictor.deadline()
    uploads = [await image.read() for image in images]
    results = await predictor.predict_many(await predictor.decode_many(uploads, deadline), numbers, deadline)
    response.headers[MODEL_HEADER] = predictor.model.sha256[:12]
    threshold = low_confidence_threshold(settings, predictor)
    return BatchOut(
        results=[
            BatchItemOut(index=i, status=200, prediction=encode(result.prediction, number, threshold, None))
            if isinstance(result, Answer)
            else BatchItemOut(index=i, status=result.status_code, detail=result.detail)
            for i, (result, number) in enumerate(zip(results, numbers, strict=True))
        ]
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
