"""The sweeper: it sweeps at once, then on its interval, and a failed sweep is logged without ending it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import pytest

from comfyui_api.jobstore.base import JobStore, JobStoreError
from comfyui_api.jobstore.sweeper import MAX_SWEEP_INTERVAL_S, sweep_expired, sweep_interval


class Store:
    """Answers delete_expired with the next of `results` (an exception is raised), and says when it was asked."""

    def __init__(self, *results: int | Exception) -> None:
        self.results = list(results)
        self.sweeps = 0
        self.swept = asyncio.Event()

    async def delete_expired(self) -> int:
        self.sweeps += 1
        self.swept.set()
        result = self.results.pop(0) if self.results else 0
        if isinstance(result, Exception):
            raise result
        return result


def test_the_interval_is_half_the_retention_up_to_a_minute() -> None:
    assert sweep_interval(2.0) == 1.0
    assert sweep_interval(86400.0) == MAX_SWEEP_INTERVAL_S


async def test_it_sweeps_at_once_then_again_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(JobStoreError("job store: database is locked"), 3)
    with caplog.at_level(logging.WARNING, logger="comfyui_api.jobstore.sweeper"):
        sweeping = asyncio.create_task(sweep_expired(cast(JobStore, store).delete_expired, interval_s=0.01))
        try:
            async with asyncio.timeout(10):
                while store.sweeps < 3:
                    store.swept.clear()
                    await store.swept.wait()
        finally:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
    assert [(entry.getMessage(), entry.__dict__["reason"]) for entry in caplog.records] == [
        ("deleting expired job records failed", "job store: database is locked")
    ]
