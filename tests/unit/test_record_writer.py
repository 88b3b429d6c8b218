"""The write-behind RecordWriter, over a stand-in store that records each transaction and can hold or fail one:
changes are coalesced per job, written in batches, readable before and while they are written, kept when a write
fails, bounded, and flushed at shutdown; the writer task batches what changed while it waited and finishes a
transaction it is cancelled in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from comfyui_api.jobstore.base import JobQuery, JobStoreError
from comfyui_api.jobstore.records import JobRecord, JobStatus
from comfyui_api.jobstore.sqlite import SQLiteJobStore
from comfyui_api.jobstore.writer import BATCH_SIZE, RecordWriter

NOW = 1_700_000_000_000
RETENTION_S = 60.0


class Store:
    """Stands in for a JobStore: `batches` holds the (id, status) rows of each committed transaction; `hold` keeps
    the next save waiting until released; `failures` makes that many saves fail."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, JobStatus]]] = []
        self.rows: dict[str, JobRecord] = {}
        self.saved = asyncio.Event()
        self.saving = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()
        self.failures = 0
        self.closed = False

    async def open(self) -> None:
        """Nothing to open."""

    async def save(self, records: Sequence[JobRecord]) -> None:
        rows = [(record.id, record.status) for record in records]
        self.saving.set()
        await self.hold.wait()
        if self.failures:
            self.failures -= 1
            raise JobStoreError("job store: disk I/O error")
        self.batches.append(rows)
        self.rows.update((record.id, record) for record in records)
        self.saved.set()

    async def get(self, job_id: str) -> JobRecord | None:
        return self.rows.get(job_id)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        return list(self.rows.values())[: query.limit]

    async def delete_expired(self) -> int:
        return 0

    async def close(self) -> None:
        self.closed = True


def job(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, created_at=NOW)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def writer(store: Store) -> RecordWriter:
    return RecordWriter(store, retention_s=RETENTION_S, clock=lambda: NOW + 1)


def test_retention_counts_from_the_jobs_end(writer: RecordWriter) -> None:
    record = job("a")
    writer.changed(record)
    assert record.expires_at == NOW + 60_000

    record.status, record.completed_at = JobStatus.SUCCEEDED, NOW + 5000
    writer.changed(record)
    assert record.expires_at == NOW + 5000 + 60_000


async def test_a_jobs_changes_coalesce_into_its_latest_record_in_one_transaction(
    writer: RecordWriter, store: Store
) -> None:
    a, b = job("a"), job("b")
    writer.changed(a)
    writer.changed(b)
    a.status = JobStatus.RUNNING
    writer.changed(a)
    a.status = JobStatus.SUCCEEDED
    writer.changed(a)

    await writer.flush()

    assert store.batches == [[("a", JobStatus.SUCCEEDED), ("b", JobStatus.QUEUED)]]
    await writer.flush()  # nothing pending: no transaction
    assert len(store.batches) == 1


async def test_many_changes_are_written_in_batches(writer: RecordWriter, store: Store) -> None:
    for index in range(2 * BATCH_SIZE + 3):
        writer.changed(job(f"j{index}"))

    await writer.flush()

    assert [len(batch) for batch in store.batches] == [BATCH_SIZE, BATCH_SIZE, 3]
    assert store.batches[0][0][0] == "j0"  # oldest first


async def test_a_record_is_readable_before_while_and_after_it_is_written(writer: RecordWriter, store: Store) -> None:
    record = job("a")
    writer.changed(record)
    assert await writer.get("a") is record  # pending

    store.hold.clear()
    flushing = asyncio.create_task(writer.flush())
    await store.saving.wait()
    assert await writer.get("a") is record  # in the transaction under way
    store.hold.set()
    await flushing

    assert await writer.get("a") is store.rows["a"]
    assert await writer.get("b") is None


async def test_an_expired_pending_record_is_not_read(store: Store) -> None:
    writer = RecordWriter(store, retention_s=1.0, clock=lambda: NOW + 1000)
    writer.changed(job("a"))
    assert await writer.get("a") is None


async def test_a_failed_write_keeps_its_changes_and_a_newer_change_wins(writer: RecordWriter, store: Store) -> None:
    a = job("a")
    writer.changed(a)
    writer.changed(job("b"))
    store.failures, store.hold = 1, asyncio.Event()
    flushing = asyncio.create_task(writer.flush())
    await store.saving.wait()
    a.status = JobStatus.RUNNING  # changes while its write is under way
    writer.changed(a)
    writer.changed(job("c"))
    store.hold.set()

    with pytest.raises(JobStoreError):
        await flushing
    await writer.flush()

    # The failed batch comes first again, with a's latest record, then what changed since.
    assert store.batches == [[("a", JobStatus.RUNNING), ("b", JobStatus.QUEUED), ("c", JobStatus.QUEUED)]]


