"""ASGI middleware: the request id on every log line, the app's catalog for workflow fields, and the body size
limit."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import request_id_var
from ..metrics import Metrics
from ..workflows.catalog import Catalog, using_catalog
from .auth import in_v2

logger = logging.getLogger("comfyui_api.access")


class RequestContext:
    """Sets the request id (X-Request-Id or a fresh one) for the request's logs, logs its outcome and counts it in
    `metrics` (by its route's template: the routes are few, paths are not)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id_var.set(headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex)
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - started
            level = logging.DEBUG if scope["path"] in ("/health", "/ready") else logging.INFO
            logger.log(
                level,
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            if self._metrics is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self._metrics.request(route, scope["method"], status, seconds)


class CatalogContext:
    """Makes the app's catalog the current one while a request runs: workflow field types (shared by every app in
    the process) read it to validate a body and to build the OpenAPI document."""

    def __init__(self, app: ASGIApp, catalog: Catalog) -> None:
        self.app = app
        self.catalog = catalog

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with using_catalog(self.catalog):
            await self.app(scope, receive, send)


class BodySizeLimit:
    """413 for bodies over the limit, checked on Content-Length and again while the body streams in; 400 for a body
    that stops arriving (shorter than its Content-Length, or a client gone quiet) for `read_timeout_s`.

    `unlimited`: the `(method, path)` of routes that bound their bodies themselves as they read them (asset
    uploads); only the read timeout applies to those."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        read_timeout_s: float = 30.0,
        unlimited: Collection[tuple[str, str]] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.unlimited = frozenset(unlimited)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = math.inf if (scope["method"], scope["path"]) in self.unlimited else self.max_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._reject(send, scope["path"])
            return
        received = 0
        too_large = stalled = complete = False

        async def limited_receive() -> Message:
            nonlocal received, too_large, stalled, complete
            if complete:  # after the body, receive() waits for a disconnect as long as a response streams
                return await receive()
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    message = await receive()
            except TimeoutError:
                stalled = complete = True
                # Whatever the app makes of the truncated body, its response is replaced below.
                return {"type": "http.request", "body": b"", "more_body": False}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > max_bytes:
                    too_large = complete = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if too_large or stalled:
                if not replaced:
                    replaced = True
                    if too_large:
                        await self._reject(send, scope["path"])
                    else:
                        await self._stalled(send, scope["path"], received, declared)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, send: Send, path: str) -> None:
        message = f"Request body is larger than {self.max_bytes / (1024 * 1024):g} MB"
        await _send_error(send, path, 413, message)

    async def _stalled(self, send: Send, path: str, received: int, declared: bytes | None) -> None:
        expected = f" of {declared.decode('latin-1')}" if declared else ""
        message = (
            f"The request body stopped arriving: {received}{expected} bytes received, then nothing for "
            f"{self.read_timeout_s:g} s"
        )
        await _send_error(send, path, 400, message)


async def _send_error(send: Send, path: str, status: int, message: str) -> None:
    """The error in the shape of the path's route family: Comfy API v2's envelope under /api/v2, where a body it
    cannot take is a 422 (its contract has no 400)."""
    if in_v2(path):
        code = "payload_too_large" if status == 413 else "invalid_request"
        status = 413 if status == 413 else 422
        body = json.dumps({"error": {"code": code, "message": message, "details": {"location": "body"}}}).encode()
    else:
        body = json.dumps({"error": message, "location": "body"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
