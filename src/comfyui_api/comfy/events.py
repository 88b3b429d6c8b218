"""The one websocket to ComfyUI: reconnects with backoff, keeps alive, fans events out.

Every prompt is queued with this stream's client id, so ComfyUI sends their execution events
here. Listeners are called synchronously from the reader task and must do O(1) work, so one slow
consumer can never hold up completion of every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import connect

logger = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]

_MAX_BACKOFF_S = 1.0


class EventStream:
    def __init__(self, ws_url: str, *, ping_interval_s: float = 10.0) -> None:
        self.client_id = uuid.uuid4().hex
        self._url = f"{ws_url}?clientId={self.client_id}"
        self._ping_interval_s = ping_interval_s
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()
        self.connected = False
        self.queue_remaining = 0
        # Set on every connect and disconnect, for whoever must react to either.
        self.connection_changed = asyncio.Event()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="comfy-events")

    def reconnect_now(self) -> None:
        """Skip the current backoff delay (ComfyUI just came back)."""
        self._retry_now.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_connected(False)

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.connection_changed.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                async with connect(
                    self._url,
                    proxy=None,
                    open_timeout=5,
                    ping_interval=self._ping_interval_s,
                    ping_timeout=self._ping_interval_s,
                    max_size=256 * 1024 * 1024,
                    max_queue=None,
                    compression=None,
                ) as ws:
                    self._set_connected(True)
                    logger.info("connected to ComfyUI websocket")
                    backoff = 0.05
                    async for message in ws:
                        if isinstance(message, str):
                            self._handle(message)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                level = logging.WARNING if self.connected else logging.DEBUG
                logger.log(level, "ComfyUI websocket lost", extra={"reason": f"{type(exc).__name__}: {exc}"})
            self._set_connected(False)
            self._retry_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _handle(self, message: str) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            logger.warning("ignoring a websocket message that is not JSON", extra={"head": message[:200]})
            return
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return
        if event.get("type") == "status":
            # Any part may be null or missing (custom nodes send their own status messages): never fatal.
            status = event["data"].get("status")
            exec_info = status.get("exec_info") if isinstance(status, dict) else None
            if isinstance(exec_info, dict) and isinstance(exec_info.get("queue_remaining"), int):
                self.queue_remaining = exec_info["queue_remaining"]
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("websocket event listener failed", extra={"event_type": event.get("type")})
