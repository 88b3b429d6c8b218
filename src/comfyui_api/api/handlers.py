"""Every error becomes JSON with a status code, a message and the location at fault; under /api/v2, in Comfy API
v2's ErrorEnvelope (`{"error": {"code", "message", "details"}}`) with the contract's codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    ApiError,
    DownloadError,
    InputError,
    InvalidInlineData,
    InvalidName,
    InvalidUrl,
    ServerError,
    V2Error,
)
from .auth import in_v2
from .schemas import ErrorResponse

logger = logging.getLogger(__name__)

# What a route that reads a JSON body answers for a body it cannot take, from the handlers below and the body size
# limit: the `responses` of every such route.
CLIENT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "Invalid request: `location` names the field at fault; a body that fails validation lists "
        "every problem in `errors`",
    },
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_SIZE_MB"},
    415: {"model": ErrorResponse, "description": "A Content-Type other than application/json"},
    # Declaring the range also keeps FastAPI from documenting its own 422, which this server never sends.
    "4XX": {"model": ErrorResponse, "description": "Any other client error has the same shape"},
}


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


# The contract's code for a status that has one; any other error under /api/v2 is a 500 `upstream_error`.
_V2_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 422: "invalid_request"}
_V2_UPSTREAM = "The server could not complete the request; try again later"


def _v2_status(status: int) -> int:
    """The contract has no 400 on any operation: a request it cannot take is a 422 `invalid_request` (FastAPI's one
    400, a body it could not read, not UTF-8 or nested deeper than the JSON parser recurses, is one)."""
    return 422 if status == 400 else status


def v2_error(exc: Exception) -> V2Error:
    """`exc` as the v2 error it is answered with: client errors keep their message, server errors get the contract's
    generic one (the cause is logged, never sent)."""
    if isinstance(exc, V2Error):
        return exc
    if isinstance(exc, ApiError) and exc.status_code in _V2_CODES:
        return V2Error(_V2_CODES[exc.status_code], exc.message, status_code=_v2_status(exc.status_code))
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        code = _V2_CODES.get(exc.status_code, "invalid_request")
        return V2Error(code, str(exc.detail), status_code=_v2_status(exc.status_code))
    if isinstance(exc, ServerError) and isinstance(exc, _CLIENT_INPUT):
        details = {"location": exc.location} if exc.location is not None else None
        return V2Error("invalid_request", str(exc), status_code=422, details=details)
    if isinstance(exc, ApiError):
        logger.warning("v2 request failed", extra={"status": exc.status_code, "error": exc.message})
    else:
        logger.exception("unhandled error", exc_info=exc)
    return V2Error("upstream_error", _V2_UPSTREAM, status_code=500)


def _v2_response(exc: Exception) -> JSONResponse:
    error = v2_error(exc)
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if in_v2(request.url.path):
        return _v2_response(exc)
    return JSONResponse(exc.body(), status_code=exc.status_code)


# Errors in what a client sent: a 400 at their location.
_CLIENT_INPUT = (InvalidUrl, InvalidName, InvalidInlineData, InputError, DownloadError)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServerError)
    if in_v2(request.url.path):
        return _v2_response(exc)
    if not isinstance(exc, _CLIENT_INPUT):
        return await _unexpected(request, exc)
    body = {"error": str(exc)} if exc.location is None else {"error": str(exc), "location": exc.location}
    return JSONResponse(body, status_code=400)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    problems = [{"location": _location(tuple(error["loc"])), "message": error["msg"]} for error in errors]
    first = problems[0]
    message = f"{first['location']}: {first['message']}"
    if in_v2(request.url.path):
        return _v2_response(V2Error("invalid_request", message, status_code=422, details={"errors": problems}))
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
    return JSONResponse({"error": message, "location": first["location"], "errors": problems}, status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own errors in this server's shape: an unknown route (404), a method the route does
    not take (405), and a body FastAPI could not read (its only 400, raised from the cause: a UnicodeDecodeError for a
    body that is not UTF-8, a RecursionError for one nested deeper than the JSON parser recurses)."""
    assert isinstance(exc, HTTPException)
    if in_v2(request.url.path):
        return _v2_response(exc)
    if exc.status_code == 400:
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        return JSONResponse({"error": f"Malformed JSON body{cause}", "location": "body"}, 400, headers=exc.headers)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if in_v2(request.url.path):
        return _v2_response(exc)
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse({"error": f"Internal error: {type(exc).__name__}"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ServerError, _server_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
