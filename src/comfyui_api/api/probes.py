"""Kubernetes probes: /health (liveness) and /ready (readiness). `/health?verbose=1` adds what the server knows of
itself and ComfyUI, all read from ServerState: a probe never calls ComfyUI, however often it comes."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from .. import __version__
from ..pipeline.jobs import JobState
from ..state import ServerState
from .deps import EventsDep, JobsDep, ServerStateDep, SettingsDep
from .schemas import ErrorResponse, ProbeResponse

router = APIRouter(tags=["probes"])

# The parts of ComfyUI's /system_stats `system` object shown (its `argv` is left out: a command line may hold secrets).
_SYSTEM_FIELDS = ("comfyui_version", "python_version", "pytorch_version", "os", "ram_total", "ram_free")
_DEVICE_FIELDS = ("name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free")


def _probe(ok: bool, good: str, bad: str, bad_status: int) -> JSONResponse:
    return JSONResponse({"version": __version__, "status": good if ok else bad}, status_code=200 if ok else bad_status)


@router.get(
    "/health",
    response_model=ProbeResponse,
    responses={
        500: {"model": ProbeResponse},
        # A `verbose` that is not a boolean is a 400; declaring the range also keeps FastAPI from documenting its
        # own 422, which this route never sends.
        "4XX": {"model": ErrorResponse, "description": "A client error"},
    },
)
async def health(
    state: ServerStateDep,
    settings: SettingsDep,
    events: EventsDep,
    jobs: JobsDep,
    verbose: Annotated[
        bool,
        Query(
            description="Add `uptime_s`, `comfyui` (mode, up, restarts, version, devices and VRAM from its "
            "/system_stats, read in the background at most once a minute), `queue` and `last_error`."
        ),
    ] = False,
) -> JSONResponse:
    """200 once the first warmup has finished; 500 before, while ComfyUI fails to restart, and when a critical
    part of the server died (it is then exiting). Attached to a ComfyUI that runs elsewhere (COMFYUI_ATTACH), its
    loss never turns this 500: /ready says it."""
    response = _probe(state.healthy and state.failed is None, "healthy", "not healthy", 500)
    if not verbose:
        return response
    now = time.monotonic()
    body: dict[str, Any] = {
        "version": __version__,
        "status": "healthy" if response.status_code == 200 else "not healthy",
        "uptime_s": round(now - state.started_at),
        "comfyui": _comfy_details(state, attach=settings.comfyui_attach, now=now) if state.needs_comfy else None,
        "queue": {"comfyui": events.queue_remaining, "in_flight": len(jobs)},
        "last_error": state.last_error,
    }
    return JSONResponse(body, status_code=response.status_code)


def _comfy_details(state: ServerState, *, attach: bool, now: float) -> dict[str, Any]:
    up = state.comfy_up.is_set()
    stats = state.system_stats or {}
    system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
    devices = stats.get("devices") if isinstance(stats.get("devices"), list) else []
    return {
        "mode": "attach" if attach else "launch",
        "up": up,
        "up_for_s": round(now - state.comfy_up_since) if up and state.comfy_up_since is not None else None,
        "restarts": state.comfy_restarts,
        **{name: system.get(name) for name in _SYSTEM_FIELDS},
        "devices": [
            {name: device.get(name) for name in _DEVICE_FIELDS} for device in devices if isinstance(device, dict)
        ],
        "stats_at": state.system_stats_at,
    }


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
