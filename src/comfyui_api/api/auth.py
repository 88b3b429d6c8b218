"""Static bearer auth (API_KEYS, API_KEYS_FILE): every request but the probes and the API documents must carry
`Authorization: Bearer <key>` with one of the configured keys.

A pure ASGI middleware, so that a refused request costs one hash and never reaches a route, the body size limit
or the body: the body is not read. A refusal is a 401 in the error shape of the route family the path belongs to
(this server's `{"error", "location"}`, or Comfy API v2's ErrorEnvelope under /api/v2/), with `WWW-Authenticate`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

# Open without a key: the probes, which orchestrators call without credentials, and the API documents (and the
# Swagger UI that reads them), which describe the routes and hold no data. A browser cannot add a bearer header to
# the Swagger UI's own fetch of /docs/json, so closing the documents would close the UI too.
PROBE_PATHS = frozenset({"/health", "/ready", "/api/v2/health"})
DOCUMENT_PATHS = frozenset({"/docs", "/docs/json", "/docs/yaml", "/openapi.json"})
OPEN_PATHS = PROBE_PATHS | DOCUMENT_PATHS

V2_PREFIX = "/api/v2"
SCHEME_NAME = "bearerAuth"  # the name the Comfy API v2 contract gives the scheme

_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

MISSING = "Missing bearer token: send Authorization: Bearer <key>"
INVALID = "Invalid bearer token"


def _digest(token: bytes) -> bytes:
    # Comparing digests instead of the keys themselves keeps every comparison the same length, so neither a key's
    # length nor a shared prefix shows in the time a refusal takes.
    return hashlib.sha256(token).digest()


class BearerAuth:
    """Lets a request through when its bearer token is one of `keys`, or its path is in `open_paths`; answers 401
    otherwise (an HTTP request) or closes it with 1008, policy violation (a websocket)."""

    def __init__(self, app: ASGIApp, keys: Iterable[SecretStr], open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.open_paths = open_paths
        self.digests = tuple(dict.fromkeys(_digest(key.get_secret_value().encode("ascii")) for key in keys))
        if not self.digests:
            raise ValueError("BearerAuth needs at least one key")  # an empty list would lock every route

    def accepts(self, token: bytes) -> bool:
        """Whether `token` is one of the keys. Compared with every key, without stopping at a match, so the time
        taken does not say which key matched, or how far down the list."""
        presented = _digest(token)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _send_unauthorized(send, scope["path"], problem)

    def _problem(self, scope: Scope) -> str | None:
        """None when the request carries one of the keys; else why not (MISSING or INVALID)."""
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if not values:
            return MISSING
        if len(values) > 1:  # two headers: which one a proxy or the route would read is anyone's guess
            return INVALID
        scheme, _, token = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return MISSING
        return None if self.accepts(token.strip()) else INVALID


def in_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _error_body(path: str, message: str) -> dict[str, Any]:
    """The 401 body in the shape of the path's route family."""
    if in_v2(path):
        return {"error": {"code": "unauthorized", "message": message}}  # Comfy API v2's ErrorEnvelope
    return {"error": message, "location": "authorization"}


async def _send_unauthorized(send: Send, path: str, problem: str) -> None:
    body = json.dumps(_error_body(path, problem)).encode()
    # RFC 6750: a request without credentials gets the bare challenge; one with a wrong token, `invalid_token`.
    challenge = b"Bearer" if problem == MISSING else b'Bearer error="invalid_token"'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_bearer_auth(app: FastAPI, keys: tuple[SecretStr, ...], open_paths: frozenset[str] = OPEN_PATHS) -> None:
    """Require one of `keys` on every route but `open_paths`, and say so in the OpenAPI document."""
    app.add_middleware(BearerAuth, keys=keys, open_paths=open_paths)
    app.openapi = _documenting_bearer_auth(app.openapi, open_paths)


def _documenting_bearer_auth(
    generate: Callable[[], dict[str, Any]], open_paths: frozenset[str]
) -> Callable[[], dict[str, Any]]:
    """`generate` (FastAPI's document builder, which caches its document until routes change), with the bearer
    scheme declared, required by default, lifted from the open operations, and a 401 on every other operation."""

    def openapi() -> dict[str, Any]:
        document = generate()
        components = document.setdefault("components", {})
        components.setdefault("securitySchemes", {})[SCHEME_NAME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <key>`, one of the keys in API_KEYS or API_KEYS_FILE.",
        }
        document["security"] = [{SCHEME_NAME: []}]
        schemas = components.get("schemas", {})
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                if method not in _METHODS:  # a path item's shared `parameters`, `summary`, …
                    continue
                if path in open_paths:
                    operation["security"] = []
                    continue
                # The family's error schema, where the document has it (ErrorEnvelope comes with the v2 routes).
                schema = "ErrorEnvelope" if in_v2(path) else "ErrorResponse"
                unauthorized: dict[str, Any] = {"description": "Missing or invalid bearer token"}
                if schema in schemas:
                    unauthorized["content"] = {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                    }
                operation.setdefault("responses", {}).setdefault("401", unauthorized)
        return document

    return openapi
