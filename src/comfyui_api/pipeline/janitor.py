"""What ended jobs leave in ComfyUI: history entries to delete, and prompts abandoned before they finished.

A job that fails, times out or loses its client while its prompt is still queued or running abandons the prompt:
it is taken out of ComfyUI's queue (interrupted if it runs), and whatever it still writes, its outputs and its
history entry, is deleted once it ends. ComfyUI may not answer at that moment (stopped, wedged, restarting), so
the work is kept here and retried on every watchdog tick, in a task of its own that no client can cancel.

A running prompt gets its interrupt when it is abandoned, but ComfyUI only acts on one between nodes or at a
sampler step: a node stuck in C code never gets there and holds the GPU for ever. A prompt still running
INTERRUPT_GRACE_S after its first interrupt is reported by `observe`, and the watchdog has ComfyUI restarted.

A job may finish on ComfyUI's execution_success message, a moment before ComfyUI writes the prompt's history entry:
that entry is deleted once ComfyUI says it is written (the prompt's closing `executing` message, or its absence from
the queue at a watchdog tick).

History entries of finished jobs are deleted in batches, HISTORY_DELETE_DELAY_S after the first of a batch ended:
the delete is no client's business, so it keeps out of the way of the moments a client waits on (a job's outputs
are served right after it ends: bench/v2.py), and under load ComfyUI handles a delete per batch, not per prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..comfy.client import ComfyClient, take_out
from ..errors import ApiError
from .outputs import collect_outputs, delete_files

logger = logging.getLogger(__name__)

HISTORY_DELETE_DELAY_S = 0.25


@dataclass
class _Abandoned:
    # Out of ComfyUI's queue (deleted if pending, interrupted if running), as far as ComfyUI answered.
    removed: bool = False
    # Seen to end: ComfyUI's end-of-prompt event, or absent from its queue at a watchdog tick.
    ended: bool = False
    # When it was first interrupted while running (the clock's time).
    interrupted_at: float | None = None


class Janitor:
    def __init__(
        self,
        client: ComfyClient,
        output_dir: Path,
        *,
        interrupt_grace_s: float = 30.0,
        max_abandoned: int = 10_000,
        history_delay_s: float = HISTORY_DELETE_DELAY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._output_dir = output_dir
        self._interrupt_grace_s = interrupt_grace_s
        self._max_abandoned = max_abandoned
        self._clock = clock
        self._history: list[str] = []
        # Prompts whose history entry is to be deleted once ComfyUI has written it → watchdog ticks that found them
        # out of ComfyUI's queue.
        self._unwritten: dict[str, int] = {}
        self._abandoned: dict[str, _Abandoned] = {}
        self._wake = asyncio.Event()
        self._history_delay_s = history_delay_s
        self._history_due: asyncio.TimerHandle | None = None

    @property
    def abandoned(self) -> int:
        """Prompts abandoned and not yet cleaned up."""
        return len(self._abandoned)

    def forget(self, prompt_id: str, *, written: bool = True) -> None:
        """Delete the history entry of a prompt whose job has ended; `written`: ComfyUI has written it already."""
        if written:
            self._history.append(prompt_id)
            if self._history_due is None:
                self._history_due = asyncio.get_running_loop().call_later(self._history_delay_s, self._history_now)
        else:
            self._unwritten[prompt_id] = 0

    def abandon(self, prompt_id: str) -> None:
        """Take a prompt whose job ended early out of ComfyUI, and delete whatever it writes."""
        if len(self._abandoned) >= self._max_abandoned:
            # Bounded: only a ComfyUI that never answers again lets them pile up, and its restart clears them.
            oldest = next(iter(self._abandoned))
            del self._abandoned[oldest]
            logger.warning("too many abandoned prompts; no longer tracking the oldest", extra={"prompt_id": oldest})
        self._abandoned[prompt_id] = _Abandoned()
        self._wake.set()

    def _history_now(self) -> None:
        self._history_due = None
        self._wake.set()

    def on_event(self, event: dict[str, Any]) -> None:
        """Websocket listener: an abandoned prompt that ends can be cleaned up now."""
        data = event["data"]
        if event.get("type") == "executing" and data.get("node") is None:
            prompt_id = str(data.get("prompt_id"))
            if self._unwritten.pop(prompt_id, None) is not None:
                self.forget(prompt_id)
            abandoned = self._abandoned.get(prompt_id)
            if abandoned is not None:
                abandoned.ended = True
                self._wake.set()

    def observe(self, running: set[str], pending: set[str]) -> str | None:
        """A watchdog tick's view of ComfyUI's queue: an abandoned prompt absent from it has ended (or never ran).
        Returns why ComfyUI must be restarted, when an abandoned prompt ignored its interrupt past the grace."""
        stuck = None
        for prompt_id in list(self._unwritten):
            # Out of the queue at two ticks: the first one's view may have been asked for before the prompt ran.
            ticks = 0 if prompt_id in running else self._unwritten[prompt_id] + 1
            if ticks < 2:
                self._unwritten[prompt_id] = ticks
            else:
                del self._unwritten[prompt_id]
                self._history.append(prompt_id)
        for prompt_id, abandoned in self._abandoned.items():
            if prompt_id in running or prompt_id in pending:
                # Still there after it was taken out: a submission in flight reached ComfyUI after the delete, or an
                # interrupt has not been seen yet. Take it out again.
                abandoned.removed = False
                held = self._clock() - abandoned.interrupted_at if abandoned.interrupted_at is not None else 0.0
                if prompt_id in running and held >= self._interrupt_grace_s:
                    stuck = f"prompt {prompt_id} ignored its interrupt for {held:.0f}s"
            else:
                abandoned.ended = True
        if self._abandoned or self._history:
            self._wake.set()
        return stuck

    def reset(self) -> None:
        """ComfyUI was restarted: its queue and its history are gone, and with them everything left to clean."""
        self._abandoned.clear()
        self._history.clear()
        self._unwritten.clear()

    async def run(self) -> None:
        """Clean up whenever there is something to do; returns only by cancellation."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._sweep()
            except ApiError as exc:
                # ComfyUI did not answer: everything stays, to be retried on the next watchdog tick.
                logger.debug("cleanup in ComfyUI deferred", extra={"reason": exc.message})

    async def _sweep(self) -> None:
        await self._remove_abandoned()
        for prompt_id in [prompt_id for prompt_id, abandoned in self._abandoned.items() if abandoned.ended]:
            await self._clean_up(prompt_id)
        if self._history:
            batch, self._history = self._history, []
            try:
                await self._client.delete_history(batch)
            except ApiError:
                self._history[:0] = batch
                raise

    async def _remove_abandoned(self) -> None:
        waiting = [prompt_id for prompt_id, abandoned in self._abandoned.items() if not abandoned.removed]
        if not waiting:
            return
        running, _ = await take_out(self._client, waiting)
        for prompt_id in waiting:
            abandoned = self._abandoned.get(prompt_id)
            if abandoned is None:
                continue
            if prompt_id in running and abandoned.interrupted_at is None:
                abandoned.interrupted_at = self._clock()
            abandoned.removed = True

    async def _clean_up(self, prompt_id: str) -> None:
        entry = await self._client.history(prompt_id)
        if entry is not None:
            files = [output.path for output in collect_outputs(entry, self._output_dir)]
            if files:
                await asyncio.to_thread(delete_files, files, stop_at=self._output_dir)
            self._history.append(prompt_id)
            logger.info("cleaned up an abandoned prompt", extra={"prompt_id": prompt_id, "deleted_files": len(files)})
        self._abandoned.pop(prompt_id, None)
