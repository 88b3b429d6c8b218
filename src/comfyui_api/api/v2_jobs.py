"""Comfy API v2 jobs: submit, list, get, the workflow behind one, cancel, and its live events (SSE)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import V2Error
from ..jobstore.base import JobQuery
from ..jobstore.records import JobKind, JobRecord, JobStatus
from ..v2.jobs import JobSubmission, V2Jobs
from .event_streams import JobEventsDep, event_stream
from .job_status import iso_time, record_view
from .v2_assets import ErrorEnvelope

router = APIRouter(prefix="/api/v2", tags=["jobs"])

DEFAULT_PAGE = 20
MAX_PAGE = 100
_LABEL = re.compile(r"^metadata\[(.+)\]$")


async def _v2_jobs(request: Request) -> V2Jobs:
    return request.app.state.v2_jobs


V2JobsDep = Annotated[V2Jobs, Depends(_v2_jobs)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    # 422 on every route: a parameter that fails validation is `invalid_request` in the envelope (declaring it
    # also keeps FastAPI from documenting its own validation error shape, which no route here sends).
    return {code: {"model": ErrorEnvelope} for code in (*codes, 422)}


@router.post("/jobs", status_code=201, responses=_errors(401, 422, 429, 500))
async def submit_job(
    body: JobSubmission,
    request: Request,
    jobs: V2JobsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Validate an API-format workflow (node structure, `core/ASSET` references, then ComfyUI's own validation),
    queue it, and answer 201 once the job is durably recorded."""
    record = await jobs.submit(body, idempotency_key)
    return JSONResponse(job_body(record, _base(request)), status_code=201)


