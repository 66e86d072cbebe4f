"""Schemathesis against the live app's OpenAPI schema: no 5xx, and every answer conforms to the schema.

Every operation gets up to MAX_EXAMPLES generated requests, schema-valid and schema-violating ones, with
the default checks: no server error, status codes, content types, headers and bodies as declared, and
schema-violating requests rejected with a 4xx. Half of the schema-valid uploads carry a real digit, so
the 200 answers are checked too. About 10 s on 2 CPU cores.

Schemathesis's pytest plugin runs the app's lifespan itself and ends it after each operation, so each
operation starts with a model load and waits here for readiness (a /readyz 503 while warming up is by
design, not a failure).
"""

from __future__ import annotations

import time
import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection

from app.main import create_app
from app.settings import Settings
from tests.support.service import ROOT, SHIPPED_MODEL

MAX_EXAMPLES = 60
DIGIT_PNG = (ROOT / "app" / "assets" / "selftest-7.png").read_bytes()  # a real test-split 7

# A schema can say "a binary file" but not "a decodable image that shows a digit": random bytes are
# schema-valid and rightly refused with 413, 415 or 422; every other refusal of valid data is a failure.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 413, 415, 422]}}}
)
# A multipart form cannot carry JSON types: a file's content is bytes whatever the schema says ("false" is a
# file that is not an image: 415 for that item inside a 200), and one `numbers` field is both an integer and a
# list of one (one number for every image, by design). So a "schema-violating" batch is often a valid one.
NOT_FOR_MULTIPART_LISTS = [negative_data_rejection]
APP = create_app(Settings(model_path=SHIPPED_MODEL, device="cpu"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@pytest.fixture(autouse=True)
def ready() -> None:
    deadline = time.monotonic() + 60
    while schema["/readyz"]["GET"].Case().call().status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.05)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_and_none_is_a_server_error(case: schemathesis.Case) -> None:
    if is_valid_upload(case) and zlib.crc32(repr(case.body).encode()) % 2:  # half of them: real digits
        assert isinstance(case.body, dict)
        if "image" in case.body:
            case.body["image"] = DIGIT_PNG  # type: ignore[assignment]  # bytes are what a file field carries
        if isinstance(case.body.get("images"), list):
            case.body["images"] = [DIGIT_PNG] * len(case.body["images"])
    case.call_and_validate(excluded_checks=NOT_FOR_MULTIPART_LISTS if case.operation.path == "/predict/batch" else [])


def is_valid_upload(case: schemathesis.Case) -> bool:
    """A schema-valid POST /predict or /predict/batch: random bytes as images would never get past decoding."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    uploads = case.operation.label in ("POST /predict", "POST /predict/batch")
    return uploads and positive and isinstance(case.body, dict)
