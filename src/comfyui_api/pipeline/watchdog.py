"""One loop that watches ComfyUI: lost completion events, a dead event channel, and a wedged ComfyUI.

Each tick reads ComfyUI's queue once, whatever the number of requests in flight; the probes never call ComfyUI.
- A queued job whose prompt has left the queue is woken to read its outcome from /history: its completion
  event was lost.
- The queue moved but the websocket brought no message since the previous tick (ComfyUI broadcasts its queue
  on every change): the channel is open on our side but dead on ComfyUI's, so it is dropped and dialled again.
  Reading the queue and the history heals what it missed; ComfyUI is not restarted for it.
- ComfyUI is wedged when, for COMFY_STALL_TIMEOUT_S, work is pending but nothing runs (its prompt worker died
  or hangs between prompts), or its HTTP server does not answer (a hung or stopped process), or when a prompt
  abandoned by its request ignores its interrupt for INTERRUPT_GRACE_S (janitor.py). Then `on_wedged` is called
  with the cause. A prompt that runs without events is never a wedge: model loads, video models and
  custom nodes may be quiet for long, and PROMPT_TIMEOUT_S bounds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ..comfy.client import ComfyClient
from ..comfy.events import EventStream
from ..errors import ApiError
from .janitor import Janitor
from .jobs import JobRegistry, JobState

logger = logging.getLogger(__name__)

# The longest time between two ticks; a short stall timeout ticks faster (four ticks per timeout).
_MAX_INTERVAL_S = 5.0
# Between ticks while jobs wait for events the websocket cannot bring.
_DISCONNECTED_INTERVAL_S = 1.0


class Watchdog:
    def __init__(
        self,
        client: ComfyClient,
        events: EventStream,
        jobs: JobRegistry,
        janitor: Janitor,
        *,
        stall_timeout_s: float,
        on_wedged: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._events = events
        self._jobs = jobs
        self._janitor = janitor
        self._stall_timeout_s = stall_timeout_s
        self._on_wedged = on_wedged
        self._clock = clock
        self._interval_s = min(_MAX_INTERVAL_S, stall_timeout_s / 4)
        # A call to the queue gets this long: a slow answer is not yet a missing one.
        self._answer_timeout_s = min(10.0, stall_timeout_s / 2)
        self._unanswered_since: float | None = None
        self._stuck_since: float | None = None
        self._last_queue: tuple[frozenset[str], frozenset[str]] | None = None
        self._last_received = 0

    async def run(self, comfy_up: asyncio.Event) -> None:
        """Tick while ComfyUI is up (a launch in progress is the supervisor's); returns only by cancellation."""
        while True:
            if not comfy_up.is_set():
                self.reset()
                await comfy_up.wait()
            waiting = self._jobs.count(JobState.QUEUED) and not self._events.connected
            interval = _DISCONNECTED_INTERVAL_S if waiting else self._interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events.connection_changed.wait(), interval)
            self._events.connection_changed.clear()
            try:
                queue = await self._client.queue(timeout_s=self._answer_timeout_s)
            except ApiError as exc:
                logger.debug("ComfyUI did not answer the watchdog", extra={"reason": exc.message})
                queue = None
            if not comfy_up.is_set():
                continue  # it exited meanwhile: the supervisor restarts it
            cause = self.observe(queue)
            if cause is not None:
                self.reset()
                await self._on_wedged(cause)

    def reset(self) -> None:
        """Forget what was seen: ComfyUI is being (re)started."""
        self._unanswered_since = None
        self._stuck_since = None
        self._last_queue = None

    def observe(self, queue: tuple[set[str], set[str]] | None) -> str | None:
        """Take one tick's reading of the queue (None: no answer); the cause when ComfyUI is wedged."""
        now = self._clock()
        if queue is None:
            self._stuck_since = None
            self._last_queue = None
            if self._unanswered_since is None:
                self._unanswered_since = now
            elif now - self._unanswered_since >= self._stall_timeout_s:
                return f"ComfyUI's HTTP server has not answered for {now - self._unanswered_since:.0f}s"
            return None
        self._unanswered_since = None
        running, pending = queue
        self._wake_lost(running, pending)
        stuck = self._janitor.observe(running, pending)
        if stuck is not None:
            return stuck
        self._check_channel(running, pending)
        if pending and not running:
            if self._stuck_since is None:
                self._stuck_since = now
            elif now - self._stuck_since >= self._stall_timeout_s:
                return (
                    f"{len(pending)} prompt(s) pending but none running for {now - self._stuck_since:.0f}s: "
                    "ComfyUI's prompt worker is dead or stuck"
                )
        else:
            self._stuck_since = None
        return None

    def _wake_lost(self, running: set[str], pending: set[str]) -> None:
        for job in self._jobs.in_state(JobState.QUEUED):
            if job.prompt_id not in running and job.prompt_id not in pending:
                job.missing_from_queue = True
                job.wake.set()

    def _check_channel(self, running: set[str], pending: set[str]) -> None:
        queue = (frozenset(running), frozenset(pending))
        received = self._events.received
        moved = self._last_queue is not None and queue != self._last_queue
        if moved and self._events.connected and received == self._last_received:
            logger.warning("ComfyUI's queue moved but its websocket brought no message; reconnecting it")
            self._events.reconnect()
        self._last_queue = queue
        self._last_received = received
