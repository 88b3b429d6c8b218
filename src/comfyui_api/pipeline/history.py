"""ComfyUI's history entries: a finished prompt's fate, read from its entry."""

from __future__ import annotations

from typing import Any

from ..comfy.sanitize import scrub_paths
from ..errors import ApiError, ExecutionFailed, PromptInterrupted


def raise_if_failed(entry: dict[str, Any]) -> None:
    """Raise the error a history entry records; return when the prompt succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success" or status.get("completed") is True:
        return
    for kind, data in reversed(status.get("messages") or []):
        if kind == "execution_interrupted":
            raise PromptInterrupted(node_id=data.get("node_id"), node_type=data.get("node_type"))
        if kind == "execution_error":
            raise execution_error(data)
    raise ApiError("ComfyUI marked the prompt as failed without saying why")


def execution_error(data: dict[str, Any]) -> ExecutionFailed:
    node_id, node_type = data.get("node_id"), data.get("node_type")
    exception_type = str(data.get("exception_type") or "Exception")
    exception_message = scrub_paths(str(data.get("exception_message") or "")).strip()
    return ExecutionFailed(
        f"Prompt execution failed at node {node_id} ({node_type}): {exception_type}: {exception_message}",
        node_id=node_id,
        node_type=node_type,
        exception_type=exception_type,
        exception_message=exception_message,
    )


def message_time(entry: dict[str, Any], kinds: set[str]) -> int | None:
    """ComfyUI's own timestamp (ms) of the first history message of one of `kinds`."""
    for kind, data in (entry.get("status") or {}).get("messages") or []:
        if kind in kinds and isinstance(data, dict) and isinstance(data.get("timestamp"), int):
            return data["timestamp"]
    return None