async def test_the_pending_changes_are_bounded_dropping_the_oldest_jobs(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RecordWriter(store, retention_s=RETENTION_S, max_pending=3)
    with caplog.at_level(logging.WARNING, logger="comfyui_api.jobstore.writer"):
        for name in "abcde":
            writer.changed(job(name))
        writer.changed(job("e"))  # a job already pending takes no new place
        assert writer.dropped == 2
        await writer.flush()

    assert store.batches == [[("c", JobStatus.QUEUED), ("d", JobStatus.QUEUED), ("e", JobStatus.QUEUED)]]
    assert writer.dropped == 0
    messages = [entry.getMessage() for entry in caplog.records]
    assert messages == [
        "job records are not being written fast enough; dropping the oldest unwritten changes",
        "job record writes caught up",
    ]


async def test_the_writer_task_writes_what_changed_while_it_waited_in_one_transaction(store: Store) -> None:
    writer = RecordWriter(store, retention_s=RETENTION_S, flush_interval_s=0.0)
    running = asyncio.create_task(writer.run())
    try:
        # Three jobs change before the task runs again: one transaction.
        for name in "abc":
            writer.changed(job(name))
        await store.saved.wait()
        assert store.batches == [[("a", JobStatus.QUEUED), ("b", JobStatus.QUEUED), ("c", JobStatus.QUEUED)]]

        store.saved.clear()
        writer.changed(job("d"))
        await store.saved.wait()
        assert store.batches[1] == [("d", JobStatus.QUEUED)]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_writer_task_retries_a_failed_write(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    writer = RecordWriter(store, retention_s=RETENTION_S, flush_interval_s=0.0)
    store.failures = 1
    running = asyncio.create_task(writer.run())
    try:
        with caplog.at_level(logging.INFO, logger="comfyui_api.jobstore.writer"):
            writer.changed(job("a"))
            await asyncio.wait_for(store.saved.wait(), 10)  # after one backoff of about a second
        assert store.batches == [[("a", JobStatus.QUEUED)]]
        assert [entry.getMessage() for entry in caplog.records] == [
            "writing job records failed; retrying",
            "writing job records works again",
        ]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_stopping_finishes_the_transaction_under_way_and_writes_the_rest(store: Store) -> None:
    writer = RecordWriter(store, retention_s=RETENTION_S, flush_interval_s=0.0)
    running = asyncio.create_task(writer.run())
    store.hold.clear()
    writer.changed(job("a"))
    await store.saving.wait()
    writer.changed(job("b"))  # after the transaction began

    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    closing = asyncio.create_task(writer.aclose())
    store.hold.set()
    await closing

    assert store.batches == [[("a", JobStatus.QUEUED)], [("b", JobStatus.QUEUED)]]
    assert store.closed


async def test_records_written_behind_reach_the_sqlite_file(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    writer = RecordWriter(store, retention_s=RETENTION_S)
    await writer.open()
    record = JobRecord(id="a", created_at=NOW)
    record.status, record.completed_at = JobStatus.SUCCEEDED, 2 * NOW  # expires long after the test
    writer.changed(record)
    await writer.aclose()

    reopened = SQLiteJobStore(tmp_path / "jobs.db")
    await reopened.open()
    try:
        got = await reopened.get("a")
        assert got is not None and got.status is JobStatus.SUCCEEDED
    finally:
        await reopened.close()


async def test_saved_returns_once_the_record_is_committed_without_waiting_for_the_interval(store: Store) -> None:
    writer = RecordWriter(store, retention_s=RETENTION_S, clock=lambda: NOW + 1, flush_interval_s=3600)
    running = asyncio.create_task(writer.run())
    try:
        writer.changed(job("pending"))
        await asyncio.wait_for(writer.saved(job("durable")), 30)
        # One transaction, shared with what was pending.
        assert sorted(store.batches[0]) == [("durable", JobStatus.QUEUED), ("pending", JobStatus.QUEUED)]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_written_waits_for_the_commit_of_changes_made_and_writes_nothing_again(store: Store) -> None:
    writer = RecordWriter(store, retention_s=RETENTION_S, clock=lambda: NOW + 1, flush_interval_s=3600)
    running = asyncio.create_task(writer.run())
    try:
        ended = job("ended")
        ended.status = JobStatus.SUCCEEDED
        writer.changed(ended)
        # Written at once, not after the interval, and only once however many wait for it.
        await asyncio.wait_for(asyncio.gather(writer.written(ended), writer.written(ended)), 30)
        assert store.batches == [[("ended", JobStatus.SUCCEEDED)]]
        await asyncio.wait_for(writer.written(ended), 30)  # committed already: nothing owed
        assert store.batches == [[("ended", JobStatus.SUCCEEDED)]]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_saved_raises_when_its_write_fails(store: Store, writer: RecordWriter) -> None:
    store.failures = 1
    with pytest.raises(JobStoreError, match="disk I/O error"):
        await asyncio.gather(writer.saved(job("a")), writer.flush())
    await writer.flush()  # the change was kept, and is written by the next flush
    assert store.batches == [[("a", JobStatus.QUEUED)]]


async def test_what_records_refer_to_is_written_before_each_transaction(store: Store) -> None:
    # The asset store's pending output records, in the server: a job record on disk never names a missing asset.
    order: list[str] = []
    failures = [JobStoreError("asset store: disk I/O error")]

    async def before_write() -> None:
        order.append(f"before {len(store.batches)}")
        if failures:
            raise failures.pop()

    writer = RecordWriter(store, retention_s=RETENTION_S, before_write=before_write)
    writer.changed(job("a"))

    with pytest.raises(JobStoreError):
        await writer.flush()
    assert store.batches == []
    await writer.flush()

    assert order == ["before 0", "before 0"]
    assert store.batches == [[("a", JobStatus.QUEUED)]]
