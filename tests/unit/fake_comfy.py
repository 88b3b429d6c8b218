"""An in-process stand-in for ComfyClient, for the unit tests of what orchestrates ComfyUI (janitor, watchdog).

These tests exercise decisions taken on ComfyUI's answers (its queue, its history, its silence); the real
ComfyUI is driven end to end in tests/test_wedge.py and the other server tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from comfyui_api.errors import ComfyUnavailable


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

    def _call(self, name: str, argument: Any = None) -> None:
        self.calls.append((name, argument))
        self.called.set()
        if not self.answering:
            raise ComfyUnavailable("ComfyUI is not reachable: no answer")

    def named(self, name: str) -> list[Any]:
        return [argument for called, argument in self.calls if called == name]

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


def output_entry(*filenames: str) -> dict[str, Any]:
    """A finished prompt's history entry listing `filenames` as SaveImage outputs of node 9."""
    images = [{"filename": name, "subfolder": "", "type": "output"} for name in filenames]
    return {"outputs": {"9": {"images": images}}, "status": {"status_str": "success", "completed": True}}
