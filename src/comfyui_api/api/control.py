"""POST /interrupt: stop a running request or take a queued one out of ComfyUI's queue."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .deps import CancelerDep
from .handlers import CLIENT_ERRORS
from .schemas import InterruptRequest, InterruptResponse

router = APIRouter(tags=["control"])


@router.post(
    "/interrupt",
    response_model=InterruptResponse,
    responses={
        **CLIENT_ERRORS,
        404: {"model": InterruptResponse, "description": "No request with this id is in progress"},
    },
)
async def interrupt(body: InterruptRequest, canceler: CancelerDep) -> JSONResponse:
    """The interrupted request fails with 500 `Prompt interrupted`."""
    found = await canceler.interrupt(body.id)
    return JSONResponse(
        {"id": body.id, "interrupted": "success" if found else "failed"}, status_code=200 if found else 404
    )
