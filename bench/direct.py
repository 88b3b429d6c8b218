"""ComfyUI's own API used the way a client without our server would: the reference side of the request benchmarks.

POST /prompt with a client_id (and a prompt_id of the client's own, so that no completion event can arrive before the
client knows the id), wait for `executing {node: null}` on the websocket (ComfyUI sends it right after writing the
history entry), read the entry from /history, fetch each output through /view, and base64-encode it. Everything our
server adds to a request is measured against this. It talks HTTP through the same lean client as our server
(comfyui_api.comfy.http, a quarter of httpx's CPU per call) with the same limit of calls in flight, so that neither
side pays more than the other for the client library.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from comfyui_api.comfy.http import LocalHttp

from .common import BenchError

MAX_CALLS = 32


@dataclass
class Outcome:
    """A prompt's outputs, base64-encoded, and how long ComfyUI executed it: from its `execution_start` event to its
    `execution_success`, as the client received them (our server reports the same span in stats.comfy_execution)."""

    images: list[str]
    execution_ms: float


class DirectComfy:
    def __init__(self, url: str) -> None:
        self._url = url
        self._http = LocalHttp(url, timeout_s=900.0, connect_timeout_s=60.0, max_connections=MAX_CALLS)
        self.client_id = uuid.uuid4().hex
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._started: dict[str, float] = {}
        self._executions: dict[str, float] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        # ComfyUI broadcasts its queue's length (pending + running) to every client on each change: whoever
        # queued the prompts, this shows when a burst has reached ComfyUI's queue.
        self.on_queue_length: Callable[[int], None] | None = None

    async def __aenter__(self) -> DirectComfy:
        ws_url = self._url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        self._ws = await connect(ws_url, max_size=None, max_queue=None, compression=None, proxy=None)
        self._reader = asyncio.create_task(self._read(self._ws))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        await self._http.aclose()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if not isinstance(message, str):
                    continue  # preview images
                event = json.loads(message)
                data = event.get("data") or {}
                if event.get("type") == "status" and self.on_queue_length is not None:
                    remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
                    if isinstance(remaining, int):
                        self.on_queue_length(remaining)
                elif event.get("type") == "execution_start":
                    self._started[str(data.get("prompt_id"))] = time.perf_counter()
                elif event.get("type") == "execution_success":
                    started = self._started.pop(str(data.get("prompt_id")), None)
                    if started is not None:
                        self._executions[str(data.get("prompt_id"))] = (time.perf_counter() - started) * 1000
                elif event.get("type") == "executing" and data.get("node") is None:
                    waiter = self._waiters.pop(str(data.get("prompt_id")), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
        finally:  # the websocket is gone: nobody waiting may hang
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(BenchError("ComfyUI's websocket closed"))

    async def run(self, graph: dict[str, Any]) -> Outcome:
        """Queue `graph`, wait for it, and return its outputs base64-encoded (in /history's order)."""
        prompt_id = str(uuid.uuid4())
        done = asyncio.get_running_loop().create_future()
        self._waiters[prompt_id] = done
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        response = await self._http.request("POST", "/prompt", json_body=body)
        if response.status != 200:
            self._waiters.pop(prompt_id, None)
            raise BenchError(f"ComfyUI refused the prompt: {response.status} {response.text[:500]}")
        await done
        entry = (await self._http.request("GET", f"/history/{prompt_id}")).json().get(prompt_id)
        if not entry or not entry.get("status", {}).get("completed"):
            raise BenchError(f"ComfyUI did not complete the prompt: {json.dumps(entry)[:1000]}")
        encoded = []
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                view = await self._http.request("GET", "/view", params=image)
                if view.status != 200:
                    raise BenchError(f"/view answered {view.status} for {image}")
                encoded.append(base64.b64encode(view.body).decode("ascii"))
        return Outcome(encoded, self._executions.pop(prompt_id, 0.0))

    async def forget(self) -> None:
        """Clear ComfyUI's history, so that a long run leaves it as it found it."""
        await self._http.request("POST", "/history", json_body={"clear": True})
