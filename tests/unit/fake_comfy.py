"""An in-process stand-in for ComfyClient, for the unit tests of what orchestrates ComfyUI (janitor, watchdog, runner,
delivery, lifecycle).

These tests exercise decisions taken on ComfyUI's answers (its queue, its history, its silence, its websocket
events); the real ComfyUI is driven end to end in tests/test_wedge.py and the other server tests. The test plays
ComfyUI's executor: a queued prompt stays pending until the test ends it with `end()`, which writes its history
entry and then tells the listeners, as ComfyUI does over the websocket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfyui_api.errors import ApiError, ComfyUnavailable

Listener = Callable[[dict[str, Any]], None]


class FakeComfy:
    def __init__(self) -> None:
        self.running: set[str] = set()
        self.pending: set[str] = set()
        self.history_entries: dict[str, dict[str, Any]] = {}
        self.answering = True
        self.calls: list[tuple[str, Any]] = []
        # Holds delete_history until set, as a slow ComfyUI would.
        self.history_deletes_go = asyncio.Event()
        self.history_deletes_go.set()
        self.called = asyncio.Event()
        # What POST /prompt answers instead of accepting the prompt (a validation error, say).
        self.rejection: ApiError | None = None
        # The id a ComfyUI older than 0.25 picks for the next prompt, ignoring the one sent.
        self.chosen_id: str | None = None
        self._listeners: list[Listener] = []

    def _call(self, name: str, argument: Any = None) -> None:
        self.calls.append((name, argument))
        self.called.set()
        if not self.answering:
            raise ComfyUnavailable("ComfyUI is not reachable: no answer")

    def named(self, name: str) -> list[Any]:
        return [argument for called, argument in self.calls if called == name]

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 10.0) -> None:
        """Wait, call by call to this ComfyUI, until `predicate` holds."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.called.clear()
                await self.called.wait()

    def subscribe(self, listener: Listener) -> None:
        """Receive this ComfyUI's websocket events (as EventStream's listeners do)."""
        self._listeners.append(listener)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener({"type": event_type, "data": data})

    def end(self, prompt_id: str, entry: dict[str, Any]) -> None:
        """The prompt ends: it leaves the queue, its history entry is written, then the websocket says it is done."""
        self.running.discard(prompt_id)
        self.pending.discard(prompt_id)
        self.history_entries[prompt_id] = entry
        self.emit("executing", {"node": None, "prompt_id": prompt_id})

    def report(self, prompt_id: str, entry: dict[str, Any]) -> None:
        """The prompt runs to its success, told over the websocket as ComfyUI's executor does (a start, each output
        node's `executed`, `execution_success`); `end()` then writes its history entry."""
        self.emit("execution_start", {"prompt_id": prompt_id})
        for node, output in entry["outputs"].items():
            self.emit("executed", {"node": node, "output": output, "prompt_id": prompt_id})
        self.emit("execution_success", {"prompt_id": prompt_id})

    def exited(self) -> None:
        """The process exited: a new one starts with an empty queue and no history."""
        self.running.clear()
        self.pending.clear()
        self.history_entries.clear()

    async def probe(self) -> bool:
        """Whether ComfyUI answers (`answering`): a launch waits for this."""
        self.calls.append(("probe", None))
        self.called.set()
        return self.answering

    async def queue_prompt(
        self, prompt: dict[str, Any], *, prompt_id: str, client_id: str, extra_data: dict[str, Any] | None = None
    ) -> str:
        call = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id, "extra_data": extra_data}
        self._call("queue_prompt", call)
        if self.rejection is not None:
            raise self.rejection
        accepted = self.chosen_id or prompt_id
        self.chosen_id = None
        self.pending.add(accepted)
        return accepted

    async def queue(self, *, timeout_s: float | None = None) -> tuple[set[str], set[str]]:
        self._call("queue")
        return set(self.running), set(self.pending)

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        self._call("delete_from_queue", list(prompt_ids))
        self.pending -= set(prompt_ids)

    async def interrupt(self, prompt_id: str) -> None:
        self._call("interrupt", prompt_id)

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        self._call("history", prompt_id)
        return self.history_entries.get(prompt_id)

    async def delete_history(self, prompt_ids: list[str]) -> None:
        self.calls.append(("delete_history", list(prompt_ids)))
        self.called.set()
        await self.history_deletes_go.wait()
        self._call("delete_history:answered", list(prompt_ids))
        for prompt_id in prompt_ids:
            self.history_entries.pop(prompt_id, None)

    async def aclose(self) -> None:
        """No connection to close (the lifecycle closes its client at shutdown)."""


def output_entry(*filenames: str) -> dict[str, Any]:
    """A finished prompt's history entry listing `filenames` as SaveImage outputs of node 9."""
    images = [{"filename": name, "subfolder": "", "type": "output"} for name in filenames]
    return {"outputs": {"9": {"images": images}}, "status": {"status_str": "success", "completed": True}}


def saved(output_dir: Path, *filenames: str) -> dict[str, Any]:
    """Write `filenames` into `output_dir` as ComfyUI's SaveImage would, and return the history entry listing them."""
    for name in filenames:
        (output_dir / name).write_bytes(f"image {name}".encode())
    return output_entry(*filenames)


def failed(entry: dict[str, Any], message: str, **data: Any) -> dict[str, Any]:
    """`entry` as ComfyUI records a prompt that did not succeed: `message` ("execution_error" or
    "execution_interrupted") with its `data`, after whatever outputs the entry lists."""
    return {**entry, "status": {"status_str": "error", "completed": False, "messages": [[message, data]]}}
