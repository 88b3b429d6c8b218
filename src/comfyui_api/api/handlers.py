"""Every error becomes JSON with a status code, a message and the location at fault."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import ApiError

logger = logging.getLogger(__name__)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = errors[0].get("ctx", {}).get("error", "")
        return JSONResponse({"error": f"Malformed JSON body: {detail}".rstrip(": "), "location": "body"}, 400)
    if errors and tuple(errors[0]["loc"]) == ("body",):
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type:
            return JSONResponse(
                {"error": f"Unsupported content type {content_type!r}: send application/json", "location": "body"},
                status_code=415,
            )
        if errors[0].get("type") == "missing":
            return JSONResponse({"error": "The request body is empty: send a JSON object", "location": "body"}, 400)
    problems = [{"location": _location(tuple(error["loc"])), "message": error["msg"]} for error in errors]
    first = problems[0]
    return JSONResponse(
        {"error": f"{first['location']}: {first['message']}", "location": first["location"], "errors": problems},
        status_code=400,
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse({"error": f"Internal error: {type(exc).__name__}"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
