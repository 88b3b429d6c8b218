"""Kubernetes probes: /health (liveness) and /ready (readiness)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .. import __version__
from ..pipeline.jobs import JobState
from .deps import EventsDep, JobsDep, ServerStateDep, SettingsDep
from .schemas import ProbeResponse

router = APIRouter(tags=["probes"])


def _probe(ok: bool, good: str, bad: str, bad_status: int) -> JSONResponse:
    return JSONResponse({"version": __version__, "status": good if ok else bad}, status_code=200 if ok else bad_status)


@router.get("/health", response_model=ProbeResponse, responses={500: {"model": ProbeResponse}})
async def health(state: ServerStateDep) -> JSONResponse:
    """200 once the first warmup has finished; 500 before, while ComfyUI fails to restart, and when a critical
    part of the server died (it is then exiting)."""
    return _probe(state.healthy and state.failed is None, "healthy", "not healthy", 500)


@router.get("/ready", response_model=ProbeResponse, responses={503: {"model": ProbeResponse}})
async def ready(state: ServerStateDep, settings: SettingsDep, events: EventsDep, jobs: JobsDep) -> JSONResponse:
    """200 when a prompt sent now would start promptly: ComfyUI up and warm, websocket connected (but on an
    API-only fleet replica, which has none), not draining, in fleet mode the broker and the job store reachable,
    and (with MAX_QUEUE_DEPTH) ComfyUI's queue plus prompts still preprocessing below it."""
    limit = settings.max_queue_depth
    depth = events.queue_remaining + jobs.count(JobState.PREPROCESSING)
    comfy_ok = state.comfy_up.is_set() and state.warm and events.connected
    ok = (
        (comfy_ok or not state.needs_comfy)
        and not state.draining
        and state.failed is None
        and state.fleet_ok
        and (limit == 0 or depth < limit)
    )
    return _probe(ok, "ready", "not ready", 503)


@router.get("/api/v2/health", responses={503: {"description": "Not healthy yet, or no longer"}})
async def v2_health(state: ServerStateDep, events: EventsDep) -> JSONResponse:
    """Comfy API v2's health: 200 while this server and its ComfyUI serve (as /health), with what it knows of
    ComfyUI; 503 otherwise. Open without a key, as the other probes."""
    ok = state.healthy and state.failed is None
    body = {
        "status": "healthy" if ok else "unhealthy",
        "version": __version__,
        "comfyui": {
            "up": state.comfy_up.is_set(),
            "connected": events.connected,
            "queue_remaining": events.queue_remaining,
        },
    }
    return JSONResponse(body, status_code=200 if ok else 503)
