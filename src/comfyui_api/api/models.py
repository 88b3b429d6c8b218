"""GET /models: the model folders and files ComfyUI can load."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .deps import CatalogDep, ComfyClientDep, SettingsDep
from .schemas import ErrorResponse

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=dict[str, list[str]],
    responses={503: {"model": ErrorResponse, "description": "ComfyUI is unreachable"}},
)
async def list_models(
    catalog: CatalogDep, client: ComfyClientDep, settings: SettingsDep, request: Request
) -> dict[str, list[str]]:
    """`{"<folder>": ["<file relative to the folder>", …]}`, as ComfyUI lists them (so only files it can
    load), plus any folder of MODEL_DIR that ComfyUI does not know, listed from disk."""
    models = await catalog.read_models(client, settings.models_path)
    request.app.openapi_schema = None  # workflow schemas list the files: rebuild the document on next request
    return models
