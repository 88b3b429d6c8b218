"""GET /prompt/{id}: where a /prompt or workflow request stands, while it runs and for JOB_RETENTION_S after; and
GET /prompt/{id}/events, its live events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ApiError, V2Error
from ..jobstore.records import JobRecord, JobStatus
from .deps import JobsDep, RecordsDep
from .event_streams import JobEventsDep, event_stream
from .schemas import ErrorResponse

router = APIRouter(tags=["prompt"])


class JobProgress(BaseModel):
    value: float = Field(description="Overall fraction done, 0 to 1: each node counts one, the running one by steps.")
    nodes_done: int
    nodes_total: int
    current_node: str | None = None
    current_node_class: str | None = None
    step: int | None = Field(None, description="The running node's sampler step, when it reports steps.")
    steps: int | None = None


class JobOutput(BaseModel):
    node_id: str
    name: str = Field(description="The file's name, relative to the output folder (its contents are not kept).")
    size_bytes: int
    url: str | None = Field(None, description="Where it was uploaded, with an upload block.")


class JobError(BaseModel):
    """The error body the request was answered with (or its webhook carried), and that answer's status code."""

    model_config = ConfigDict(extra="allow")

    error: str
    status_code: int | None = Field(None, description="Absent when the request ended without an answer of its own.")


class AttemptError(BaseModel):
    attempt: int
    error: str
    at: datetime


class JobStatusResponse(BaseModel):
    id: str
    status: JobStatus = Field(
        description="queued (preprocessing, or waiting in ComfyUI's queue) → running → succeeded, failed or "
        "canceled; canceling after an /interrupt until the request ends."
    )
    created_at: datetime
    started_at: datetime | None = Field(description="When ComfyUI started executing it.")
    completed_at: datetime | None
    expires_at: datetime = Field(description="When this record is deleted: JOB_RETENTION_S after the job ended.")
    queue_position: int | None = Field(
        description="How many of this server's prompts are ahead of it in ComfyUI's queue; null unless it waits there."
    )
    progress: JobProgress | None
    attempts: int = Field(
        description="1, plus one for each time it was queued again (ComfyUI or the server restarted)."
    )
    attempt_errors: list[AttemptError] = Field(description="Why each earlier attempt ended.")
    outputs: list[JobOutput]
    error: JobError | None


@router.get(
    "/prompt/{id}",
    response_model=JobStatusResponse,
    responses={
        404: {"model": ErrorResponse, "description": "No request with this id, or its record has expired"},
        # Declaring the range also keeps FastAPI from documenting its own 422, which this route never sends.
        "4XX": {"model": ErrorResponse, "description": "Any other client error has the same shape"},
    },
)
async def job_status(id: str, jobs: JobsDep, records: RecordsDep) -> dict[str, Any]:
    """The state of a /prompt or workflow request by its `id`: from the server's memory while it runs, from the
    job store after (also after a restart) until `expires_at`. Outputs are listed by name and size; their
    contents are delivered with the request and not kept."""
    record = jobs.record(id) or await records.get(id)
    if record is None:
        raise ApiError(f"No request with id {id!r} is known (it may have expired)", status_code=404)
    return _body(record)


@router.get(
    "/prompt/{id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        404: {"model": ErrorResponse, "description": "No request with this id, or its record has expired"},
        "4XX": {"model": ErrorResponse, "description": "Any other client error has the same shape"},
    },
)
async def job_events(
    id: str,
    jobs: JobsDep,
    records: RecordsDep,
    hub: JobEventsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The request's live events as Server-Sent Events, the stream Comfy API v2 jobs have: a snapshot on connect,
    then `status`, `progress`, `preview` and `output` events until the terminal status. Every event has an `id`;
    reconnecting with `Last-Event-ID` resumes after it."""

    async def snapshot() -> JobRecord | None:
        return jobs.record(id) or await records.get(id)

    try:
        return await event_stream(hub, id, last_event_id, snapshot)
    except V2Error as exc:  # in this route family's error shape
        message = f"No request with id {id!r} is known (it may have expired)" if exc.status_code == 404 else exc.message
        raise ApiError(message, status_code=exc.status_code) from None


def record_view(record: JobRecord) -> dict[str, Any]:
    """What every route family says of a job's record alike (times in ISO 8601, UTC)."""
    return {
        "id": record.id,
        "status": record.status.value,
        "created_at": iso_time(record.created_at),
        "started_at": iso_time(record.started_at),
        "completed_at": iso_time(record.completed_at),
        "expires_at": iso_time(record.expires_at),
        "queue_position": record.queue_position,
        "progress": record.progress,
        "attempts": record.attempts,
        "attempt_errors": [{**entry, "at": iso_time(entry["at"])} for entry in record.attempt_errors],
    }


def _body(record: JobRecord) -> dict[str, Any]:
    return {**record_view(record), "outputs": record.outputs, "error": record.error}


def iso_time(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z") if ms is not None else None
