"""Kubernetes probes: /health (liveness) and /ready (readiness)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .. import __version__
from ..pipeline.jobs import JobState
from .deps import ServicesDep
from .schemas import ProbeResponse

router = APIRouter(tags=["probes"])


def _probe(ok: bool, good: str, bad: str, bad_status: int) -> JSONResponse:
    return JSONResponse({"version": __version__, "status": good if ok else bad}, status_code=200 if ok else bad_status)


@router.get("/health", response_model=ProbeResponse, responses={500: {"model": ProbeResponse}})
async def health(services: ServicesDep) -> JSONResponse:
    """200 once the first warmup has finished; 500 before, while ComfyUI fails to restart, and when a critical
    part of the server died (it is then exiting)."""
    state = services.state
    return _probe(state.healthy and state.failed is None, "healthy", "not healthy", 500)


@router.get("/ready", response_model=ProbeResponse, responses={503: {"model": ProbeResponse}})
async def ready(services: ServicesDep) -> JSONResponse:
    """200 when a prompt sent now would start promptly: ComfyUI up and warm, websocket connected,
    not draining, and (with MAX_QUEUE_DEPTH) ComfyUI's queue plus prompts still preprocessing below it."""
    state, limit = services.state, services.settings.max_queue_depth
    depth = services.events.queue_remaining + services.jobs.count(JobState.PREPROCESSING)
    ok = (
        state.comfy_up.is_set()
        and state.warm
        and services.events.connected
        and not state.draining
        and state.failed is None
        and (limit == 0 or depth < limit)
    )
    return _probe(ok, "ready", "not ready", 503)
