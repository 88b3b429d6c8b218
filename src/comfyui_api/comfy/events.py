"""The one websocket to ComfyUI: reconnects with backoff, keeps alive, fans events out.

Every prompt is queued with this stream's client id, so ComfyUI sends their execution events
here. Listeners are called synchronously from the reader task and must do O(1) work, so one slow
consumer can never hold up completion of every other request. JSON messages go to `subscribe`'s
listeners as dicts, binary ones (previews, comfy/previews.py) to `subscribe_binary`'s as bytes.

The reader is `run()`, a task its owner (the lifecycle) spawns and watches. `reconnect()` drops the
connection and dials again: the watchdog calls it when ComfyUI's queue moves but no message arrives,
a channel that is open on our side but dead on ComfyUI's.
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
from websockets.asyncio.client import ClientConnection, connect

logger = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]
BinaryListener = Callable[[bytes], None]

_MAX_BACKOFF_S = 1.0


class EventStream:
    def __init__(self, ws_url: str, *, ping_interval_s: float = 10.0) -> None:
        self.client_id = uuid.uuid4().hex
        self._url = f"{ws_url}?clientId={self.client_id}"
        self._ping_interval_s = ping_interval_s
        self._listeners: list[Listener] = []
        self._binary_listeners: list[BinaryListener] = []
        self._retry_now = asyncio.Event()
        # Set by reconnect(): the reader leaves the current connection.
        self._drop = asyncio.Event()
        self.connected = False
        # Connections made since start: a message's number tells whether two messages came on one connection, with
        # nothing lost between them.
        self.connections = 0
        self.queue_remaining = 0
        # Messages read since start: the watchdog compares it across its ticks.
        self.received = 0
        # Set on every connect and disconnect, for whoever must react to either.
        self.connection_changed = asyncio.Event()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def subscribe_binary(self, listener: BinaryListener) -> None:
        self._binary_listeners.append(listener)

    def reconnect_now(self) -> None:
        """Skip the current backoff delay (ComfyUI just came back)."""
        self._retry_now.set()

    def reconnect(self) -> None:
        """Drop the current connection (if any) and dial again at once."""
        self._drop.set()
        self._retry_now.set()

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if connected:
                self.connections += 1
            self.connection_changed.set()

    async def run(self) -> None:
        """Read events until cancelled, reconnecting with backoff; returns only by cancellation."""
        backoff = 0.05
        try:
            while True:
                backoff = await self._connect_once(backoff)
                self._set_connected(False)
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        finally:
            self._set_connected(False)

    async def _connect_once(self, backoff: float) -> float:
        """One connection, read until it ends or is dropped; the backoff to wait before the next."""
        self._drop.clear()
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
                # A channel dropped on purpose may be dead at the far end: do not wait long for its close frame.
                close_timeout=1,
            ) as ws:
                self._set_connected(True)
                logger.info("connected to ComfyUI websocket")
                reader = asyncio.ensure_future(self._read(ws))
                dropped = asyncio.ensure_future(self._drop.wait())
                try:
                    await asyncio.wait({reader, dropped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    dropped.cancel()
                    if not reader.done():
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await reader
                if reader.cancelled():
                    logger.warning("dropped the ComfyUI websocket to reconnect")
                else:
                    reader.result()  # why the connection ended, when it failed
            return 0.05
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            level = logging.WARNING if self.connected else logging.DEBUG
            logger.log(level, "ComfyUI websocket lost", extra={"reason": f"{type(exc).__name__}: {exc}"})
            return backoff

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            if isinstance(message, str):
                self._handle(message)
            else:
                self._handle_binary(message)

    def _handle(self, message: str) -> None:
        self.received += 1
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

    def _handle_binary(self, message: bytes) -> None:
        self.received += 1
        for listener in self._binary_listeners:
            try:
                listener(message)
            except Exception:
                logger.exception("websocket binary listener failed", extra={"size": len(message)})
