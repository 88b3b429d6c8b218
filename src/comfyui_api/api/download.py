"""POST /download: fetch a model into a model folder ahead of the prompts that need it."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ApiError, BadRequest, DownloadError, InvalidName, located
from ..storage.auth import DownloadAuth
from ..storage.manager import StorageManager
from ..urls import redact_url, safe_leaf_name, url_leaf_name
from .deps import CatalogDep, ComfyClientDep, SettingsDep, StorageDep
from .handlers import CLIENT_ERRORS

logger = logging.getLogger(__name__)
router = APIRouter(tags=["models"])

# http, https (Azure Blob and Hugging Face URLs among them) or s3 in any case, then a host. The OpenAPI document
# carries the same pattern, so it uses only what every regex dialect reads alike (no \s: the dialects disagree).
URL_PATTERN = r"^(?:[Hh][Tt][Tt][Pp][Ss]?|[Ss]3)://[^/?#\x00-\x20\x7f]"


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(
        description="The model file's URL: `http://` or `https://` (Azure Blob and Hugging Face URLs among them) "
        "or `s3://<bucket>/<key>`.",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    model_type: str = Field(description="A folder of MODEL_DIR, e.g. `checkpoints` or `loras`.")
    filename: str | None = Field(None, description="File name in the folder; default: the URL's file name.")
    wait: bool = Field(False, description="true: answer when the download is done; false: answer 202 at once.")
    auth: DownloadAuth | None = None

    @field_validator("url")
    @classmethod
    def _is_url(cls, value: str) -> str:
        if not re.match(URL_PATTERN, value):
            raise ValueError("must be an http(s):// or s3:// URL")
        return value

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        try:
            return None if value is None else safe_leaf_name(value)
        except InvalidName as exc:
            raise ValueError(str(exc)) from None


class _DownloadAnswer(BaseModel):
    url: str = Field(description="The URL without user-info, query string or fragment.")
    model_type: str


class DownloadStarted(_DownloadAnswer):
    filename: str | None = Field(description="The requested or the URL's file name; null: named by the download.")
    status: Literal["started"]


class DownloadCompleted(_DownloadAnswer):
    filename: str = Field(description="The file's name in the model folder.")
    status: Literal["completed"]
    size: int = Field(description="Bytes.")
    duration: float = Field(description="Seconds.")


@router.post(
    "/download",
    response_model=DownloadCompleted,
    responses={
        **CLIENT_ERRORS,
        202: {"model": DownloadStarted, "description": "`wait` is false: the download goes on in the background"},
    },
)
async def download(
    body: DownloadRequest,
    settings: SettingsDep,
    storage: StorageDep,
    client: ComfyClientDep,
    catalog: CatalogDep,
    background: BackgroundTasks,
) -> JSONResponse:
    """Download a model file (through the cache) and link it into `MODEL_DIR/<model_type>/`."""
    model_dir = settings.models_path
    types = sorted(path.name for path in model_dir.iterdir() if path.is_dir()) if model_dir.is_dir() else []
    if body.model_type not in types:
        raise BadRequest(
            f"Unknown model type: {body.model_type}. Available types: {', '.join(types)}", location="model_type"
        )
    with located("url"):
        await storage.check_url(body.url, body.auth)
        storage.provider_for(body.url)
    filename = body.filename or url_leaf_name(body.url)
    echo: dict[str, Any] = {"url": redact_url(body.url), "model_type": body.model_type}
    if not body.wait:
        background.add_task(_download_in_background, storage, body, model_dir / body.model_type, filename)
        return JSONResponse({**echo, "filename": filename, "status": "started"}, status_code=202)
    started = time.monotonic()
    with located("url"):
        result = await storage.download(body.url, model_dir / body.model_type, filename=filename, auth=body.auth)
    storage.release(result)
    with contextlib.suppress(ApiError):  # the download stands; the catalog catches up on the next refresh
        await catalog.read_models(client, model_dir)  # workflow choices see the new file at once
    return JSONResponse(
        {
            **echo,
            "filename": result.link.name,
            "status": "completed",
            "size": result.size,
            "duration": round(time.monotonic() - started, 3),
        }
    )


async def _download_in_background(
    storage: StorageManager, body: DownloadRequest, target: Path, filename: str | None
) -> None:
    try:
        result = await storage.download(body.url, target, filename=filename, auth=body.auth)
    except DownloadError as exc:
        logger.error("background download failed", extra={"url": redact_url(body.url), "error": str(exc)})
        return
    storage.release(result)
    logger.info("background download complete", extra={"url": redact_url(body.url), "path": str(result.link)})
