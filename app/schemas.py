"""Response bodies, as the OpenAPI schema shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictionOut(BaseModel):
    digit: int = Field(ge=0, le=9, description="the digit the network recognised", examples=[7])
    sum: int = Field(
        ge=0, le=18, description="the network's sum of the digit and the number; always digit + number", examples=[10]
    )
    number: int = Field(ge=0, le=9, description="the number that was sent", examples=[3])
    digit_confidence: float = Field(ge=0, le=1, description="probability of the recognised digit", examples=[0.998])
    sum_confidence: float = Field(ge=0, le=1, description="probability of the sum", examples=[0.997])
    heads_agree: bool = Field(
        description="true when the digit head alone and the sum head alone both give this answer; false: they "
        "split, the answer is their joint best guess (still digit + number = sum) and low_confidence is true"
    )
    no_digit: bool = Field(
        description="true when the model's non-digit detector, a small head on the digit network, finds the image "
        "is likely no digit at all (a letter, a shape, a scribble); the digit and sum are still the network's best "
        "guess, and low_confidence is true"
    )
    low_confidence: bool = Field(
        description="true when digit_confidence is under the service's threshold, the heads disagree or no_digit "
        "is true: the image may not be a clear single digit"
    )
    digit_probabilities: list[float] = Field(min_length=10, max_length=10, description="P(digit = 0..9)")
    input_image: str | None = Field(
        None, description="with ?debug=true: the 28x28 image the network saw, as a PNG data URL"
    )


class BatchItemOut(BaseModel):
    index: int = Field(ge=0, description="the image's position in the request, from 0")
    status: int = Field(description="200, or the status this image alone would have got (413, 415, 422, 503, 504)")
    prediction: PredictionOut | None = Field(None, description="the answer, when status is 200")
    detail: str | None = Field(None, description="one sentence saying what went wrong, when status is not 200")


class BatchOut(BaseModel):
    results: list[BatchItemOut] = Field(description="one per image, in the order they were sent")


class ErrorOut(BaseModel):
    detail: str = Field(examples=["number must be an integer from 0 to 9."])


class ReadyOut(BaseModel):
    ready: bool
    reason: str


class ModelOut(BaseModel):
    file: str = Field(description="the checkpoint's file name", examples=["digitsum.pt"])
    sha256: str
    device: str = Field(examples=["cuda"])
    device_reason: str
    metadata: dict[str, Any] = Field(description="the card stored inside the checkpoint")
