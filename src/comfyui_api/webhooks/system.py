"""System webhooks: every selected ComfyUI and storage event, sent in order to `SYSTEM_WEBHOOK_URL`.

Events arrive synchronously from the websocket reader (and from storage code), so accepting one must be O(1) and
never block or fail. They go into a bounded queue that one worker drains in order, so the events of a prompt reach
the receiver in the order ComfyUI sent them (the reference fires one unordered request per event).

Overflow policy, when the queue holds `queue_size` events and another arrives (never block, never grow):
1. if a `progress`/`progress_state` event is queued, the oldest of them is dropped: progress ticks are superseded
   by later ones and are by far the most numerous;
2. else, if the new event is a progress event, the new event is dropped;
3. else (the queue holds only state events and a state event arrives) the oldest queued event is dropped: after an
   outage the receiver is better served by the latest state than by the stalest.
Drops are counted per event name in `dropped` and reported in a warning at most every `drop_log_interval_s`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from ..metrics import Metrics
from .sender import WebhookSender

logger = logging.getLogger(__name__)

PROGRESS_EVENTS = frozenset({"progress", "progress_state"})
STORAGE_EVENTS = frozenset({"file_downloaded", "file_uploaded", "file_deleted"})


class _Item:
    """One queued envelope; `dropped` marks it dead in place, which keeps dropping from the middle O(1)."""

    __slots__ = ("dropped", "envelope", "name", "progress")

    def __init__(self, name: str, envelope: dict[str, Any], progress: bool) -> None:
        self.name = name
        self.envelope = envelope
        self.progress = progress
        self.dropped = False


class SystemWebhooks:
    def __init__(
        self,
        url: str,
        events: tuple[str, ...],
        metadata: dict[str, str],
        sender: WebhookSender,
        request_id_for: Callable[[str], str | None],
        *,
        queue_size: int = 1000,
        drop_log_interval_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.metrics = metrics
        self._url = url
        self._events = frozenset(events)
        self._metadata = dict(metadata)
        self._sender = sender
        self._request_id_for = request_id_for
        self._queue_size = queue_size
        self._drop_log_interval_s = drop_log_interval_s
        # Every queued item in order, dead ones included until the worker or a compaction skips them.
        self._queue: collections.deque[_Item] = collections.deque()
        # The live progress items, in the same order: the oldest one to drop is always at the left.
        self._progress: collections.deque[_Item] = collections.deque()
        self._live = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        self._last_drop_log = float("-inf")

    @property
    def queued(self) -> int:
        """Events accepted and not yet handed to the sender."""
        return self._live

    def start(self) -> asyncio.Task[None]:
        """Start delivering; the task, for its owner to watch (stop() ends it)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="system-webhooks")
        return self._task

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (at most `timeout_s`), then stop; later events are ignored."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                logger.warning("system webhooks left undelivered at shutdown", extra={"count": self._live})
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._report_drops(force=True)

    def on_comfy_event(self, event: dict[str, Any]) -> None:
        """Queue a ComfyUI websocket event (`{"type", "data"}`) as `comfy.<type>` if that type is selected."""
        event_type = event.get("type")
        if not isinstance(event_type, str) or event_type not in self._events or event_type in STORAGE_EVENTS:
            return
        self._enqueue(f"comfy.{event_type}", self._with_request_ids(event), event_type in PROGRESS_EVENTS)

    def on_storage_event(self, name: str, data: dict[str, Any]) -> None:
        """Queue a storage event (`file_downloaded`, `file_uploaded`, `file_deleted`) as `storage.<name>`."""
        if name in STORAGE_EVENTS and name in self._events:
            self._enqueue(f"storage.{name}", data, False)

    def _with_request_ids(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy of the event with ComfyUI's prompt ids replaced by request ids where known.

        Only the dicts on the way to a `prompt_id` are copied: the event object is shared with the job registry,
        and the rest (outputs of `executed`, for instance) is passed on untouched and never modified.
        """
        data = event.get("data")
        if not isinstance(data, dict):
            return dict(event)
        new_data = self._rewrite(data)
        nodes = data.get("nodes")
        if event.get("type") == "progress_state" and isinstance(nodes, dict):
            new_data["nodes"] = {
                key: self._rewrite(node) if isinstance(node, dict) else node for key, node in nodes.items()
            }
        return {**event, "data": new_data}

    def _rewrite(self, data: dict[str, Any]) -> dict[str, Any]:
        copy = dict(data)
        prompt_id = data.get("prompt_id")
        if isinstance(prompt_id, str):
            request_id = self._request_id_for(prompt_id)
            if request_id is not None:
                copy["prompt_id"] = request_id
        return copy

    def _enqueue(self, name: str, data: dict[str, Any], progress: bool) -> None:
        if self._stopping:
            return
        item = _Item(name, {"event": name, "data": data, "metadata": self._metadata}, progress)
        if self._live >= self._queue_size:
            if self._progress:
                self._drop(self._progress.popleft())
            elif progress:
                self._count_drop(name)
                return
            else:
                self._drop(self._oldest_live())
        self._queue.append(item)
        if progress:
            self._progress.append(item)
        self._live += 1
        self._compact()
        self._wake.set()

    def _oldest_live(self) -> _Item:
        # Dead items at the left are garbage anyway; removing them keeps this amortised O(1).
        while self._queue[0].dropped:
            self._queue.popleft()
        return self._queue[0]

    def _drop(self, item: _Item) -> None:
        item.dropped = True
        self._live -= 1
        self._count_drop(item.name)

    def _compact(self) -> None:
        # Dropping progress items leaves dead entries mid-queue while the worker is stuck on a slow receiver;
        # rebuilding when they outnumber the live ones keeps memory bounded at O(1) amortised cost per event.
        if len(self._queue) > 2 * self._queue_size:
            self._queue = collections.deque(item for item in self._queue if not item.dropped)

    def _count_drop(self, name: str) -> None:
        self.dropped[name] = self.dropped.get(name, 0) + 1
        if self.metrics is not None:
            self.metrics.system_event_dropped(name)
        self._unreported[name] = self._unreported.get(name, 0) + 1
        self._report_drops()

    def _report_drops(self, *, force: bool = False) -> None:
        if not self._unreported:
            return
        now = time.monotonic()
        if force or now - self._last_drop_log >= self._drop_log_interval_s:
            logger.warning(
                "system webhook queue full: events dropped",
                extra={"dropped": dict(self._unreported), "queue_size": self._queue_size},
            )
            self._unreported.clear()
            self._last_drop_log = now

    def _next(self) -> _Item | None:
        while self._queue:
            item = self._queue.popleft()
            if item.dropped:
                continue
            if item.progress:
                # Live progress items leave in queue order, so this one heads the progress deque.
                self._progress.popleft()
            self._live -= 1
            return item
        return None

    async def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._sender.send(self._url, item.envelope)
            except Exception:  # the sender never raises; this guards the worker against a bug there
                logger.exception("system webhook worker failed to send", extra={"event": item.name})
