"""Upload blocks of a request (`s3`, `hf_upload`, `azure_blob_upload`, `http_upload`): their URLs, and the
uploads themselves, streamed from disk, in parallel; of two uploads to one URL, the latest one's file stays."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UploadError
from ..metrics import Metrics
from ..urls import redact_url
from .base import content_type_for
from .manager import StorageManager

logger = logging.getLogger(__name__)


class _UploadBlock(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)

    async_: bool = Field(False, alias="async", description="true: answer 202 at once and upload in the background.")


# Names the providers accept, checked before the prompt runs (a bad one would fail only after it, as a 502).
# S3: the bucket rules, with the upper case and underscores of legacy buckets.
_S3_BUCKET = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$"
# Azure: lower-case letters, digits and single hyphens between them; 3 to 63 characters (the Field bounds).
_AZURE_CONTAINER = r"^(?:\$root|\$web|[a-z0-9](?:-?[a-z0-9])*)$"
_HF_REPO = r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$"


class S3Upload(_UploadBlock):
    bucket: str = Field(pattern=_S3_BUCKET, description="An S3 bucket name.")
    prefix: str = Field(
        description="Put before each file name as given, as the reference server does: `runs/` gives "
        "`runs/<name>`, `runs/42-` gives `runs/42-<name>`."
    )


class HfUpload(_UploadBlock):
    repo: str = Field(pattern=_HF_REPO, description="`<owner>/<name>`.")
    repo_type: Literal["model", "dataset"] = "model"
    revision: str = "main"
    directory: str = "/"


class AzureBlobUpload(_UploadBlock):
    container: str = Field(
        pattern=_AZURE_CONTAINER, min_length=3, max_length=63, description="An Azure Blob container name."
    )
    blob_prefix: str = Field(
        "",
        description="Put before each file name as given, as the reference server does: `runs/` gives "
        "`runs/<name>`, `runs/42-` gives `runs/42-<name>`.",
    )


class HttpUpload(_UploadBlock):
    url_prefix: str


UploadBlock = S3Upload | HfUpload | AzureBlobUpload | HttpUpload


def _in_folder(directory: str, name: str) -> str:
    """`name` inside `directory`, one '/' between them (hf_upload's `directory` names a folder)."""
    directory = directory.strip("/")
    return f"{directory}/{name}" if directory else name


def _prefixed(prefix: str, name: str) -> str:
    """`prefix` and `name` joined as given (no '/' added), as the reference server builds S3 keys and blob names, so
    that objects land where a client written for it expects them. Its leading '/' is dropped: the reference drops
    it from a blob prefix, and an S3 key read from an `s3://` URL here never starts with one."""
    return prefix.lstrip("/") + name


def _quoted(path: str) -> str:
    return "/".join(quote(segment, safe="") for segment in path.split("/") if segment)


def upload_url(block: UploadBlock, filename: str, *, hf_endpoint: str, azure_base: str | None) -> str:
    """The URL one output file goes to under an upload block."""
    if isinstance(block, S3Upload):
        return f"s3://{block.bucket}/{_prefixed(block.prefix, filename)}"
    if isinstance(block, HfUpload):
        kind = "datasets/" if block.repo_type == "dataset" else ""
        path = _quoted(_in_folder(block.directory, filename))
        return f"{hf_endpoint.rstrip('/')}/{kind}{block.repo}/resolve/{quote(block.revision, safe='')}/{path}"
    if isinstance(block, AzureBlobUpload):
        if azure_base is None:
            raise UploadError("Azure Blob uploads need AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT")
        blob = _quoted(_prefixed(block.blob_prefix, filename))
        return f"{azure_base.rstrip('/')}/{quote(block.container, safe='')}/{blob}"
    if isinstance(block, HttpUpload):
        return f"{block.url_prefix.rstrip('/')}/{_quoted(filename)}"
    raise TypeError(type(block))


class Uploader:
    def __init__(
        self,
        storage: StorageManager,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._storage = storage
        self._on_event = on_event
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    async def upload_all(self, files: list[tuple[Path, str]]) -> list[str]:
        """Upload (file, url) pairs in parallel; the URLs in order, or UploadError naming the first failure."""
        results = await asyncio.gather(*(self._upload(path, url) for path, url in files), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [url for _, url in files]

    async def _upload(self, path: Path, url: str) -> None:
        provider = self._storage.provider_for(url)
        previous = self._in_flight.get(url)

        async def after_previous() -> None:
            # Uploads to one URL run one after another, so the latest request's file is the one that stays
            # (a thread-based upload cannot be aborted half-way, so it is waited for, not cancelled).
            if previous is not None:
                await asyncio.wait({previous})
            await provider.upload(path, url, content_type_for(path.name))

        started = time.monotonic()
        task = asyncio.create_task(after_previous())
        self._in_flight[url] = task
        try:
            await task
        finally:
            if self._in_flight.get(url) is task:
                del self._in_flight[url]
        size = os.stat(path).st_size
        logger.info("uploaded", extra={"url": redact_url(url), "size": size})
        if self._metrics is not None:
            self._metrics.transferred("upload", provider.name, size, time.monotonic() - started)
        if self._on_event is not None:
            self._on_event(
                "file_uploaded",
                {
                    "url": redact_url(url),
                    "local_path": str(path),
                    "size": size,
                    "duration": time.monotonic() - started,
                },
            )
