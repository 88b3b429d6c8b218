"""Jobs the server stopped under: at the next start, each one the store still has queued or running is run again by
its front door, or failed with the reason it cannot be.

A job can run again when its record kept what that takes (`JobRecord.request`): an async /prompt request or a v2
job. A sync /prompt request cannot (its client's connection ended with the server), nor can one whose credentials or
extra_data were held in memory only, nor one whose attempts (JOB_MAX_ATTEMPTS) are spent. The restart counts as an
attempt, with its reason in `attempt_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from ..errors import ApiError, ServerError
from ..jobstore.base import MAX_LIST_LIMIT, JobQuery, JobStore
from ..jobstore.records import TERMINAL, JobKind, JobRecord, JobStatus, now_ms

logger = logging.getLogger(__name__)

Resume = Callable[[JobRecord], Awaitable[None]]

_UNFINISHED = frozenset(JobStatus) - TERMINAL
_RESTARTED = "The server restarted while the job was queued or running"
_NO_CLIENT = f"{_RESTARTED}; a synchronous request's outcome went to its connection, which ended with it"
_IN_MEMORY = (
    f"{_RESTARTED}; its credentials or extra_data were held in memory only, so it cannot run again: submit it again"
)


async def unfinished(store: JobStore) -> list[JobRecord]:
    """Every unexpired record the store has that did not end, oldest first."""
    found: list[JobRecord] = []
    before: tuple[int, str] | None = None
    while True:
        page = await store.list_jobs(JobQuery(statuses=_UNFINISHED, before=before, limit=MAX_LIST_LIMIT))
        found.extend(page)
        if len(page) < MAX_LIST_LIMIT:
            return found[::-1]
        before = (page[-1].created_at, page[-1].id)


async def resume_unfinished(
    store: JobStore, changed: Callable[[JobRecord], None], resumers: Mapping[JobKind, Resume], max_attempts: int
) -> None:
    """Run again, or fail, each unfinished job in the store; `changed(record)` records what became of one that
    failed here (a resumed job records its own changes)."""
    records = await unfinished(store)
    if records:
        logger.info("resuming the jobs the server stopped under", extra={"count": len(records)})
    for record in records:
        reason = _why_not(record, max_attempts)
        if reason is None:
            record.attempt_errors = [
                *record.attempt_errors,
                {"attempt": record.attempts, "error": _RESTARTED, "at": now_ms()},
            ]
            record.attempts += 1
            try:
                await resumers[record.kind](record)
                continue
            except (ApiError, ServerError) as exc:
                # Refused at its new start (an input gone, ComfyUI refusing the graph): the job has ended with it.
                reason = exc.message if isinstance(exc, ApiError) else str(exc)
                if record.terminal:
                    logger.warning("a resumed job failed", extra={"request_id": record.id, "error": reason})
                    continue
        _fail(record, reason, changed)


def _why_not(record: JobRecord, max_attempts: int) -> str | None:
    request = record.request
    if request is None:
        return _NO_CLIENT
    if request.get("needs_memory"):
        return _IN_MEMORY
    if record.attempts >= max_attempts:
        return f"{_RESTARTED}, and its {max_attempts} attempts (JOB_MAX_ATTEMPTS) are spent"
    return None


def _fail(record: JobRecord, reason: str, changed: Callable[[JobRecord], None]) -> None:
    logger.warning("a job the server stopped under cannot run again", extra={"request_id": record.id, "reason": reason})
    record.status = JobStatus.FAILED
    record.error = {"error": reason, "status_code": 503}
    record.completed_at = now_ms()
    record.queue_position = None
    changed(record)
