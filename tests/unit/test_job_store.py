"""The SQLite job store on a real file: records saved whole and read back, replaced by id, listed by status, time and
page, invisible once expired and deleted by delete_expired; a reopened file keeps them; a file of another schema,
a folder it cannot open and a broken table are errors that name the cause."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfyui_api.errors import ConfigError
from comfyui_api.jobstore.base import MAX_LIST_LIMIT, JobQuery, JobStoreError
from comfyui_api.jobstore.records import JobKind, JobRecord, JobStatus
from comfyui_api.jobstore.sqlite import SCHEMA_VERSION, SQLiteJobStore

HOUR_MS = 3_600_000


class Clock:
    """Milliseconds since the epoch, moved by the test."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def record(job_id: str, created_at: int, status: JobStatus = JobStatus.QUEUED, **fields: object) -> JobRecord:
    built = JobRecord(id=job_id, created_at=created_at, status=status, expires_at=created_at + HOUR_MS)
    for name, value in fields.items():
        setattr(built, name, value)
    return built


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteJobStore]:
    opened = SQLiteJobStore(tmp_path / "jobs.db", clock=clock)
    await opened.open()
    yield opened
    await opened.close()


def finished(job_id: str, clock: Clock) -> JobRecord:
    """A succeeded record with every field set."""
    return record(
        job_id,
        clock.now - 5000,
        JobStatus.SUCCEEDED,
        started_at=clock.now - 4000,
        completed_at=clock.now - 1000,
        queue_position=None,
        progress={"value": 1.0, "nodes_done": 2, "nodes_total": 2, "current_node": None, "step": None},
        outputs=[{"node_id": "9", "name": "a_00001_.png", "size_bytes": 1234, "url": "s3://b/a_00001_.png"}],
        attempts=2,
        delivery={"id": job_id, "webhook_v2": "https://example.com/hook", "convert_output": {"format": "webp"}},
    )


async def test_a_record_is_read_back_as_it_was_saved(store: SQLiteJobStore, clock: Clock) -> None:
    saved = finished("a", clock)
    await store.save([saved])

    got = await store.get("a")

    assert got is not None and got is not saved
    assert vars(got) == vars(saved)
    assert await store.get("unknown") is None


async def test_saving_a_record_again_replaces_it_and_one_save_writes_many(store: SQLiteJobStore, clock: Clock) -> None:
    first = record("a", clock.now)
    await store.save([first])
    first.status = JobStatus.FAILED
    first.error = {"error": "Prompt outputs failed validation", "location": "prompt", "status_code": 400}
    await store.save([first, record("b", clock.now), record("c", clock.now)])

    got = await store.get("a")
    assert got is not None
    assert got.status is JobStatus.FAILED and got.error == first.error
    assert {job.id for job in await store.list_jobs(JobQuery())} == {"a", "b", "c"}


async def test_null_fields_stay_null(store: SQLiteJobStore, clock: Clock) -> None:
    await store.save([record("a", clock.now)])

    got = await store.get("a")

    assert got is not None
    assert (got.progress, got.error, got.started_at, got.queue_position) == (None, None, None, None)
    assert got.outputs == [] and got.delivery == {}


async def test_listing_is_newest_first_filtered_by_status_and_time_and_paged(
    store: SQLiteJobStore, clock: Clock
) -> None:
    base = clock.now
    await store.save(
        [
            record("old", base - 3000, JobStatus.SUCCEEDED),
            record("mid-a", base - 2000, JobStatus.FAILED),
            record("mid-b", base - 2000, JobStatus.RUNNING),
            record("new", base - 1000, JobStatus.QUEUED),
        ]
    )

    def ids(records: list[JobRecord]) -> list[str]:
        return [job.id for job in records]

    assert ids(await store.list_jobs(JobQuery())) == ["new", "mid-b", "mid-a", "old"]
    running = await store.list_jobs(JobQuery(statuses={JobStatus.QUEUED, JobStatus.RUNNING}))
    assert ids(running) == ["new", "mid-b"]
    assert ids(await store.list_jobs(JobQuery(created_after=base - 2000, created_before=base - 1000))) == [
        "mid-b",
        "mid-a",
    ]
    # Pages of two: the second starts after the last of the first, even within one millisecond.
    page = await store.list_jobs(JobQuery(limit=2))
    assert ids(page) == ["new", "mid-b"]
    after = (page[-1].created_at, page[-1].id)
    assert ids(await store.list_jobs(JobQuery(limit=2, before=after))) == ["mid-a", "old"]


@pytest.mark.parametrize("limit", [0, MAX_LIST_LIMIT + 1])
def test_a_list_limit_out_of_bounds_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        JobQuery(limit=limit)


async def test_expired_records_are_invisible_then_deleted(store: SQLiteJobStore, clock: Clock) -> None:
    await store.save([record("soon", clock.now), record("later", clock.now + HOUR_MS)])
    assert await store.delete_expired() == 0

    clock.now += HOUR_MS  # "soon" expires now
    assert await store.get("soon") is None
    assert [job.id for job in await store.list_jobs(JobQuery())] == ["later"]
    assert await store.delete_expired() == 1
    assert await store.delete_expired() == 0

    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT id FROM jobs").fetchall() == [("later",)]


