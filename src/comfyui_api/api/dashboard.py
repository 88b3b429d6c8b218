"""The live dashboard: its page at /ui (static files shipped in the package, no build step) and GET /ui/jobs, the
recent jobs of both front doors (/prompt and workflow requests, and Comfy API v2 jobs) as the page lists them.

The page and its files hold no data and are open without a key (create_app opens PAGE_PATHS to the bearer auth), so
that a browser can load the page and ask for the key; the page sends it as a bearer token on each of its fetches:
/ui/jobs and every other data route it reads are behind API_KEYS as the rest of the API is."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from ..errors import ApiError
from ..jobstore.base import JobQuery
from ..jobstore.records import JobKind, JobRecord, JobStatus
from ..pipeline.jobs import JobState
from .deps import JobsDep, RecordsDep
from .job_status import iso_time
from .schemas import ErrorResponse

PAGE = "/ui"
STATIC_PREFIX = "/ui/static"
UI_DIR = resources.files("comfyui_api") / "ui"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
PAGE_PATHS = frozenset({PAGE, *(f"{STATIC_PREFIX}/{name}" for name in STATIC_FILES)})

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_ASSET_URL = "/api/v2/assets/"

router = APIRouter(tags=["dashboard"])


class DashboardOutput(BaseModel):
    name: str
    node_id: str | None = None
    size_bytes: int | None = None
    content_type: str | None = Field(None, description="Known for v2 outputs.")
    url: str | None = Field(None, description="A v2 output's asset content (this server's, behind the same key).")


class DashboardError(BaseModel):
    message: str
    node_id: str | None = None
    class_type: str | None = None
    status_code: int | None = None


class DashboardJob(BaseModel):
    id: str
    kind: JobKind = Field(description="`prompt`: /prompt or a workflow endpoint; `v2`: POST /api/v2/jobs.")
    status: JobStatus
    created_at: str
    started_at: str | None
    completed_at: str | None
    queue_position: int | None
    progress: dict[str, Any] | None = Field(description="As GET /prompt/{id} and GET /api/v2/jobs/{id} show it.")
    outputs: list[DashboardOutput]
    error: DashboardError | None
    events_url: str = Field(description="The job's live events (Server-Sent Events), for its route family.")


class DashboardJobs(BaseModel):
    jobs: list[DashboardJob]


# Revalidated on each load: a server upgraded under an open tab serves the page and its files as one version.
_NO_CACHE = {"Cache-Control": "no-cache"}


@router.get(PAGE, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(str(UI_DIR / "index.html"), media_type="text/html", headers=_NO_CACHE)


@router.get(STATIC_PREFIX + "/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ApiError(f"No dashboard file {name!r}", status_code=404)
    return FileResponse(str(UI_DIR / name), media_type=media_type, headers=_NO_CACHE)


@router.get(
    "/ui/jobs",
    response_model=DashboardJobs,
    responses={"4XX": {"model": ErrorResponse, "description": "Any client error has this shape"}},
)
async def dashboard_jobs(
    jobs: JobsDep,
    records: RecordsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    status: Annotated[JobStatus | None, Query(description="Only the jobs with this status.")] = None,
) -> dict[str, Any]:
    """The newest jobs of every kind, newest first, the ones in flight as they are now (for the dashboard at /ui)."""
    query = JobQuery(statuses={status} if status is not None else None, limit=limit)
    stored = {record.id: record for record in await records.store.list_jobs(query)}
    # Jobs in flight are in memory first: their latest changes may not be written yet, nor even their first.
    for job in jobs.in_state(*JobState):
        live = jobs.record(job.id)
        if live is not None and (status is None or live.status is status):
            stored[live.id] = live
    newest = sorted(stored.values(), key=lambda record: (record.created_at, record.id), reverse=True)[:limit]
    return {"jobs": [_job(record) for record in newest]}


def _job(record: JobRecord) -> dict[str, Any]:
    events = f"/api/v2/jobs/{record.id}/events" if record.kind is JobKind.V2 else f"/prompt/{record.id}/events"
    return {
        "id": record.id,
        "kind": record.kind,
        "status": record.status,
        "created_at": iso_time(record.created_at),
        "started_at": iso_time(record.started_at),
        "completed_at": iso_time(record.completed_at),
        "queue_position": record.queue_position,
        "progress": record.progress,
        "outputs": [_output(output) for output in record.outputs],
        "error": _error(record),
        "events_url": events,
    }


def _output(output: dict[str, Any]) -> dict[str, Any]:
    url = output.get("url")
    return {
        "name": output.get("name") or output.get("id") or "",
        "node_id": output.get("node_id"),
        "size_bytes": output.get("size_bytes"),
        "content_type": output.get("content_type"),
        # Only this server's assets: a /prompt output's URL is where it was uploaded, which the page has no key for.
        "url": url if isinstance(url, str) and url.startswith(_ASSET_URL) else None,
    }


def _error(record: JobRecord) -> dict[str, Any] | None:
    error = record.error
    if error is None or record.status is JobStatus.SUCCEEDED:
        return None
    return {
        "message": str(error.get("error") or record.status.value),
        "node_id": error.get("node_id"),
        "class_type": error.get("node_type"),
        "status_code": error.get("status_code"),
    }
