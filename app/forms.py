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

Why not Starlette's `request.form()` for multipart bodies: around python-multipart's parser it makes an
UploadFile and a SpooledTemporaryFile per file part and a FormData, which cost about as much as the parsing
(measured apart: a /predict form 66-75 us through Starlette, 32-53 us through `read_multipart`'s callbacks that
keep each part's bytes; a 64-image batch form 2.3-3.1 ms against 1.5-2.4 ms). In the app, with /predict's
`?debug` read by the route too, a request takes 0.95x the CPU (benchmarks/results/request_cpu.md, against b7287cf).
Starlette's limits are kept: at most MAX_PARTS files and as many text fields, a text field at most MAX_FIELD_BYTES,
and python-multipart's own caps on part headers. A urlencoded body (which cannot carry a file) still goes through
Starlette.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Request
from pydantic import Field, TypeAdapter, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException

from app.errors import BadRequest, InvalidField, NotAForm, ServiceError
from app.handlers import shown

if TYPE_CHECKING:  # a type python-multipart defines for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MULTIPART = "multipart/form-data"
FORM_TYPES = (MULTIPART, "application/x-www-form-urlencoded")  # the bodies read as a form
DIGIT = TypeAdapter(Annotated[int, Field(ge=0, le=9)])
MAX_PARTS = 1000  # files, and text fields, in one form (Starlette's default caps)
MAX_FIELD_BYTES = 1024 * 1024  # one text field (Starlette's default cap)

# {send}: how the route explains its form
NO_BOUNDARY = (
    "The multipart/form-data Content-Type has no boundary; let your HTTP client write that header (curl -F, "
    "requests' files=...) instead of setting it by hand."
)
TOO_MANY_FIELDS = "The form has too many fields; {send} only."
TOO_MANY_FILES = "The form has too many files; {send} only."
FIELD_TOO_LARGE = "A text field of the form is too large; {send}, a single digit."
MALFORMED = "The multipart/form-data body is malformed, or a part's header (e.g. its filename) is over 4 KB; {send}."
NO_NAME = "A part of the form has no name in its Content-Disposition header; {send}."
UNREADABLE = "The request body could not be read as a form; {send}."
# Starlette's messages for a urlencoded body it refuses, by how they start
URLENCODED_ERRORS = {"Too many fields": TOO_MANY_FIELDS, "Field exceeded": FIELD_TOO_LARGE}


@dataclass(frozen=True)
class FormField:
    name: str
    files: bool  # file uploads, else integers from 0 to 9
    many: bool  # a list, one field per item; else sent exactly once
    send: str  # what to send: "number is required: send <send>."
    kind: str  # what it must be: "number must be <kind>, got '3.5'."
    description: str  # for /docs


@dataclass(frozen=True)
class FileUpload:
    """A file part of the form: its filename ('' for a file input left empty) and its bytes."""

    filename: str
    data: bytes


Sent = FileUpload | str  # what one part of a form holds
Parts = dict[str, list[Sent]]  # the form: each name's parts, in the order sent


@dataclass(frozen=True)
class FormSpec:
    explains: str  # "multipart/form-data with the file field 'image' and the field 'number'"
    fields: tuple[FormField, ...]

    async def read(self, request: Request) -> dict[str, Any]:
        """{name: bytes or int, or a list of them for a field that repeats}."""
        send = f"send {self.explains}"
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        kind = content_type.decode("latin-1")  # lowercased and stripped by python-multipart
        if kind not in FORM_TYPES:
            got = f"The body is {kind}, not a form" if kind else "The request has no Content-Type"
            raise NotAForm(f"{got}; {send}.")
        if kind == MULTIPART:
            if b"boundary" not in options:
                raise BadRequest(NO_BOUNDARY)
            form = await read_multipart(request, options[b"boundary"], send)
        else:
            form = await read_urlencoded(request, send)
        given = [present(form, field) for field in self.fields]  # every repeat first, then each field in order
        return {field.name: values_of(field, sent) for field, sent in zip(self.fields, given, strict=True)}

    def openapi(self) -> dict[str, Any]:
        """The route's `openapi_extra`: this form as its required multipart/form-data request body."""
        schema = {
            "type": "object",
            "properties": {field.name: property_schema(field) for field in self.fields},
            "required": [field.name for field in self.fields],
        }
        return {"requestBody": {"required": True, "content": {MULTIPART: {"schema": schema}}}}


async def read_multipart(request: Request, boundary: bytes, send: str) -> Parts:
    """The body's parts, read as it arrives (through the body's caps, app/middleware.py BodyLimits)."""
    reader = MultipartReader(send)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        raise BadRequest(MALFORMED.format(send=send)) from None
    return reader.parts


class MultipartReader:
    """python-multipart's callbacks, keeping each part's bytes in memory (the body is capped, and small)."""

    def __init__(self, send: str) -> None:
        self.send = send
        self.parts: Parts = {}
        self.files = self.texts = 0
        self._header = [b"", b""]  # the name and value of the part header being read
        self._disposition = b""
        self._name = ""  # of the part being read...
        self._filename: str | None = None  # ...and its filename: a text field has none
        self._data: list[bytes] = []
        self._size = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._disposition, self._data, self._size = b"", [], 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def on_header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise BadRequest(NO_NAME.format(send=self.send))
        self._name = text_of(options[b"name"])
        self._filename = text_of(options[b"filename"]) if b"filename" in options else None
        if self._filename is None:
            self.texts += 1
            if self.texts > MAX_PARTS:
                raise BadRequest(TOO_MANY_FIELDS.format(send=self.send))
        else:
            self.files += 1
            if self.files > MAX_PARTS:
                raise BadRequest(TOO_MANY_FILES.format(send=self.send))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._filename is None and self._size > MAX_FIELD_BYTES:
            raise BadRequest(FIELD_TOO_LARGE.format(send=self.send))
        self._data.append(data[start:end])

    def on_part_end(self) -> None:
        data = b"".join(self._data)
        value = text_of(data) if self._filename is None else FileUpload(self._filename, data)
        self.parts.setdefault(self._name, []).append(value)


def text_of(data: bytes) -> str:
    """A text field or a part's name, as Starlette decodes it: UTF-8, else Latin-1 (which cannot fail)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("latin-1")


async def read_urlencoded(request: Request, send: str) -> Parts:
    """A urlencoded body, through Starlette (it has text fields only, so it fails on the first file field)."""
    try:
        form = await request.form()
    except HTTPException as exc:
        if isinstance(exc, ServiceError):  # the body's own caps (app/middleware.py BodyLimits): 408, 413
            raise
        text = next((text for start, text in URLENCODED_ERRORS.items() if exc.detail.startswith(start)), UNREADABLE)
        raise BadRequest(text.format(send=send)) from None
    parts: Parts = {}
    for name, value in form.multi_items():
        assert isinstance(value, str)  # a urlencoded form holds text only
        parts.setdefault(name, []).append(value)
    return parts


def present(form: Parts, field: FormField) -> list[Sent]:
    """What the form holds for `field`, without the file inputs a browser sends with no file chosen; a field sent
    once and left empty counts as not sent (in a list an empty value stays, and is refused as not a number)."""
    sent = form.get(field.name, [])
    if len(sent) > 1 and not field.many:
        raise InvalidField(f"{field.name} was sent {len(sent)} times; send it once.")
    return [value for value in sent if not no_file_chosen(value) and (field.many or value != "")]


def no_file_chosen(value: Sent) -> bool:
    return isinstance(value, FileUpload) and value.filename == "" and not value.data


def values_of(field: FormField, sent: list[Sent]) -> Any:
    if not sent:
        raise InvalidField(f"{field.name} is required: send {field.send}.")
    values = [value_of(field, value) for value in sent]
    return values if field.many else values[0]


def value_of(field: FormField, value: Sent) -> bytes | int:
    if field.files:
        if not isinstance(value, FileUpload):
            raise InvalidField(f"{field.name} must be {field.kind}, not a text field.")
        return value.data
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