@router.get("/jobs", responses=_errors(401, 422, 500))
async def list_jobs(
    request: Request,
    jobs: V2JobsDep,
    status: Annotated[str | None, Query(description="Comma-separated statuses to keep.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> dict[str, Any]:
    """This server's v2 jobs, newest first, a page at a time (follow `next_cursor`); `metadata[<key>]=<value>`
    keeps the jobs with that label."""
    statuses = _statuses(status)
    labels = {m.group(1): value for key, value in request.query_params.items() if (m := _LABEL.match(key))}
    query = JobQuery(statuses=statuses, before=_cursor(cursor), limit=limit, kind=JobKind.V2)
    found, more = await jobs.list(query, labels)
    base = _base(request)
    page: dict[str, Any] = {"jobs": [job_body(record, base) for record in found]}
    if more and found:
        last = found[-1]
        page["next_cursor"] = base64.urlsafe_b64encode(f"{last.created_at}:{last.id}".encode()).decode()
    return page


@router.get("/jobs/{id}", responses=_errors(401, 404, 500))
async def get_job(id: str, request: Request, jobs: V2JobsDep) -> dict[str, Any]:
    """The job: status, latest progress, and every output committed so far."""
    return job_body(await _found(jobs, id), _base(request))


@router.get("/jobs/{id}/workflow", responses=_errors(401, 404, 500))
async def get_job_workflow(id: str, jobs: V2JobsDep) -> dict[str, Any]:
    """The API-format graph the job was submitted with (never its extra_data)."""
    record = await _found(jobs, id)
    return {"workflow": (record.request or {}).get("workflow", {}), "format": "api"}


@router.post("/jobs/{id}/cancel", responses=_errors(401, 404, 500))
async def cancel_job(id: str, request: Request, jobs: V2JobsDep) -> dict[str, Any]:
    """Cancel the job: a queued one leaves ComfyUI's queue, a running one is interrupted (canceling, then
    canceled); a finished one is answered as it is."""
    record = await jobs.cancel(id)
    if record is None:
        raise _not_found(id)
    return job_body(record, _base(request))


@router.get(
    "/jobs/{id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **_errors(401, 404, 429, 500)},
)
async def job_events(
    id: str,
    request: Request,
    jobs: V2JobsDep,
    hub: JobEventsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events: a snapshot on connect (status, latest progress and preview), then `status`, `progress`,
    `preview` and `output` events until the terminal status. Every event has an `id`; reconnecting with
    `Last-Event-ID` resumes after it."""
    # The hub follows every job: a /prompt request's id is no v2 job's.
    if await jobs.get(id) is None:
        raise _not_found(id)
    base = _base(request)

    def absolute(name: str, data: dict[str, Any]) -> dict[str, Any]:
        return _output(data, base) if name == "output" else data

    return await event_stream(hub, id, last_event_id, lambda: jobs.get(id), absolute)


# The job object ----------------------------------------------------------------------------------------------
def job_body(record: JobRecord, base: str) -> dict[str, Any]:
    """The contract's Job object; links and output URLs absolute against `base`."""
    link = f"{base}/api/v2/jobs/{record.id}"
    queued_ms = (record.started_at or record.completed_at or 0) - record.created_at
    execution_ms = (record.completed_at or 0) - record.started_at if record.started_at else None
    return {
        **record_view(record),
        "outputs": [_output(output, base) for output in record.outputs],
        "error": _job_error(record),
        "metrics": {
            "queue_ms": queued_ms if queued_ms > 0 and (record.started_at or record.completed_at) else None,
            "execution_ms": execution_ms if execution_ms is not None and execution_ms >= 0 else None,
        },
        "metadata": (record.request or {}).get("metadata") or {},
        "urls": {"self": link, "events": f"{link}/events", "cancel": f"{link}/cancel"},
    }


def _output(output: dict[str, Any], base: str) -> dict[str, Any]:
    url = output.get("url", "")
    expires = output.get("url_expires_at")
    return {
        **output,
        "url": f"{base}{url}" if url.startswith("/") else url,
        "url_expires_at": iso_time(expires) if isinstance(expires, int) else expires,
    }


def _job_error(record: JobRecord) -> dict[str, Any] | None:
    """The contract's JobError from the error the job ended with (`code`, `message`, the failing node)."""
    error = record.error
    if error is None or record.status is JobStatus.SUCCEEDED:
        return None
    traceback = error.get("traceback")
    return {
        "code": _error_code(record, error),
        "message": error.get("error", ""),
        "node_id": error.get("node_id"),
        "class_type": error.get("node_type"),
        "traceback": "".join(traceback) if isinstance(traceback, list) else traceback,
    }


def _error_code(record: JobRecord, error: dict[str, Any]) -> str:
    if record.status is JobStatus.CANCELED:
        return "canceled"
    if isinstance(error.get("code"), str):
        return str(error["code"])  # a queued job refused as its submission would have been (v2/jobs.py)
    if error.get("node_id") is not None:
        return "node_execution_error"
    return {
        400: "invalid_workflow",
        503: "worker_unavailable",
        504: "timeout",
    }.get(error.get("status_code") or 0, "execution_error")


# Helpers ---------------------------------------------------------------------------------------------------------
def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _not_found(job_id: str) -> V2Error:
    return V2Error("not_found", f"No job {job_id!r} (unknown, or past its retention)", status_code=404)


async def _found(jobs: V2Jobs, job_id: str) -> JobRecord:
    record = await jobs.get(job_id)
    if record is None:
        raise _not_found(job_id)
    return record


def _statuses(text: str | None) -> set[JobStatus] | None:
    if not text:
        return None
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - {status.value for status in JobStatus})
    if unknown:
        raise _invalid("invalid_request", f"Unknown status {', '.join(unknown)}", "status")
    return {JobStatus(name) for name in names}


def _cursor(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    try:
        created, _, job_id = base64.urlsafe_b64decode(text.encode()).decode().partition(":")
        return int(created), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid("invalid_cursor", "This cursor was not issued by this server", "cursor") from None


def _invalid(code: str, message: str, location: str) -> V2Error:
    return V2Error(code, message, status_code=422, details={"location": location})
