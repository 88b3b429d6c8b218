"""The PostgreSQL job store (fleet mode) on a real server: every behaviour the SQLite store's tests check
(tests/unit/test_job_store.py, collected again here against a private database per test), and what is PostgreSQL's
own: replicas opening one new database at once create its schema once, a database of a newer schema is refused, a
server that does not answer is a ConfigError at startup and a JobStoreError after, connections a restart closed are
replaced without an error, and no error shows the password."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator

import pytest

from comfyui_api.errors import ConfigError, JobStoreError
from comfyui_api.jobstore.postgres import SCHEMA_VERSION, PostgresJobStore
from comfyui_api.jobstore.records import JobStatus
from tests.support.postgres import query, with_database
from tests.support.server import closed_port

# The SQLite store's tests, collected again in this module, where `store` is a PostgreSQL one.
from tests.unit.test_job_store import (  # noqa: F401
    HOUR_MS,
    Clock,
    record,
    test_a_conditional_save_replaces_a_record_only_in_the_given_statuses,
    test_a_new_job_is_created_unless_an_unfinished_one_has_its_id,
    test_a_new_record_of_an_id_the_server_made_up_never_replaces_the_one_its_worker_wrote,
    test_a_record_is_read_back_as_it_was_saved,
    test_an_idempotency_key_is_claimed_once_until_released_or_expired,
    test_listing_is_newest_first_filtered_by_status_and_time_and_paged,
    test_null_fields_stay_null,
    test_saving_a_record_again_replaces_it_and_one_save_writes_many,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def database(database_server: str) -> AsyncIterator[str]:
    """A database of this test alone, dropped after it."""
    name = f"comfyui_api_test_store_{secrets.token_hex(4)}"
    await query(database_server, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(database_server, name)
    finally:
        await query(database_server, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database: str, clock: Clock) -> AsyncIterator[PostgresJobStore]:
    opened = PostgresJobStore(database, clock=clock)
    await opened.open()
    yield opened
    await opened.close()


async def test_expired_records_are_invisible_then_deleted_with_their_keys(
    store: PostgresJobStore, database: str, clock: Clock
) -> None:
    await store.save([record("soon", clock.now), record("later", clock.now + HOUR_MS)])
    assert await store.claim_key("k", clock.now + 10)

    clock.now += HOUR_MS

    assert await store.get("soon") is None
    assert await store.delete_expired() == 1
    assert [row["id"] for row in await query(database, "SELECT id FROM jobs")] == ["later"]
    assert await query(database, "SELECT key FROM idempotency_keys") == []


async def test_replicas_opening_a_new_database_at_once_create_its_schema_once(database: str, clock: Clock) -> None:
    stores = [PostgresJobStore(database, clock=clock) for _ in range(4)]

    await asyncio.gather(*(store.open() for store in stores))

    await stores[0].save([record("a", clock.now)])
    for store in stores:
        found = await store.get("a")
        assert found is not None and found.status is JobStatus.QUEUED
        await store.close()
    assert [row["version"] for row in await query(database, "SELECT version FROM comfyui_api_schema")] == [
        SCHEMA_VERSION
    ]


async def test_a_database_of_a_newer_schema_is_refused(database: str) -> None:
    first = PostgresJobStore(database)
    await first.open()
    await first.close()
    await query(database, "UPDATE comfyui_api_schema SET version = $1", SCHEMA_VERSION + 1)

    with pytest.raises(ConfigError, match=rf"JOB_STORE_URL: .* schema version {SCHEMA_VERSION + 1}"):
        await PostgresJobStore(database).open()


async def test_a_server_that_does_not_answer_is_named_without_its_password() -> None:
    url = f"postgresql://jobs:hunter2@127.0.0.1:{closed_port()}/jobs"

    with pytest.raises(ConfigError, match="JOB_STORE_URL: cannot open the job store") as refused:
        await PostgresJobStore(url).open()

    assert "hunter2" not in str(refused.value)


async def test_a_database_gone_after_startup_is_a_job_store_error_then_works_again(
    database_server: str, clock: Clock
) -> None:
    name = f"comfyui_api_test_store_{secrets.token_hex(4)}"
    await query(database_server, f'CREATE DATABASE "{name}"')
    store = PostgresJobStore(with_database(database_server, name), clock=clock)
    await store.open()
    await store.save([record("a", clock.now)])
    await query(database_server, f'DROP DATABASE "{name}" WITH (FORCE)')

    with pytest.raises(JobStoreError, match="job store"):
        await store.ping()
    with pytest.raises(JobStoreError):
        await store.get("a")

    await query(database_server, f'CREATE DATABASE "{name}"')
    try:
        reopened = PostgresJobStore(with_database(database_server, name), clock=clock)
        await reopened.open()
        await store.ping()  # the pool replaced its broken connections
        await reopened.close()
    finally:
        await store.close()
        await query(database_server, f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_connections_a_database_restart_closed_are_replaced_without_an_error(
    store: PostgresJobStore, database: str, clock: Clock
) -> None:
    # Both pools (the one of create and save, and SQLAlchemy's) hold a connection that works.
    assert await store.create(record("before", clock.now))
    assert await store.get("before") is not None

    # As a restart of the database ends them, every connection of the store is ended by the server, with this
    # event loop blocked meanwhile (psql run synchronously): the store learns of it only when its next statement
    # fails on a closed connection, the case a retry on a new connection is for.
    subprocess.run(  # noqa: ASYNC221 (blocking on purpose)
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", database, "-c", _END_OTHER_CONNECTIONS], check=True
    )

    assert await store.create(record("created", clock.now))
    await store.insert_new(record("inserted", clock.now))
    await store.save([record("saved", clock.now, JobStatus.RUNNING)])
    await store.save([record("created", clock.now, JobStatus.SUCCEEDED)])
    found = await store.get("created")
    assert found is not None and found.status is JobStatus.SUCCEEDED
    assert {row["id"]: row["status"] for row in await query(database, "SELECT id, status FROM jobs")} == {
        "before": "queued",
        "created": "succeeded",
        "inserted": "queued",
        "saved": "running",
    }


# Ends every other connection to the database, and returns once they are gone.
_END_OTHER_CONNECTIONS = """
DO $$
BEGIN
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid();
    LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (
            SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
        );
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;
"""


def test_only_postgresql_urls_are_taken() -> None:
    with pytest.raises(ConfigError, match="only postgresql:// URLs"):
        PostgresJobStore("mysql://db/jobs")
    with pytest.raises(ConfigError, match="not a database URL"):
        PostgresJobStore("::not a url::")
