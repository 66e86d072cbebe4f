"""GET /: a page for people who want to draw a digit and try the model (the API's own docs are at /docs)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Everything comes from this origin; data: only for the 28x28 PNG that /predict?debug=true returns.
# No inline script or style, so an injected tag can neither run nor restyle the page.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["pages"], include_in_schema=False)

static = StaticFiles(directory=STATIC_DIR)  # mounted at /static by create_app


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The draw-a-digit page: plain HTML, CSS and JavaScript from app/static, no build step."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)
