"""GET /docs: Swagger UI served from this service, so "Try it out" works where no CDN can be reached.

The JavaScript and CSS come from the fastapi-offline wheel (Swagger UI 5.x, which reads OpenAPI 3.1's
`contentMediaType` and so shows a file picker for `image`); create_app mounts them at DOCS_STATIC_URL.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC_URL = "/docs-static"

router = APIRouter(tags=["docs"], include_in_schema=False)

static = StaticFiles(directory=Path(fastapi_offline.__file__).resolve().parent / "static")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for /openapi.json, with its assets from this origin."""
    app, root = request.app, request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}",
        swagger_js_url=f"{root}{DOCS_STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_STATIC_URL}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    """Where Swagger UI's OAuth2 flow returns to (FastAPI's default swagger_ui_oauth2_redirect_url)."""
    return get_swagger_ui_oauth2_redirect_html()
