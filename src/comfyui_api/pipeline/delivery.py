"""Deliver a finished job: base64 in the response (streamed from disk), uploads, and webhooks.

Delivery mode, as the reference server: a legacy `webhook` sends one `output.complete` per output (upload
blocks are then ignored); else the first upload block present (s3, hf_upload, azure_blob_upload,
http_upload) uploads every output and `images` are URLs; else `images` are base64. A request is async
(202 at once, the rest in the background) with `webhook`, `webhook_v2`, or an upload block with `async`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..api.schemas import PromptRequest
from ..errors import ApiError, BadRequest
from ..storage.auth import S3Auth
from ..storage.base import DownloadError, UploadError
from ..storage.net import UnsafeUrl, UrlGuard
from ..storage.uploads import AzureBlobUpload, Uploader, upload_url
from ..webhooks import payloads
from ..webhooks.sender import WebhookSender
from .jobs import Job, now_ms
from .runner import PromptRunner

logger = logging.getLogger(__name__)

# Read in multiples of 3 bytes, so each chunk's base64 has no padding and chunks concatenate.
_READ_CHUNK = 3 * 1024 * 1024
# Outputs up to this size in all are answered in one piece; larger ones are streamed from disk.
_INLINE_LIMIT = 1024 * 1024
_IMAGES_SLOT = "\x00images\x00"


class UploadFailed(ApiError):
    """An upload to the provider failed (the request's outputs are lost to it)."""

    status_code = 502


class Delivery:
    def __init__(
        self,
        runner: PromptRunner,
        uploader: Uploader,
        webhooks: WebhookSender,
        *,
        hf_endpoint: str,
        azure_base: str | None,
        guard: UrlGuard,
    ) -> None:
        self._guard = guard
        self._runner = runner
        self._uploader = uploader
        self._webhooks = webhooks
        self._hf_endpoint = hf_endpoint
        self._azure_base = azure_base
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, request: PromptRequest, *, extra: dict[str, Any] | None = None) -> Response:
        """Run a request through the pipeline and answer it (200 with results, or 202 when async).

        `extra` fields are added to the response (a workflow endpoint's validated `input`).
        """
        extra = extra or {}
        await self._check_request(request)
        job = await self._runner.start(request)
        if request.is_async:
            if request.webhook:
                logger.warning("the `webhook` field is deprecated; use `webhook_v2`", extra={"request_id": job.id})
            self._spawn(self._complete_in_background(job, request))
            accepted = {**request.echo(), "status": "ok", "id": job.id, "prompt": job.graph, **extra}
            return JSONResponse(accepted, status_code=202)
        streaming = False
        try:
            await self._runner.finish(job, request.convert_output)
            if request.upload_block is not None:
                return JSONResponse({**self._body(job, request, await self._upload(job, request)), **extra})
            if sum(output.path.stat().st_size for output in job.outputs) <= _INLINE_LIMIT:
                # Small outputs are encoded at once, in the event loop: a stream (a task per response, a thread
                # hop per read) costs more than the encoding itself.
                images = [base64.b64encode(output.path.read_bytes()).decode("ascii") for output in job.outputs]
                return JSONResponse({**self._body(job, request, images), **extra})
            # The stream closes the job once the last byte is sent.
            streaming = True
            return StreamingResponse(self._stream_base64(job, request, extra), media_type="application/json")
        finally:
            if not streaming:
                await self._runner.close(job)

    async def _check_request(self, request: PromptRequest) -> None:
        """A 400 at the field, before any work starts (a failure after the prompt ran, or after the 202, could only
        be a 502 or a log line): an upload block this server cannot serve, and a webhook, upload or credentials
        endpoint URL it must not reach (each connection is checked again)."""
        if isinstance(request.upload_block, AzureBlobUpload) and self._azure_base is None:
            raise BadRequest(
                "azure_blob_upload: Azure Blob uploads need AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT",
                location="azure_blob_upload",
            )
        urls = [("webhook", request.webhook), ("webhook_v2", request.webhook_v2)]
        if request.http_upload is not None:
            urls.append(("http_upload.url_prefix", request.http_upload.url_prefix))
        for index, credential in enumerate(request.credentials or ()):
            if isinstance(credential.auth, S3Auth):
                urls.append((f"credentials.{index}.auth.endpoint", credential.auth.endpoint))
        for location, url in urls:
            if url is None:
                continue
            try:
                await self._guard.check(url, field=location)
            except UnsafeUrl as exc:
                raise BadRequest(f"{location}: {exc}", location=location) from None

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """Let background deliveries finish (bounded), so an async request is not lost at shutdown."""
        if self._background:
            await asyncio.wait(self._background, timeout=timeout_s)

    # modes -------------------------------------------------------------------------------------------
    async def _upload(self, job: Job, request: PromptRequest) -> list[str]:
        block = request.upload_block
        assert block is not None
        started = now_ms()
        try:
            pairs = [
                (
                    output.path,
                    upload_url(block, output.name, hf_endpoint=self._hf_endpoint, azure_base=self._azure_base),
                )
                for output in job.outputs
            ]
            urls = await self._uploader.upload_all(pairs)
        except (UploadError, DownloadError) as exc:
            raise UploadFailed(f"Upload failed: {exc}") from None
        job.stats["upload_time"] = now_ms() - started
        return urls

    def _body(self, job: Job, request: PromptRequest, images: list[str]) -> dict[str, Any]:
        stats = {**job.stats, "upload_time": job.stats.get("upload_time", 0), "total_time": now_ms() - job.received_at}
        return {
            **request.echo(),
            "id": job.id,
            "prompt": job.graph,
            "images": images,
            "filenames": [output.name for output in job.outputs],
            "stats": stats,
        }

    async def _stream_base64(self, job: Job, request: PromptRequest, extra: dict[str, Any]) -> AsyncIterator[bytes]:
        """The response JSON with each output file base64-encoded on the fly: memory stays flat."""
        try:
            head, _, tail = json.dumps({**self._body(job, request, [_IMAGES_SLOT]), **extra}).partition(
                json.dumps(_IMAGES_SLOT)
            )
            yield head.encode()
            for index, output in enumerate(job.outputs):
                yield b',"' if index else b'"'
                async for chunk in _base64_chunks(output.path):
                    yield chunk
                yield b'"'
            yield tail.encode()
        finally:
            await self._runner.close(job)

    async def _complete_in_background(self, job: Job, request: PromptRequest) -> None:
        try:
            await self._runner.finish(job, request.convert_output)
            if request.webhook:
                await self._send_legacy_outputs(job, request)
            images = await self._upload(job, request) if request.upload_block is not None else None
            if request.webhook_v2:
                if images is None:
                    images = await asyncio.to_thread(_encode_all, [output.path for output in job.outputs])
                body = payloads.prompt_complete(self._body(job, request, images))
                await self._webhooks.send(request.webhook_v2, body, message_id=job.id)
        except ApiError as exc:
            # After the 202 this line may be the only trace of the failure (a request without a webhook).
            logger.error(
                "async request failed",
                extra={"request_id": job.id, "status": exc.status_code, "error": exc.message},
            )
            await self._send_failure(job, request, exc)
        except Exception as exc:
            logger.exception("background delivery failed", extra={"request_id": job.id})
            await self._send_failure(job, request, ApiError(f"Internal error: {type(exc).__name__}"))
        finally:
            await self._runner.close(job)

    async def _send_legacy_outputs(self, job: Job, request: PromptRequest) -> None:
        assert request.webhook is not None
        for output in job.outputs:
            (image,) = await asyncio.to_thread(_encode_all, [output.path])
            body = payloads.output_complete(job.id, image, output.name, job.graph, job.stats)
            await self._webhooks.send(request.webhook, body, signed=False)

    async def _send_failure(self, job: Job, request: PromptRequest, error: ApiError) -> None:
        details = {key: value for key, value in error.extra.items() if key != "location"}
        if request.webhook_v2:
            body = payloads.prompt_failed(job.id, job.graph, error.message, **details)
            await self._webhooks.send(request.webhook_v2, body, message_id=job.id)
        if request.webhook:
            await self._webhooks.send(
                request.webhook, payloads.legacy_failed(job.id, job.graph, error.message), signed=False
            )

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _base64_chunks(path: Path) -> AsyncIterator[bytes]:
    """Base64 of a file, chunk by chunk; the next chunk is read and encoded (off the event loop) while the
    current one is being sent."""
    handle = await asyncio.to_thread(open, path, "rb")

    def read_encoded() -> bytes:
        return base64.b64encode(handle.read(_READ_CHUNK))

    upcoming = asyncio.ensure_future(asyncio.to_thread(read_encoded))
    try:
        while chunk := await upcoming:
            upcoming = asyncio.ensure_future(asyncio.to_thread(read_encoded))
            yield chunk
    finally:
        if not upcoming.done():
            with contextlib.suppress(Exception):
                await upcoming
        await asyncio.to_thread(handle.close)


def _encode_all(paths: list[Path]) -> list[str]:
    return [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths]
