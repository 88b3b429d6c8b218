"""GET /metrics: the server's Prometheus metrics (metrics.py), in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..metrics import Metrics

router = APIRouter(tags=["probes"])
METRICS_PATH = "/metrics"


@router.get(
    METRICS_PATH,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this server: requests, jobs and their phases, node execution times, ComfyUI restarts,
    the download cache, transfers, webhooks and the server's state (see the README's metrics reference). Open
    without a key unless METRICS_REQUIRE_AUTH=true."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
