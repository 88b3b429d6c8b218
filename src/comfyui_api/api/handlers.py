"""Every error becomes JSON with a status code, a message and the location at fault."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ApiError, DownloadError, InputError, InvalidInlineData, InvalidName, InvalidUrl, ServerError
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


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


# Errors in what a client sent: a 400 at their location.
_CLIENT_INPUT = (InvalidUrl, InvalidName, InvalidInlineData, InputError, DownloadError)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServerError)
    if not isinstance(exc, _CLIENT_INPUT):
        return await _unexpected(request, exc)
    body = {"error": str(exc)} if exc.location is None else {"error": str(exc), "location": exc.location}
    return JSONResponse(body, status_code=400)


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


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own errors in this server's shape: an unknown route (404), a method the route does
    not take (405), and a body FastAPI could not read (its only 400, raised from the cause: a UnicodeDecodeError for a
    body that is not UTF-8, a RecursionError for one nested deeper than the JSON parser recurses)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        return JSONResponse({"error": f"Malformed JSON body{cause}", "location": "body"}, 400, headers=exc.headers)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse({"error": f"Internal error: {type(exc).__name__}"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ServerError, _server_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
