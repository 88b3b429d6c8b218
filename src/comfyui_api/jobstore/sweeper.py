"""Deletes what is past its `expires_at` on a schedule: job records (JOB_RETENTION_S after the job ended), and v2
assets with their files (v2/assets.py).

Expired records are already invisible to reads; sweeping keeps the files from growing with every request served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .base import JobStoreError

logger = logging.getLogger(__name__)

# The longest time between two sweeps: a record outlives its expiry by at most this (or half the retention, if less).
MAX_SWEEP_INTERVAL_S = 60.0


def sweep_interval(retention_s: float) -> float:
    return min(retention_s / 2, MAX_SWEEP_INTERVAL_S)


async def sweep_expired(
    delete_expired: Callable[[], Awaitable[int]], *, interval_s: float, what: str = "job records"
) -> None:
    """Sweep at once (records may have expired while the server was down), then every `interval_s`, until
    cancelled. `delete_expired()` deletes `what` has expired and says how many; a failed sweep is logged and the next
    one tries again."""
    while True:
        try:
            deleted = await delete_expired()
        except JobStoreError as exc:
            logger.warning(f"deleting expired {what} failed", extra={"reason": str(exc)})
        else:
            if deleted:
                logger.debug(f"expired {what} deleted", extra={"count": deleted})
        await asyncio.sleep(interval_s)
