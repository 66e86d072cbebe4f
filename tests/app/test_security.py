"""CORS closed unless configured, request ids on answers and log lines, and no unpickling of client data."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.middleware import RequestIdFilter
from app.settings import Settings
from tests.support.service import ROOT, SHIPPED_MODEL

FOREIGN, OURS = "https://evil.example", "https://digits.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST"}


def app_client(**settings: object) -> TestClient:
    """No lifespan (no `with`): CORS and request ids are answered before any route needs the model."""
    return TestClient(create_app(Settings(model_path=SHIPPED_MODEL, device="cpu", **settings)))  # type: ignore[arg-type]


def test_cors_is_closed_by_default() -> None:
    client = app_client()
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": FOREIGN}).headers
    preflight = client.options("/predict", headers={"Origin": FOREIGN, **PREFLIGHT})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_cors_opens_to_the_origins_in_digitsum_cors_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSUM_CORS_ORIGINS", f'["{OURS}"]')
    client = app_client()
    assert client.get("/healthz", headers={"Origin": OURS}).headers["access-control-allow-origin"] == OURS
    preflight = client.options("/predict", headers={"Origin": OURS, **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == OURS
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": FOREIGN}).headers


@pytest.mark.parametrize(
    ("offered", "echoed"),
    [("trace-42.a_b", True), (None, False), ("x" * 65, False), ("<script>alert(1)</script>", False), ("a b", False)],
)
def test_every_answer_carries_a_request_id_and_only_a_tame_one_is_echoed(
    client: TestClient, offered: str | None, echoed: bool
) -> None:
    response = client.get("/nowhere", headers={"X-Request-ID": offered} if offered else {})
    rid = response.headers["X-Request-ID"]
    assert rid == offered if echoed else re.fullmatch("[0-9a-f]{32}", rid)


def test_a_log_line_written_while_serving_a_request_carries_its_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """python-multipart warns about a malformed body from inside the request: the line names the request."""
    caplog.handler.addFilter(RequestIdFilter())  # as the service's own handler has
    logger = logging.getLogger("python_multipart")
    logger.addHandler(caplog.handler)  # it does not propagate to the root logger
    try:
        body = b"not the boundary at all"
        headers = {"Content-Type": "multipart/form-data; boundary=xyz", "X-Request-ID": "malformed-7"}
        assert client.post("/predict", content=body, headers=headers).status_code == 400
    finally:
        logger.removeHandler(caplog.handler)
    assert caplog.records and {getattr(record, "request_id", None) for record in caplog.records} == {"malformed-7"}


def test_nothing_a_client_sends_is_unpickled() -> None:
    """The only deserialiser of a file is torch.jit.load of the configured checkpoint (TorchScript, no pickle
    of arbitrary classes); uploads go to Pillow, form fields to pydantic."""
    source = "\n".join(path.read_text() for path in (ROOT / "app").rglob("*.py"))
    assert not re.search(r"\bpickle\b|torch\.load\(|allow_pickle|(?<![.\w])(eval|exec)\(|yaml\.load\(", source)
    assert source.count("torch.jit.load(") == 1
