"""The embedded job store: one SQLite file (`STATE_DIR/jobs.db`), opened as sqlite_files.py opens the server's
SQLite files (WAL: readers such as GET /prompt/{id} never wait for the writer; the schema version checked and a
version-1 file migrated)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    and_,
    delete,
    or_,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from .base import JobQuery
from .records import JobKind, JobRecord, JobStatus, now_ms
from .sqlite_files import converted, open_sqlite

SCHEMA_VERSION = 2
# What each version added to the one before: a file of an older version is brought up to date at startup.
_MIGRATIONS = {
    2: (
        "ALTER TABLE jobs ADD COLUMN kind VARCHAR NOT NULL DEFAULT 'prompt'",
        "ALTER TABLE jobs ADD COLUMN request JSON",
        "ALTER TABLE jobs ADD COLUMN attempt_errors JSON NOT NULL DEFAULT '[]'",
    ),
}

_metadata = MetaData()
jobs_table = Table(
    "jobs",
    _metadata,
    Column("id", String, primary_key=True),
    Column("status", String, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("expires_at", BigInteger, nullable=False),
    Column("queue_position", Integer),
    Column("attempts", Integer, nullable=False),
    # none_as_null: a record's None is SQL NULL, not the JSON text 'null'.
    Column("progress", JSON(none_as_null=True)),
    Column("outputs", JSON, nullable=False),
    Column("error", JSON(none_as_null=True)),
    Column("delivery", JSON, nullable=False),
    Column("kind", String, nullable=False, server_default="prompt"),
    Column("request", JSON(none_as_null=True)),
    Column("attempt_errors", JSON, nullable=False, server_default="[]"),
    Index("jobs_by_expiry", "expires_at"),
    Index("jobs_by_creation", "created_at", "id"),
)

# Comfy API v2's Idempotency-Keys, claimed until they expire.
keys_table = Table(
    "idempotency_keys",
    _metadata,
    Column("key", String, primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
)


class SQLiteJobStore:
    def __init__(self, path: Path, *, clock: Callable[[], int] = now_ms) -> None:
        self.path = path
        self._clock = clock
        self._engine: AsyncEngine | None = None
        insert = sqlite_insert(jobs_table)
        self._upsert = insert.on_conflict_do_update(
            index_elements=[jobs_table.c.id],
            set_={column.name: insert.excluded[column.name] for column in jobs_table.c if column.name != "id"},
        )

    async def open(self) -> None:
        self._engine = await open_sqlite(
            self.path,
            _metadata,
            version=SCHEMA_VERSION,
            variable="STATE_DIR",
            store="job store",
            what="job records",
            migrations=_MIGRATIONS,
        )

    async def save(self, records: Sequence[JobRecord]) -> None:
        if not records:
            return
        with self._converted():
            async with self._connected().begin() as connection:
                await connection.execute(self._upsert, [_row(record) for record in records])

    async def get(self, job_id: str) -> JobRecord | None:
        statement = select(jobs_table).where(jobs_table.c.id == job_id, jobs_table.c.expires_at > self._clock())
        with self._converted():
            async with self._connected().connect() as connection:
                row = (await connection.execute(statement)).first()
        return _record(row) if row is not None else None

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        table = jobs_table.c
        statement = select(jobs_table).where(table.expires_at > self._clock())
        if query.kind is not None:
            statement = statement.where(table.kind == query.kind.value)
        if query.statuses is not None:
            statement = statement.where(table.status.in_([status.value for status in query.statuses]))
        if query.created_after is not None:
            statement = statement.where(table.created_at >= query.created_after)
        if query.created_before is not None:
            statement = statement.where(table.created_at < query.created_before)
        if query.before is not None:
            created, job_id = query.before
            statement = statement.where(
                or_(table.created_at < created, and_(table.created_at == created, table.id < job_id))
            )
        statement = statement.order_by(table.created_at.desc(), table.id.desc()).limit(query.limit)
        with self._converted():
            async with self._connected().connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [_record(row) for row in rows]

    async def delete_expired(self) -> int:
        with self._converted():
            async with self._connected().begin() as connection:
                now = self._clock()
                result = await connection.execute(delete(jobs_table).where(jobs_table.c.expires_at <= now))
                await connection.execute(delete(keys_table).where(keys_table.c.expires_at <= now))
        return result.rowcount

    async def claim_key(self, key: str, expires_at: int) -> bool:
        claim = sqlite_insert(keys_table).values(key=key, expires_at=expires_at).on_conflict_do_nothing()
        with self._converted():
            async with self._connected().begin() as connection:
                expired = keys_table.c.expires_at <= self._clock()
                await connection.execute(delete(keys_table).where(keys_table.c.key == key, expired))
                result = await connection.execute(claim)
        return result.rowcount == 1

    async def release_key(self, key: str) -> None:
        with self._converted():
            async with self._connected().begin() as connection:
                await connection.execute(delete(keys_table).where(keys_table.c.key == key))

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def _converted(self) -> contextlib.AbstractContextManager[None]:
        return converted("job store", self.path)

    def _connected(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the job store is not open")
        return self._engine


def _row(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status.value,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "expires_at": record.expires_at,
        "queue_position": record.queue_position,
        "attempts": record.attempts,
        "progress": record.progress,
        "outputs": record.outputs,
        "error": record.error,
        "delivery": record.delivery,
        "kind": record.kind.value,
        "request": record.request,
        "attempt_errors": record.attempt_errors,
    }


def _record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        created_at=row.created_at,
        status=JobStatus(row.status),
        started_at=row.started_at,
        completed_at=row.completed_at,
        expires_at=row.expires_at,
        queue_position=row.queue_position,
        progress=row.progress,
        outputs=row.outputs,
        error=row.error,
        attempts=row.attempts,
        delivery=row.delivery,
        kind=JobKind(row.kind),
        request=row.request,
        attempt_errors=row.attempt_errors,
    )
