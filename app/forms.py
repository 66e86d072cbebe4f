"""The API's two forms, read in one place: /predict's `image` and `number`, /predict/batch's `images` and `numbers`.

A route declares its form once, as a `FormSpec`: the fields, what each holds (files, or integers from 0 to 9),
whether it may repeat, and the sentences that tell a client how to send it. The spec reads the request
(`read`: 415 unless the body is a form, 400 when it is not a well-formed one, then a 422 sentence for a field
that is repeated, missing or of the wrong kind) and writes the route's OpenAPI request body (`openapi`), so
/docs, the schema fuzzing and the checks describe the same form.

Why not FastAPI's File() and Form() parameters: FastAPI re-inspects each parameter's type annotation on every
request (fastapi/dependencies/utils.py, request_body_to_args); without them /predict takes 0.87x the CPU per
request (benchmarks/results/request_cpu.md: both versions measured at once). The values are checked by pydantic
as FastAPI checked them: a number is what `int` with 0 <= n <= 9 accepts from a form ("3", " 3", "+3", "3.0"), and
a field left empty, or a file input with no file chosen, is a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request
from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from app.errors import BadRequest, InvalidField, NotAForm, ServiceError
from app.handlers import shown

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the bodies Starlette parses as a form
DIGIT = TypeAdapter(Annotated[int, Field(ge=0, le=9)])

# Starlette refuses a malformed form with a 400 and terse text; these are its messages, by how they start, and
# ours ({send}: how the route explains its form).
PARSING_ERRORS = {
    "Missing boundary": "The multipart/form-data Content-Type has no boundary; let your HTTP client write that "
    "header (curl -F, requests' files=...) instead of setting it by hand.",
    "Too many fields": "The form has too many fields; {send} only.",
    "Too many files": "The form has too many files; {send} only.",
    "Part exceeded": "A text field of the form is too large; {send}, a single digit.",
    "Field exceeded": "A text field of the form is too large; {send}, a single digit.",
    "Invalid multipart": "The multipart/form-data body is malformed, or a part's header (e.g. its filename) is over "
    "4 KB; {send}.",
}
UNREADABLE = "The request body could not be read as a form; {send}."


@dataclass(frozen=True)
class FormField:
    name: str
    files: bool  # file uploads, else integers from 0 to 9
    many: bool  # a list, one field per item; else sent exactly once
    send: str  # what to send: "number is required: send <send>."
    kind: str  # what it must be: "number must be <kind>, got '3.5'."
    description: str  # for /docs


@dataclass(frozen=True)
class FormSpec:
    explains: str  # "multipart/form-data with the file field 'image' and the field 'number'"
    fields: tuple[FormField, ...]

    async def read(self, request: Request) -> dict[str, Any]:
        """{name: bytes or int, or a list of them for a field that repeats}; the form's files are closed after."""
        send = f"send {self.explains}"
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type not in FORM_TYPES:
            got = f"The body is {content_type}, not a form" if content_type else "The request has no Content-Type"
            raise NotAForm(f"{got}; {send}.")
        try:
            form = await request.form()
        except HTTPException as exc:
            if isinstance(exc, ServiceError):  # the body's own caps (app/middleware.py BodyLimits): 408, 413
                raise
            text = next((text for start, text in PARSING_ERRORS.items() if exc.detail.startswith(start)), UNREADABLE)
            raise BadRequest(text.format(send=send)) from None
        try:
            given = [present(form, field) for field in self.fields]  # every repeat first, then each field in order
            return {field.name: await values_of(field, sent) for field, sent in zip(self.fields, given, strict=True)}
        finally:
            await form.close()

    def openapi(self) -> dict[str, Any]:
        """The route's `openapi_extra`: this form as its required multipart/form-data request body."""
        schema = {
            "type": "object",
            "properties": {field.name: property_schema(field) for field in self.fields},
            "required": [field.name for field in self.fields],
        }
        return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def present(form: FormData, field: FormField) -> list[UploadFile | str]:
    """What the form holds for `field`, without the file inputs a browser sends with no file chosen; a field sent
    once and left empty counts as not sent (in a list an empty value stays, and is refused as not a number)."""
    sent = form.getlist(field.name)
    if len(sent) > 1 and not field.many:
        raise InvalidField(f"{field.name} was sent {len(sent)} times; send it once.")
    return [value for value in sent if not no_file_chosen(value) and (field.many or value != "")]


def no_file_chosen(value: UploadFile | str) -> bool:
    return isinstance(value, UploadFile) and value.filename == "" and value.size == 0


async def values_of(field: FormField, sent: list[UploadFile | str]) -> Any:
    if not sent:
        raise InvalidField(f"{field.name} is required: send {field.send}.")
    values = [await value_of(field, value) for value in sent]
    return values if field.many else values[0]


async def value_of(field: FormField, value: UploadFile | str) -> bytes | int:
    if field.files:
        if not isinstance(value, UploadFile):
            raise InvalidField(f"{field.name} must be {field.kind}, not a text field.")
        return await value.read()
    if not isinstance(value, str):
        raise InvalidField(f"{field.name} must be a plain form field holding {field.kind}, not a file.")
    try:
        return DIGIT.validate_python(value)
    except ValidationError:
        raise InvalidField(f"{field.name} must be {field.kind}, got {shown(value)}.") from None


def property_schema(field: FormField) -> dict[str, Any]:
    """One field as FastAPI's File() or Form() describes it (OpenAPI 3.1)."""
    one: dict[str, Any] = (
        {"type": "string", "contentMediaType": "application/octet-stream"}
        if field.files
        else {"type": "integer", "minimum": 0, "maximum": 9, "examples": [3]}
    )
    schema = {"type": "array", "items": one} if field.many else one
    return {**schema, "title": field.name.capitalize(), "description": field.description}
