"""POST /prompt: run an API-format ComfyUI graph and return its outputs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..logs import request_id_var
from .deps import ServicesDep
from .schemas import ErrorResponse, PromptRequest, PromptResponse

router = APIRouter(tags=["prompt"])

_ERRORS = {
    400: {"model": ErrorResponse, "description": "Invalid request, or ComfyUI rejected the graph (`node_errors`)"},
    409: {"model": ErrorResponse, "description": "A request with this id is already in progress"},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_SIZE_MB"},
    500: {"model": ErrorResponse, "description": "A node failed (`node_id`, `exception_type`, …) or was interrupted"},
    503: {"model": ErrorResponse, "description": "ComfyUI exited or is unreachable, or the server is shutting down"},
    504: {"model": ErrorResponse, "description": "The prompt exceeded PROMPT_TIMEOUT_S"},
}


@router.post("/prompt", response_model=PromptResponse, responses=_ERRORS)
async def run_prompt(body: PromptRequest, services: ServicesDep) -> JSONResponse:
    """Run the graph and answer with its outputs as base64, in ComfyUI's execution order."""
    request_id_var.set(body.id)
    return JSONResponse(await services.runner.run(body))
