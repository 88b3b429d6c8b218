"""Deliver a finished job: base64 in the response (streamed from disk), uploads, and webhooks.

Delivery mode, as the reference server: a legacy `webhook` sends one `output.complete` per output (upload
blocks are then ignored); else the first upload block present (s3, hf_upload, azure_blob_upload,
http_upload) uploads every output and `images` are URLs; else `images` are base64. A request is async
(202 at once, the rest in the background) with `webhook`, `webhook_v2`, or an upload block with `async`.
Success goes to both webhooks when both are set (`output.complete` per output, then `prompt.complete`); a failure
goes to one, as the reference's `else if` sends it: the signed `prompt.failed` to `webhook_v2` when it is set, else
the legacy unsigned `prompt.failed` to `webhook`.

Every body (response or webhook) is a JsonBody (webhooks/body.py): output files are base64-encoded from disk as it
is written and the echoed prompt is escaped a slice at a time, so memory stays bounded whatever the size of the
outputs or of the prompt's strings; a small body is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ApiError, BadRequest, DownloadError, UnsafeUrl, UploadError, UploadFailed
from ..jobstore.records import JobRecord
from ..storage.auth import S3Auth
from ..storage.net import UrlGuard
from ..storage.uploads import AzureBlobUpload, Uploader, upload_url
from ..tracing import Tracing
from ..webhooks import payloads
from ..webhooks.body import Base64File, JsonBody
from ..webhooks.sender import WebhookSender
from .jobs import Job, now_ms
from .outputs import delete_files
from .request import PromptRequest
from .runner import PromptRunner, ends_attempt

logger = logging.getLogger(__name__)


class AnswerBody(Protocol):
    """A JSON body as api/answers.py sends it: JsonBody, or in fleet mode one a worker streams (fleet/relay.py)."""

    def is_small(self) -> bool: ...

    def encode(self) -> bytes: ...

    def size(self) -> int: ...

    def stream(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class Answer:
    """How a request is answered: a status code and a JSON body (the API turns it into a response)."""

    status_code: int
    body: AnswerBody
    # To await once the body has been sent, or could not be: it ends the job whose output files the body reads.
    sent: Callable[[], Awaitable[None]] | None = None


class Door(Protocol):
    """Where /prompt and workflow requests go: this server's pipeline (Delivery), or the fleet's queue."""

    async def handle(self, request: PromptRequest, *, extra: dict[str, Any] | None = None) -> Answer: ...


class Delivery:
    def __init__(
        self,
        runner: PromptRunner,
        uploader: Uploader,
        webhooks: WebhookSender,
        *,
        output_dir: Path,
        hf_endpoint: str,
        azure_base: str | None,
        guard: UrlGuard,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing
        self._guard = guard
        self._output_dir = output_dir
        self._runner = runner
        self._uploader = uploader
        self._webhooks = webhooks
        self._hf_endpoint = hf_endpoint
        self._azure_base = azure_base
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, request: PromptRequest, *, extra: dict[str, Any] | None = None) -> Answer:
        """Run a request through the pipeline: 200 with its results, or 202 at once when it is async.

        `extra` fields are added to the response (a workflow endpoint's validated `input`).
        """
        await self.check(request)
        # An async request's outcome goes to webhooks or uploads, not to its connection: a restart can run it again.
        record = JobRecord(id=request.id, created_at=now_ms(), request=request.replay()) if request.is_async else None
        return await self.answer(request, record, extra=extra)

    async def answer(
        self,
        request: PromptRequest,
        record: JobRecord | None,
        *,
        extra: dict[str, Any] | None = None,
        from_queue: bool = False,
    ) -> Answer:
        """`handle`, for a request already checked, with its job's `record` (a fleet worker's, from the store;
        `from_queue`, see PromptRunner.start)."""
        extra = extra or {}
        job = await self._runner.start(request, record, from_queue=from_queue)
        job.from_workflow = "input" in extra
        if request.is_async:
            if request.webhook:
                logger.warning("the `webhook` field is deprecated; use `webhook_v2`", extra={"request_id": job.id})
            self._spawn(self.complete(job, request))
            accepted = {**request.echo(), "status": "ok", "id": job.id, "prompt": job.graph, **extra}
            return Answer(202, JsonBody(accepted))
        try:
            await self._runner.finish(job, request.convert_output)
            urls = await self._upload(job, request) if request.upload_block is not None else None
        except BaseException as exc:
            job.mark_ended(exc)
            await self._runner.close(job)
            raise
        job.mark_succeeded(urls or ())
        images = urls if urls is not None else _files(job)
        body = JsonBody({**self._body(job, request, images), **extra})
        return Answer(200, body, sent=functools.partial(self._runner.close, job))

    async def resume(self, record: JobRecord) -> None:
        """Run an async request again from its stored record (the server restarted under it), in the background."""
        assert record.request is not None
        request = PromptRequest.model_validate({k: v for k, v in record.request.items() if k != "needs_memory"})
        job = await self._runner.start(request, record)
        self._spawn(self.complete(job, request))

    async def check(self, request: PromptRequest) -> None:
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
        """Let background deliveries finish (bounded), so an async request is not lost at shutdown; the ones still
        running after `timeout_s` are cancelled (each webhook cut short logs it, and their files are deleted)."""
        if not self._background:
            return
        _, pending = await asyncio.wait(self._background, timeout=timeout_s)
        if pending:
            logger.warning("abandoning background deliveries at shutdown", extra={"count": len(pending)})
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

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
        job.windows["upload"] = (started, started + job.stats["upload_time"])
        return urls

    def _body(self, job: Job, request: PromptRequest, images: Sequence[str | Base64File]) -> dict[str, Any]:
        stats = {**job.stats, "upload_time": job.stats.get("upload_time", 0), "total_time": now_ms() - job.received_at}
        return {
            **request.echo(),
            "id": job.id,
            "prompt": job.graph,
            "images": images,
            "filenames": [output.name for output in job.outputs],
            "stats": stats,
        }

    async def run_queued(self, request: PromptRequest, record: JobRecord) -> None:
        """Run an async request a fleet worker took from the queue, to its end: outputs uploaded or sent, webhooks
        sent, its record ended. An error the runner hands back (ComfyUI failed under it) ends the attempt without an
        outcome, its record queued again, and is raised: the job goes back to the queue."""
        try:
            job = await self._runner.start(request, record, from_queue=True)
        except Exception as exc:
            if ends_attempt(exc):
                raise
            # Refused before it ran (an input that does not download, ComfyUI refusing the graph): its record says
            # why, and its webhooks are told as after any 202.
            error = exc if isinstance(exc, ApiError) else ApiError(str((record.error or {}).get("error", exc)))
            await self._notify_failure(record.id, request.graph(), request, error)
            return
        await self.complete(job, request)

    async def complete(self, job: Job, request: PromptRequest) -> None:
        """Finish an async request's job and deliver its outcome (the 202 went before)."""
        # Output files that webhooks carry, kept past the job's end until they are sent.
        kept: list[Path] = []
        try:
            await self._runner.finish(job, request.convert_output)
            urls = await self._upload(job, request) if request.upload_block is not None else None
            # The job's outcome is known: its webhooks deliver it, however long they take.
            job.mark_succeeded(urls or ())
            images = urls if urls is not None else _files(job)
            # Webhooks come last and may retry for minutes: the job ends before them (its id is free again, a drain
            # does not wait for them, its inputs and ComfyUI's history entry go), only its output files stay.
            kept, job.files_to_delete = job.files_to_delete, []
            await self._runner.close(job)
            if request.webhook:
                with self._traced(job, "output.complete"):
                    await self._send_legacy_outputs(job, request)
            if request.webhook_v2:
                body = payloads.prompt_complete(self._body(job, request, images))
                with self._traced(job, "prompt.complete"):
                    await self._webhooks.send(request.webhook_v2, body, message_id=job.id)
        except ApiError as exc:
            if job.from_queue and ends_attempt(exc):
                raise
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
            if kept:
                await asyncio.to_thread(delete_files, kept, stop_at=self._output_dir)

    async def _send_legacy_outputs(self, job: Job, request: PromptRequest) -> None:
        assert request.webhook is not None
        for output in job.outputs:
            body = payloads.output_complete(job.id, Base64File(output.path), output.name, job.graph, job.stats)
            await self._webhooks.send(request.webhook, body, signed=False)

    async def _send_failure(self, job: Job, request: PromptRequest, error: ApiError) -> None:
        # The job ends first: the failure webhooks carry no files, and their retries must not hold it open.
        job.mark_ended(error)
        await self._runner.close(job)
        with self._traced(job, "prompt.failed"):
            await self._notify_failure(job.id, job.graph, request, error)

    def _traced(self, job: Job, kind: str) -> contextlib.AbstractContextManager[None]:
        """A `webhook` span of the job's trace (tracing.py), when tracing is on."""
        return self._tracing.webhook(job, kind) if self._tracing is not None else contextlib.nullcontext()

    async def _notify_failure(
        self, job_id: str, graph: dict[str, Any], request: PromptRequest, error: ApiError
    ) -> None:
        details = {key: value for key, value in error.extra.items() if key != "location"}
        if request.webhook_v2:
            body = payloads.prompt_failed(job_id, graph, error.message, **details)
            await self._webhooks.send(request.webhook_v2, body, message_id=job_id)
        elif request.webhook:
            await self._webhooks.send(
                request.webhook, payloads.legacy_failed(job_id, graph, error.message), signed=False
            )

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _files(job: Job) -> list[Base64File]:
    """The job's outputs as base64 strings of a body, read from disk when it is written."""
    return [Base64File(output.path) for output in job.outputs]
