"""One shared loop that notices prompts whose completion events were lost.

While the websocket is up it only confirms, every few seconds, that ComfyUI still holds each queued
prompt; while it is down it looks every second. A prompt that has left ComfyUI's queue wakes its job,
which then reads the outcome from /history. The loop costs one GET /queue per tick, whatever the
number of requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..comfy.client import ComfyClient
from ..comfy.events import EventStream
from ..errors import ApiError
from .jobs import JobRegistry, JobState

logger = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        client: ComfyClient,
        events: EventStream,
        jobs: JobRegistry,
        *,
        connected_interval_s: float = 5.0,
        disconnected_interval_s: float = 1.0,
    ) -> None:
        self._client = client
        self._events = events
        self._jobs = jobs
        self._connected_interval_s = connected_interval_s
        self._disconnected_interval_s = disconnected_interval_s

    async def run(self) -> None:
        while True:
            interval = self._connected_interval_s if self._events.connected else self._disconnected_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events.connection_changed.wait(), interval)
            self._events.connection_changed.clear()
            await self.check()

    async def check(self) -> None:
        candidates = self._jobs.in_state(JobState.QUEUED)
        if not candidates:
            return
        try:
            running, pending = await self._client.queue()
        except ApiError as exc:
            logger.debug("reconcile skipped", extra={"reason": exc.message})
            return
        for job in candidates:
            if job.prompt_id not in running and job.prompt_id not in pending and job.state is JobState.QUEUED:
                job.missing_from_queue = True
                job.wake.set()
