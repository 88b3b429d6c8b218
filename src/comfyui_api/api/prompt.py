"""POST /prompt: run an API-format ComfyUI graph and return its outputs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..logs import request_id_var
from ..pipeline.request import PromptRequest
from .deps import DeliveryDep, SettingsDep
from .disconnect import deliver
from .handlers import CLIENT_ERRORS
from .schemas import AsyncAccepted, ErrorResponse, PromptResponse

router = APIRouter(tags=["prompt"])

PROMPT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **CLIENT_ERRORS,
    400: {"model": ErrorResponse, "description": "Invalid request, or ComfyUI rejected the graph (`node_errors`)"},
    202: {"model": AsyncAccepted, "description": "Accepted; results follow by webhook or upload"},
    409: {"model": ErrorResponse, "description": "A request with this id is already in progress"},
    500: {"model": ErrorResponse, "description": "A node failed (`node_id`, `exception_type`, …) or was interrupted"},
    502: {"model": ErrorResponse, "description": "An upload to the storage provider failed"},
    503: {"model": ErrorResponse, "description": "ComfyUI exited or is unreachable, or the server is shutting down"},
    504: {"model": ErrorResponse, "description": "The prompt exceeded PROMPT_TIMEOUT_S"},
}


@router.post("/prompt", response_model=PromptResponse, responses=PROMPT_RESPONSES)
async def run_prompt(body: PromptRequest, delivery: DeliveryDep, settings: SettingsDep, request: Request) -> Response:
    """Run the graph and answer with its outputs (base64, or URLs with an upload block), in ComfyUI's
    execution order; or answer 202 at once when the request is async (webhooks, `async` uploads)."""
    request_id_var.set(body.id)
    return await deliver(request, delivery, body, cancel_on_disconnect=settings.cancel_on_disconnect)
