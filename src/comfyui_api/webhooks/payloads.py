"""The prompt webhook bodies of the reference server (§7.2, §7.3), built by pure functions.

Every builder runs its input through `redact`, so request credentials can never leave in a webhook
(decisions §12) whatever the caller passes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .body import Base64File

_SECRET_KEYS = frozenset({"credentials"})


def utc_timestamp() -> str:
    """ISO-8601 UTC with milliseconds and `Z`, like JavaScript's `new Date().toISOString()`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact(body: Any) -> Any:
    """A copy of `body` without any `credentials` key, at any depth (dicts inside lists included).

    Containers are copied, leaves (strings such as base64 images) are shared, and the input is never modified.
    """
    if isinstance(body, dict):
        return {key: redact(value) for key, value in body.items() if key not in _SECRET_KEYS}
    if isinstance(body, list | tuple):
        return [redact(value) for value in body]
    return body


def prompt_complete(body: dict[str, Any]) -> dict[str, Any]:
    """`prompt.complete`: the response body (id, prompt, images, filenames, stats and the echoed request fields)."""
    # `type`/`timestamp` first and not overridable: receivers dispatch on them.
    fields = {key: value for key, value in redact(body).items() if key not in ("type", "timestamp")}
    return {"type": "prompt.complete", "timestamp": utc_timestamp(), **fields}


def prompt_failed(id: str, prompt: dict[str, Any], error: str, **details: Any) -> dict[str, Any]:
    """`prompt.failed`, with the cause (`node_id`, `node_type`, `exception_type`, `exception_message`) when known.

    Details that are None are left out rather than sent as null, matching the 500 body of /prompt.
    """
    known = {key: value for key, value in details.items() if value is not None and key not in ("type", "timestamp")}
    return redact(
        {"type": "prompt.failed", "timestamp": utc_timestamp(), "id": id, "prompt": prompt, "error": error, **known}
    )


def output_complete(
    id: str, image: str | Base64File, filename: str, prompt: dict[str, Any], stats: dict[str, Any]
) -> dict[str, Any]:
    """Legacy `webhook` success: one of these per output (sent unsigned); `image` is its base64."""
    return redact(
        {
            "event": "output.complete",
            "image": image,
            "id": id,
            "filename": filename,
            "prompt": prompt,
            "stats": stats,
        }
    )


def legacy_failed(id: str, prompt: dict[str, Any], error: str) -> dict[str, Any]:
    """Legacy `webhook` failure (only when `webhook_v2` is not set; sent unsigned)."""
    return redact({"event": "prompt.failed", "id": id, "prompt": prompt, "error": error})