async def test_records_outlive_the_store_that_wrote_them(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state" / "jobs.db"
    path.parent.mkdir()
    first = SQLiteJobStore(path, clock=clock)
    await first.open()
    saved = finished("kept", clock)
    await first.save([saved])
    await first.close()

    again = SQLiteJobStore(path, clock=clock)
    await again.open()
    try:
        got = await again.get("kept")
        assert got is not None and vars(got) == vars(saved)
    finally:
        await again.close()


async def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(ConfigError, match=rf"STATE_DIR: .* schema version {SCHEMA_VERSION + 1}"):
        await SQLiteJobStore(path).open()


async def test_a_file_that_cannot_be_opened_names_state_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"STATE_DIR: cannot open the job store .*unable to open database file"):
        await SQLiteJobStore(tmp_path / "missing-folder" / "jobs.db").open()


async def test_a_failing_database_is_a_job_store_error(store: SQLiteJobStore, clock: Clock) -> None:
    with sqlite3.connect(store.path) as db:
        db.execute("DROP TABLE jobs")

    with pytest.raises(JobStoreError, match="no such table: jobs"):
        await store.save([record("a", clock.now)])
    with pytest.raises(JobStoreError):
        await store.get("a")


async def test_a_file_of_schema_1_is_brought_up_to_date_and_keeps_its_records(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:  # the schema as version 1 wrote it
        db.execute(
            "CREATE TABLE jobs (id VARCHAR PRIMARY KEY, status VARCHAR NOT NULL, created_at BIGINT NOT NULL, "
            "started_at BIGINT, completed_at BIGINT, expires_at BIGINT NOT NULL, queue_position INTEGER, "
            "attempts INTEGER NOT NULL, progress JSON, outputs JSON NOT NULL, error JSON, delivery JSON NOT NULL)"
        )
        db.execute(
            "INSERT INTO jobs VALUES ('old', 'succeeded', ?, NULL, NULL, ?, NULL, 1, NULL, '[]', NULL, '{}')",
            (clock.now, clock.now + HOUR_MS),
        )
        db.execute("PRAGMA user_version = 1")
    store = SQLiteJobStore(path, clock=clock)
    await store.open()
    try:
        old = await store.get("old")
        assert old is not None and old.kind is JobKind.PROMPT and old.request is None and old.attempt_errors == []
        await store.save([record("new", clock.now, kind=JobKind.V2, request={"workflow": {}}, attempt_errors=[{}])])
        new = await store.get("new")
        assert new is not None and new.kind is JobKind.V2 and new.request == {"workflow": {}}
        assert [job.id for job in await store.list_jobs(JobQuery(kind=JobKind.V2))] == ["new"]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_an_idempotency_key_is_claimed_once_until_released_or_expired(
    store: SQLiteJobStore, clock: Clock
) -> None:
    assert await store.claim_key("k", clock.now + HOUR_MS)
    assert not await store.claim_key("k", clock.now + HOUR_MS)
    await store.release_key("k")
    assert await store.claim_key("k", clock.now + HOUR_MS)
    clock.now += HOUR_MS
    assert await store.claim_key("k", clock.now + HOUR_MS)  # the earlier claim expired


async def test_a_conditional_save_replaces_a_record_only_in_the_given_statuses(
    store: SQLiteJobStore, clock: Clock
) -> None:
    await store.save([record("a", clock.now)])
    canceled = record("a", clock.now, JobStatus.CANCELED, completed_at=clock.now)

    assert await store.save_if(canceled, {JobStatus.QUEUED})
    assert not await store.save_if(record("a", clock.now, JobStatus.RUNNING), {JobStatus.QUEUED})
    assert not await store.save_if(record("b", clock.now), {JobStatus.QUEUED})  # no such record: nothing created
    found = await store.get("a")
    assert found is not None and found.status is JobStatus.CANCELED
    assert await store.get("b") is None


async def test_a_new_job_is_created_unless_an_unfinished_one_has_its_id(store: SQLiteJobStore, clock: Clock) -> None:
    assert await store.create(record("a", clock.now))
    assert not await store.create(record("a", clock.now, delivery={"second": True}))  # the first is unfinished
    await store.save([record("a", clock.now, JobStatus.SUCCEEDED, completed_at=clock.now)])
    assert await store.create(record("a", clock.now + 1))  # an id is free again once its job has ended
    found = await store.get("a")
    assert found is not None and found.status is JobStatus.QUEUED and found.created_at == clock.now + 1


async def test_a_new_record_of_an_id_the_server_made_up_never_replaces_the_one_its_worker_wrote(
    store: SQLiteJobStore, clock: Clock
) -> None:
    await store.insert_new(record("fresh", clock.now, delivery={"first": True}))
    found = await store.get("fresh")
    assert found is not None and found.status is JobStatus.QUEUED and found.delivery == {"first": True}

    # Its worker, faster than its front door, wrote the job's end first: the front door's record leaves it be.
    await store.save(
        [record("ran", clock.now, JobStatus.SUCCEEDED, completed_at=clock.now, outputs=[{"filename": "out.png"}])]
    )
    await store.insert_new(record("ran", clock.now))
    found = await store.get("ran")
    assert found is not None and found.status is JobStatus.SUCCEEDED and found.outputs == [{"filename": "out.png"}]
