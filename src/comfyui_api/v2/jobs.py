"""Comfy API v2 jobs on the one job core: a submission is validated, queued in ComfyUI and durably recorded before
its 201, then runs in the background; its outputs become assets.

The pipeline (pipeline/runner.py) runs it like any /prompt request: `core/ASSET` references are staged as inputs,
ComfyUI's validation refusals become 422 `invalid_workflow` with each node's errors, a ComfyUI crash queues it again
(JOB_MAX_ATTEMPTS), and a server restart runs it again from its record (pipeline/recovery.py). `extra_data` is sent
to ComfyUI with each attempt and never stored; a job that had it cannot be run again after a restart.

In fleet mode a submission is queued in the broker instead (fleet/door.py): its 201 means recorded in the shared store
and confirmed by the broker, and whichever worker takes it runs it (`run_queued`), its ComfyUI's validation refusal
ending it failed with `invalid_workflow`. The assets it reads and writes are the fleet's (v2/assets.py on PostgreSQL),
so any replica serves them. An integer `metadata.priority` is its priority (FLEET_PRIORITY_LEVELS).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import uuid
from collections.abc import Awaitable
from pathlib import PurePosixPath
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ApiError, BadRequest, FleetUnavailable, MissingAsset, PromptRejected, V2Error
from ..jobstore.base import JobQuery
from ..jobstore.records import JobKind, JobRecord, now_ms
from ..jobstore.writer import RecordWriter
from ..pipeline.jobs import Job, JobRegistry
from ..pipeline.outputs import OutputFile
from ..pipeline.preprocess import is_asset_reference
from ..pipeline.request import PromptRequest
from ..pipeline.runner import Canceler, PromptRunner, ends_attempt
from .assets import AssetStore

logger = logging.getLogger(__name__)

IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
# What a client waits before it retries a submission refused for a full queue.
QUEUE_FULL_RETRY_AFTER_S = 5
# What a client waits before it retries a submission refused while the fleet's broker or store is down.
FLEET_RETRY_AFTER_S = 5
PRIORITY_LABEL = "priority"
_OUTPUT_TYPES = {"image": "image", "video": "video", "audio": "audio", "text": "text"}


class ExtraData(BaseModel):
    """ComfyUI's per-prompt extra_data: a closed object, as the contract has it."""

    model_config = ConfigDict(extra="forbid")

    api_key_comfy_org: str | None = Field(None, description="API key for partner (API) nodes; never stored or logged.")


class JobSubmission(BaseModel):
    """The body of POST /api/v2/jobs."""

    model_config = ConfigDict(extra="allow")

    workflow: dict[str, Any] = Field(description="API-format workflow graph, verbatim.")
    extra_data: ExtraData | None = None
    metadata: dict[str, str] | None = Field(None, description="Labels kept with the job; GET /api/v2/jobs filters.")
    timeout_s: float | None = Field(
        None, gt=0, description="This job's deadline in seconds (queueing and execution), capped by PROMPT_TIMEOUT_S."
    )


class V2Door(Protocol):
    """The fleet's front door (fleet/door.py): records a v2 job in the shared store and queues it for any worker."""

    async def queue_v2(self, record: JobRecord, *, priority: int, secrets: dict[str, Any]) -> None: ...


class StagedAssets:
    """The asset store as the pipeline's source of `core/ASSET` inputs (pipeline/preprocess.py)."""

    def __init__(self, store: AssetStore) -> None:
        self._store = store

    async def stage_asset(self, asset_id: str, folder: Any) -> str | None:
        record = await self._store.get(asset_id)
        if record is None:
            return None
        name = f"{record.id}-{PurePosixPath(record.file_path or 'asset').name}"
        await self._store.stage(record, folder, name)
        return name


