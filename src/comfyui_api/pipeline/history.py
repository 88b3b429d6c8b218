"""ComfyUI's history entries: a finished prompt's fate read from its entry, and the entries deleted once read."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..comfy.client import ComfyClient
from ..comfy.sanitize import scrub_paths
from ..errors import ApiError, ExecutionFailed, PromptInterrupted

logger = logging.getLogger(__name__)


class HistoryPruner:
    """Deletes the history entries of ended prompts, so that ComfyUI's memory stays bounded.

    One request carries every entry that ended while the previous one was in flight: under load ComfyUI
    handles a delete per batch, not per prompt, and its time goes to running prompts.
    """

    def __init__(self, client: ComfyClient) -> None:
        self._client = client
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def forget(self, prompt_id: str) -> None:
        self._pending.append(prompt_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="history-pruner")

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._client.delete_history(batch)
            except ApiError as exc:
                logger.debug("could not delete history entries", extra={"count": len(batch), "reason": exc.message})


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
