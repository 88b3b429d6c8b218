"""Write-behind for job records: a request never waits for the store.

`changed(record)` is all the request path does: O(1), no await. Changes are coalesced per job (the pending map
holds each job's latest record, so a job that moved through four states before the next write costs one row), and
one task, `run()`, writes them in batches, one transaction per batch, once changes have gathered for
`flush_interval_s` (at once when a batch is full). Reads see what is pending or being written before they ask the
store, so a record is readable the moment it changed. A failed write keeps its changes and is retried with backoff.

The pending map is bounded: while the store cannot keep up (or is failing) and `max_pending` jobs have unwritten
changes, the oldest job's changes are dropped, and the streak is logged. A job still in flight records its next
change again; only a finished job's record can be lost that way. At shutdown `aclose()` writes what is pending.

`before_write()`, when given, runs before each transaction: what job records refer to is written first (a v2 job's
output assets, v2/assets.py), so that no record on disk names something that is not.

`saved(record)` is for a caller that must know a record is on disk (a v2 submission answers 201 only then): it
writes at once instead of after the interval, sharing the transaction with whatever else is pending, so a burst of
submissions is a handful of transactions. `written(record)` waits the same way for changes made already, and writes
nothing when none is left unwritten.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .base import JobStore, JobStoreError
from .records import JobRecord, now_ms

logger = logging.getLogger(__name__)

# How long changes gather before a transaction: long enough that the requests of a burst share one, short enough
# that little is lost if the process is killed.
FLUSH_INTERVAL_S = 0.25
# Records per transaction (about 1 ms of the event loop for SQLAlchemy to bind them); a batch this large is written
# without waiting for the interval.
BATCH_SIZE = 100
# Jobs with unwritten changes at most (about 1 KiB each).
MAX_PENDING = 10_000
# Records kept after they are written, for reads (about 1 KiB each).
RECENT_RECORDS = 2_000
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0


class RecordWriter:
    def __init__(
        self,
        store: JobStore,
        *,
        retention_s: float,
        clock: Callable[[], int] = now_ms,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING,
        before_write: Callable[[], Awaitable[None]] | None = None,
        shared: bool = False,
    ) -> None:
        """`shared`: other servers write the store too (fleet mode), so a record this one wrote may have changed
        since: reads not pending here go to the store."""
        self.store = store
        self._shared = shared
        self._before_write = before_write
        self._retention_ms = round(retention_s * 1000)
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        # Job id → its latest record with unwritten changes, oldest change first.
        self._pending: dict[str, JobRecord] = {}
        # The batch in the transaction under way: still readable here until it is committed.
        self._writing: dict[str, JobRecord] = {}
        self._changes = asyncio.Event()
        self._batch_full = asyncio.Event()
        # One transaction at a time: the writer task's and the final one at shutdown.
        self._lock = asyncio.Lock()
        # Changes dropped in the current streak of a full pending map.
        self.dropped = 0
        # The records written last, by id, oldest first: a job just finished is polled most, and answering that from
        # here spares a SQLite read per poll (bench/v2.py). Each is the store's row as committed, until replaced.
        self._written: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()
        # Job id → the callers of `saved` waiting for its record to be committed.
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def set_expiry(self, record: JobRecord) -> None:
        """Set when the record expires: retention counts from the job's end, and from its creation while it runs."""
        record.expires_at = (record.completed_at or record.created_at) + self._retention_ms

    def changed(self, record: JobRecord) -> None:
        """Record that `record` changed; it is written within the flush interval (the caller never waits)."""
        self.set_expiry(record)
        pending = self._pending
        if record.id not in pending and len(pending) >= self._max_pending:
            self._drop_oldest()
        pending[record.id] = record
        self._changes.set()
        if len(pending) >= BATCH_SIZE:
            self._batch_full.set()

    async def saved(self, record: JobRecord) -> None:
        """Record that `record` changed and return once it is committed; raises JobStoreError if the write failed."""
        self.changed(record)
        await self._commit(record.id)

    async def _commit(self, job_id: str) -> None:
        """Wait for the commit of the job's pending or in-flight changes, written at once."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(waiter)
        self._batch_full.set()  # no waiting for the interval
        await waiter

    async def written(self, record: JobRecord) -> None:
        """Return once the record's changes are committed (at once when none is unwritten), without writing it again
        as `saved` would; raises JobStoreError if the write failed."""
        if record.id in self._pending or record.id in self._writing:
            await self._commit(record.id)

    async def create(self, record: JobRecord) -> bool:
        """Write a new job's record now, unless an unfinished job has its id (JobStore.create): whether it was
        written. Its expiry is set as `changed` sets it."""
        self.set_expiry(record)
        return await self.store.create(record)

    async def insert_new(self, record: JobRecord) -> None:
        """Write the record of a job whose id this server made up now (JobStore.insert_new), its expiry set."""
        self.set_expiry(record)
        await self.store.insert_new(record)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's latest record: unwritten, being written, or from the store; None if unknown or expired."""
        # Written records are kept for reads only when no other server writes the store (`_remember`).
        record = self._pending.get(job_id) or self._writing.get(job_id) or self._written.get(job_id)
        if record is None:
            return await self.store.get(job_id)
        return record if record.expires_at > self._clock() else None

    async def open(self) -> None:
        await self.store.open()

    async def run(self) -> None:
        """Write changes behind until cancelled. A transaction under way when it is cancelled still completes."""
        failures = 0
        while True:
            await self._changes.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._batch_full.wait(), self._flush_interval_s)
            self._changes.clear()
            self._batch_full.clear()
            try:
                # Shielded: cancelling this task (the server stopping) must not cut a transaction in half; aclose()
                # waits for it through the lock.
                await asyncio.shield(self.flush())
            except JobStoreError as exc:
                failures += 1
                delay = min(_RETRY_FIRST_S * 2 ** (failures - 1), _RETRY_MAX_S)
                if failures == 1:
                    logger.error("writing job records failed; retrying", extra={"reason": str(exc)})
                await asyncio.sleep(delay)  # backoff before the retry
                self._changes.set()
                continue
            if failures:
                logger.info("writing job records works again", extra={"failed_attempts": failures})
                failures = 0

    async def flush(self) -> None:
        """Write every pending change now, a transaction per batch; on failure the changes stay pending."""
        async with self._lock:
            while self._pending:
                ids = list(self._pending)[:BATCH_SIZE]
                self._writing = {job_id: self._pending.pop(job_id) for job_id in ids}
                try:
                    if self._before_write is not None:
                        await self._before_write()
                    await self.store.save(list(self._writing.values()))
                except BaseException as exc:
                    # Back in front of what changed since (a job's newer record wins), so they are retried first.
                    self._pending = self._writing | self._pending
                    self._trim()
                    self._answer(ids, exc if isinstance(exc, JobStoreError) else JobStoreError("the write was cut"))
                    raise
                finally:
                    written, self._writing = self._writing, {}
                self._remember(written)
                self._answer(ids, None)
            if self.dropped:
                logger.warning("job record writes caught up", extra={"dropped_changes": self.dropped})
                self.dropped = 0

    async def aclose(self) -> None:
        """Write what is pending (waiting for a transaction under way), then close the store."""
        try:
            await self.flush()
        except JobStoreError as exc:
            logger.error(
                "job records could not be written at shutdown",
                extra={"reason": str(exc), "lost": len(self._pending)},
            )
        await self.store.close()

    def _remember(self, written: dict[str, JobRecord]) -> None:
        if self._shared:
            return
        recent = self._written
        for job_id, record in written.items():
            recent[job_id] = record
            recent.move_to_end(job_id)
        while len(recent) > RECENT_RECORDS:
            recent.popitem(last=False)

    def _answer(self, ids: list[str], error: JobStoreError | None) -> None:
        """Tell the callers of `saved` for these jobs how their write ended."""
        for job_id in ids:
            for waiter in self._waiters.pop(job_id, ()):
                if waiter.done():  # its caller was cancelled
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def _drop_oldest(self) -> None:
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        self._answer([oldest], JobStoreError("job records are not being written fast enough"))
        self.dropped += 1
        if self.dropped == 1:
            logger.warning(
                "job records are not being written fast enough; dropping the oldest unwritten changes",
                extra={"max_pending": self._max_pending},
            )

    def _trim(self) -> None:
        while len(self._pending) > self._max_pending:
            self._drop_oldest()
