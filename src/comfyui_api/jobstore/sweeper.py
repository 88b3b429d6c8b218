"""Deletes job records past their `expires_at` (JOB_RETENTION_S after the job ended), on a schedule.

Expired records are already invisible to reads; sweeping keeps the file from growing with every request served.
"""

from __future__ import annotations

import asyncio
import logging

from .base import JobStore, JobStoreError

logger = logging.getLogger(__name__)

# The longest time between two sweeps: a record outlives its expiry by at most this (or half the retention, if less).
MAX_SWEEP_INTERVAL_S = 60.0


def sweep_interval(retention_s: float) -> float:
    return min(retention_s / 2, MAX_SWEEP_INTERVAL_S)


async def sweep_expired(store: JobStore, *, interval_s: float) -> None:
    """Sweep at once (records may have expired while the server was down), then every `interval_s`, until
    cancelled. A failed sweep is logged and the next one tries again."""
    while True:
        try:
            deleted = await store.delete_expired()
        except JobStoreError as exc:
            logger.warning("deleting expired job records failed", extra={"reason": str(exc)})
        else:
            if deleted:
                logger.debug("expired job records deleted", extra={"count": deleted})
        await asyncio.sleep(interval_s)