class V2Jobs:
    def __init__(
        self,
        runner: PromptRunner,
        jobs: JobRegistry,
        records: RecordWriter,
        assets: AssetStore,
        *,
        max_queue_depth: int,
        output_retention_s: float,
        door: V2Door | None = None,
        canceler: Canceler | None = None,
    ) -> None:
        """`door`: in fleet mode, where submissions are queued (else they run here)."""
        self._door = door
        self._runner = runner
        # Who interrupts a job: the runner, or in fleet mode the fleet (another replica may run the job).
        self._canceler: Canceler = canceler or runner
        self._jobs = jobs
        self._records = records
        self._assets = assets
        self._max_queue_depth = max_queue_depth
        self._output_retention_ms = round(output_retention_s * 1000)
        self._background: set[asyncio.Task[None]] = set()

    # Submission ----------------------------------------------------------------------------------------------
    async def submit(self, submission: JobSubmission, idempotency_key: str | None) -> JobRecord:
        """Validate, queue and durably record a job; its record once it is on disk."""
        _refuse_reserved(submission)
        graph = _api_graph(submission.workflow)
        priority = _priority(submission.metadata)
        if self._door is None:
            self._check_queue()
        else:
            await self._check_assets(graph)
        store = self._records.store
        if idempotency_key is not None and not await store.claim_key(idempotency_key, now_ms() + IDEMPOTENCY_TTL_MS):
            raise V2Error(
                "idempotency_key_reuse",
                "This Idempotency-Key was used already: keys are single-use; list or poll your jobs to find the job",
                status_code=422,
            )
        job_id = str(uuid.uuid4())
        replay: dict[str, Any] = {"workflow": submission.workflow}
        if submission.metadata:
            replay["metadata"] = submission.metadata
        if submission.timeout_s is not None:
            replay["timeout_s"] = submission.timeout_s
        extra = submission.extra_data.model_dump(exclude_none=True) if submission.extra_data else None
        if extra and self._door is None:
            replay["needs_memory"] = True  # in fleet mode it travels sealed with the job instead
        record = JobRecord(id=job_id, created_at=now_ms(), kind=JobKind.V2, request=replay)
        try:
            if self._door is not None:
                await self._door.queue_v2(record, priority=priority, secrets={"extra_data": extra} if extra else {})
                return record
            job = await self._start(record, graph, extra)
        except FleetUnavailable as exc:
            if idempotency_key is not None:
                await store.release_key(idempotency_key)
            raise V2Error(
                "deployment_not_ready", exc.message, status_code=429, retry_after_s=FLEET_RETRY_AFTER_S
            ) from None
        except (V2Error, BadRequest):
            # Refused without a job: the key may be used again.
            if idempotency_key is not None:
                await store.release_key(idempotency_key)
            raise
        await self._records.saved(job.record)
        self._spawn(self._complete(job))
        return job.record

    async def resume(self, record: JobRecord) -> None:
        """Run a v2 job again from its record (pipeline/recovery.py): its inputs must still be here."""
        assert record.request is not None
        job = await self._start(record, _api_graph(record.request["workflow"]), None)
        self._spawn(self._complete(job))

    async def run_queued(self, record: JobRecord, secrets: dict[str, Any]) -> None:
        """Run a job a fleet worker took from the queue, to its end: its record ended, its outputs assets of the
        fleet. A job refused before it ran ends failed, its record saying why; an error that ends the attempt
        without an outcome (ComfyUI failed under it, this worker stopping) is raised: the job goes back to the
        queue."""
        assert record.request is not None
        try:
            job = await self._start(record, _api_graph(record.request["workflow"]), secrets.get("extra_data"), True)
        except V2Error as exc:
            # The runner ended its record with the refusal; the job's error names it as a submission here would.
            record.error = {**(record.error or {}), "code": exc.code}
            self._records.changed(record)
            return
        await self._complete(job)

    async def _check_assets(self, graph: dict[str, Any]) -> None:
        """422 `missing_asset` for a `core/ASSET` input no asset answers, at submission as when it runs here: a
        queued job would only fail on its worker."""
        for node_id, node in graph.items():
            for name, value in node["inputs"].items():
                if not is_asset_reference(value):
                    continue
                info = value.get("info")
                asset_id = info.get("id") if isinstance(info, dict) else None
                location = f"prompt.{node_id}.inputs.{name}"
                if not isinstance(asset_id, str) or not asset_id or await self._assets.get(asset_id) is None:
                    raise V2Error(
                        "missing_asset",
                        f"No asset {asset_id!r} (unknown, deleted or expired)",
                        status_code=422,
                        details={"location": location},
                    )

    async def _start(
        self, record: JobRecord, graph: dict[str, Any], extra: dict[str, Any] | None, from_queue: bool = False
    ) -> Job:
        request = PromptRequest.model_validate(
            {"id": record.id, "prompt": graph, "timeout_s": (record.request or {}).get("timeout_s")}
        )
        try:
            return await self._runner.start(request, record, extra_data=extra, from_queue=from_queue)
        except MissingAsset as exc:
            raise V2Error("missing_asset", exc.message, status_code=422, details={"location": exc.location}) from None
        except PromptRejected as exc:
            details = {"node_errors": _node_errors(exc.extra.get("node_errors") or {})}
            raise V2Error("invalid_workflow", exc.message, status_code=422, details=details) from None
        except BadRequest as exc:
            details = {"location": exc.location} if exc.location else None
            raise V2Error("invalid_workflow", exc.message, status_code=422, details=details) from None

    def _check_queue(self) -> None:
        if self._max_queue_depth and len(self._jobs) >= self._max_queue_depth:
            raise V2Error(
                "queue_full",
                f"{len(self._jobs)} jobs are queued or running, the most this server takes (MAX_QUEUE_DEPTH)",
                status_code=429,
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )

    async def _complete(self, job: Job) -> None:
        try:
            await self._runner.finish(job)
            expires_at = now_ms() + self._output_retention_ms
            for output in job.outputs:
                job.record.outputs = [*job.record.outputs, await self._as_asset(job, output, expires_at)]
                job.record_changed(job.record)  # an `output` event the moment each is committed
            job.mark_succeeded(outputs=job.record.outputs)
        except ApiError as exc:
            if job.from_queue and ends_attempt(exc):
                raise
            logger.info("v2 job failed", extra={"request_id": job.id, "status": exc.status_code, "error": exc.message})
        except Exception as exc:
            logger.exception("v2 job failed", extra={"request_id": job.id})
            job.mark_ended(exc)
        finally:
            await self._runner.close(job)

    async def _as_asset(self, job: Job, output: OutputFile, expires_at: int) -> dict[str, Any]:
        content_type = mimetypes.guess_type(output.name)[0] or "application/octet-stream"
        asset = await self._assets.add_output(
            output.path, job_id=job.id, file_path=output.name, content_type=content_type, expires_at=expires_at
        )
        return {
            "node_id": output.node_id,
            "name": output.name,
            "type": _output_type(output.name, content_type),
            "content_type": content_type,
            "size_bytes": asset.size_bytes,
            "id": asset.id,
            "hash": asset.hash,
            "url": f"/api/v2/assets/{asset.id}/content",
            "url_expires_at": expires_at,
            "job_id": job.id,
        }

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Stop the jobs under way here: each stays queued in the store, for the next start to run again (in fleet
        mode the worker hands its jobs back to the broker)."""
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # Reading and canceling -----------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        record = self._jobs.record(job_id) or await self._records.get(job_id)
        return record if record is not None and record.kind is JobKind.V2 else None

    async def list(self, query: JobQuery, labels: dict[str, str]) -> tuple[list[JobRecord], bool]:
        """A page of v2 jobs, the ones in flight as they are now; and whether more may follow."""
        found = await self._records.store.list_jobs(query)
        more = len(found) == query.limit
        live = [self._jobs.record(record.id) or record for record in found]
        if labels:
            live = [record for record in live if _has_labels(record, labels)]
        return live, more

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job (idempotent): taken out of ComfyUI's queue, or interrupted; a finished one is left as is."""
        record = await self.get(job_id)
        if record is not None and not record.terminal:
            await self._canceler.interrupt(job_id)
            record = await self.get(job_id)
        return record


