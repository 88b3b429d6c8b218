"""The API documents (/docs/json, /docs/yaml, /openapi.json) and the pages that read them: Swagger UI at /docs and
ReDoc at /redoc, with their scripts and styles served from this server (the copies the fastapi-offline package
ships, Swagger UI 5, which renders the OpenAPI 3.1 document FastAPI emits), so that they work where no CDN can be
reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
import yaml
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

TITLE = "ComfyUI API"
STATIC_PREFIX = "/docs/static"
STATIC_DIR = Path(fastapi_offline.__file__).parent / "static"
REDOC_PATH = "/redoc"
# Open without a key, as the documents are (api/auth.py): ReDoc's page, and the pages' scripts, styles and icon.
OPEN_PATHS = frozenset(
    {REDOC_PATH, *(f"{STATIC_PREFIX}/{path.name}" for path in STATIC_DIR.iterdir() if path.is_file())}
)


def add_doc_routes(app: FastAPI, openapi_url: str) -> None:
    """Swagger UI, ReDoc, their files, and the document in YAML and at /openapi.json beside `openapi_url`."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="docs-static")
    favicon = f"{STATIC_PREFIX}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=TITLE,
            swagger_js_url=f"{STATIC_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PREFIX}/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters={"deepLinking": True},
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=TITLE,
            redoc_js_url=f"{STATIC_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    @app.get("/docs/yaml", include_in_schema=False)
    async def openapi_yaml() -> Response:
        return Response(yaml.safe_dump(app.openapi(), sort_keys=False), media_type="application/yaml")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        document: dict[str, Any] = app.openapi()
        return JSONResponse(document)
