"""CORS closed unless configured, request ids on answers and log lines, and no unpickling of client data."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.errors import StartupError
from app.main import create_app
from app.middleware import RequestIdFilter
from app.model import Model, choose_device
from app.settings import Settings, get_settings
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


@pytest.mark.parametrize("path", ["/healthz", "/predict-nowhere", "/docs", "/", "/static/app.js", "/openapi.json"])
def test_every_answer_forbids_sniffing_and_framing(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_the_page_keeps_its_own_content_security_policy(client: TestClient) -> None:
    assert client.get("/").headers["Content-Security-Policy"].startswith("default-src 'none'")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/model", "/", "/static/app.js", "/metrics"])
def test_head_works_on_every_get_route_without_a_body(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == str(len(client.get(path).content)) or path == "/metrics"


def test_only_the_allowed_hosts_are_answered_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSUM_ALLOWED_HOSTS", '["digits.example", "localhost"]')
    client = app_client()
    assert client.get("/healthz", headers={"Host": "digits.example"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
    rebound = client.get("/model", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400
    assert (
        rebound.json()["detail"]
        == "This service does not answer to the host 'attacker.example'; use its configured name."
    )


def test_the_model_card_shows_no_path_of_the_host(client: TestClient) -> None:
    card = client.get("/model").text
    assert str(ROOT) not in card and '"file":"digitsum.pt"' in card


def test_metric_labels_stay_bounded_whatever_the_method_or_path(client: TestClient) -> None:
    for method in ("BREW", "PROPFIND", "X" * 50):
        client.request(method, "/healthz")
    client.get("/static/app.js")
    client.get("/no/such/path/12345")
    metrics = client.get("/metrics").text
    assert 'method="other"' in metrics and "BREW" not in metrics and "PROPFIND" not in metrics
    assert 'route="/static/{path}",status="200"' in metrics.replace('method="GET",', "")
    assert "12345" not in metrics


def test_a_list_setting_that_is_not_json_stops_startup_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSUM_CORS_ORIGINS", "notjson")
    get_settings.cache_clear()
    try:
        with pytest.raises(StartupError) as error:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert str(error.value) == (
        "Invalid setting DIGITSUM_CORS_ORIGINS: it must be a JSON list, e.g. '[\"https://example.org\"]'."
    )


def test_a_checkpoint_without_its_card_is_refused_unless_allowed(tmp_path: Path) -> None:
    lone = tmp_path / "digitsum.pt"
    lone.write_bytes(SHIPPED_MODEL.read_bytes())
    with pytest.raises(StartupError, match="Model card .* not found, so the checkpoint cannot be verified"):
        Model(lone, choose_device("cpu"))
    assert (
        Model(lone, choose_device("cpu"), allow_missing_card=True).sha256
        == hashlib.sha256(lone.read_bytes()).hexdigest()
    )


def test_with_an_internal_port_metrics_and_model_are_served_there_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSUM_INTERNAL_PORT", "9100")
    public, internal = app_client(), TestClient(app_client().app, base_url="http://testserver:9100")
    for path in ("/metrics", "/model"):
        refused = public.get(path)
        assert (refused.status_code, refused.json()["detail"]) == (404, f"There is nothing at {path} on this port.")
    assert internal.get("/metrics").status_code == 200
    assert public.get("/healthz").status_code == 200
    assert internal.get("/healthz").status_code == 404  # the internal port serves nothing else