def _refuse_reserved(submission: JobSubmission) -> None:
    """The contract reserves these fields for later versions and has them refused today."""
    for reserved in ("webhook_url", "inputs"):
        if reserved in (submission.model_extra or {}):
            raise V2Error(
                "invalid_request",
                f"{reserved!r} is reserved for a later version of the API and not accepted yet",
                status_code=422,
                details={"location": reserved},
            )


def _priority(metadata: dict[str, str] | None) -> int:
    """The job's priority: its integer `metadata.priority` label (0 without one)."""
    text = (metadata or {}).get(PRIORITY_LABEL)
    if text is None:
        return 0
    try:
        priority = int(text)
    except ValueError:
        priority = -1
    if priority < 0:
        raise V2Error(
            "invalid_request",
            f"metadata.priority: {text!r} is not a priority, a whole number from 0 (the default) up",
            status_code=422,
            details={"location": "metadata.priority"},
        )
    return priority


def _api_graph(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow as an API-format graph, or 422: `workflow_format_ui` for the editor's export, `invalid_workflow`
    with each malformed node's errors."""
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise V2Error(
            "workflow_format_ui",
            "This is the editor's workflow format (nodes and links); export it in API format (Export (API)) instead",
            status_code=422,
        )
    node_errors: dict[str, list[dict[str, str]]] = {}
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            node_errors[node_id] = [{"field": "", "reason": "not_an_object"}]
            continue
        problems = []
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            problems.append({"field": "class_type", "reason": "missing_class_type"})
        if not isinstance(node.get("inputs", {}), dict):
            problems.append({"field": "inputs", "reason": "not_an_object"})
        if problems:
            node_errors[node_id] = problems
    if not workflow:
        raise V2Error("invalid_workflow", "The workflow has no nodes", status_code=422)
    if node_errors:
        first = next(iter(node_errors))
        raise V2Error(
            "invalid_workflow",
            f"Node {first}: {node_errors[first][0]['reason']} ({len(node_errors)} node(s) malformed)",
            status_code=422,
            details={"node_errors": node_errors},
        )
    return {node_id: {"inputs": {}, **node} for node_id, node in workflow.items()}


def _node_errors(raw: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """ComfyUI's node_errors as the contract's details: node id → [{field, reason, message}]."""
    converted: dict[str, list[dict[str, Any]]] = {}
    for node_id, entry in raw.items():
        errors = entry.get("errors") if isinstance(entry, dict) else None
        converted[str(node_id)] = [
            {
                "field": (error.get("extra_info") or {}).get("input_name", ""),
                "reason": error.get("type", "invalid"),
                "message": error.get("message", ""),
            }
            for error in errors or ()
            if isinstance(error, dict)
        ]
    return converted


def _output_type(name: str, content_type: str) -> str:
    if name.endswith(".latent"):
        return "latent"
    return _OUTPUT_TYPES.get(content_type.split("/", 1)[0], "file")


def _has_labels(record: JobRecord, labels: dict[str, str]) -> bool:
    kept = (record.request or {}).get("metadata") or {}
    return all(kept.get(key) == value for key, value in labels.items())
