"""The job store's tables and queries, for any database SQLAlchemy Core's asyncio extension reaches: the embedded
SQLite file (sqlite.py) and the fleet's shared PostgreSQL (postgres.py) differ only in how they are opened, how their
errors are named, and their dialect's INSERT … ON CONFLICT."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

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
    bindparam,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import JobStoreError
from .base import JobQuery
from .records import TERMINAL, JobRecord, JobStatus, now_ms, record_row, row_record

T = TypeVar("T")
# The bound parameter of `create`'s statement that holds the time it runs at.
NOW = "now_ms"


class Insert(Protocol):
    """A dialect's `insert(table)` (sqlalchemy.dialects.sqlite / postgresql): both have ON CONFLICT."""

    def __call__(self, table: Table) -> Any: ...


metadata = MetaData()
jobs_table = Table(
    "jobs",
    metadata,
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
    metadata,
    Column("key", String, primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
)


class SqlJobStore:
    """JobStore's queries. A subclass opens `_engine`; `converted()` turns the driver's errors into JobStoreError."""

    # A lone statement runs outside a transaction (a server database: BEGIN and COMMIT are round trips).
    single_statement_autocommit = False

    def __init__(
        self,
        insert: Insert,
        converted: Callable[[], contextlib.AbstractContextManager[None]],
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._insert = insert
        self._converted = converted
        self._clock = clock
        self._engine: AsyncEngine | None = None
        # `_engine` without transactions, for `single_statement_autocommit`.
        self._autocommit: AsyncEngine | None = None
        # Statements built once: one built per call costs its cache key each time (bench/fleet.py).
        upsert = insert(jobs_table)
        replaced = {column.name: upsert.excluded[column.name] for column in jobs_table.c if column.name != "id"}
        self._upsert = upsert.on_conflict_do_update(index_elements=[jobs_table.c.id], set_=replaced)
        table = jobs_table.c
        # Equalities, not IN: an IN list is rendered only at execution, and postgres.py runs this statement compiled
        # once to plain SQL.
        finished = or_(
            *(table.status == status.value for status in TERMINAL),
            table.expires_at <= bindparam(NOW, type_=BigInteger),
        )
        self._create = upsert.on_conflict_do_update(index_elements=[table.id], set_=replaced, where=finished)
        self._insert_new = upsert.on_conflict_do_nothing(index_elements=[table.id])

    async def save(self, records: Sequence[JobRecord]) -> None:
        if not records:
            return
        rows = [_row(record) for record in records]
        await self._run(lambda connection: connection.execute(self._upsert, rows), single=True)

    async def create(self, record: JobRecord) -> bool:
        """Write a new job's record unless a job with its id is unfinished (and unexpired): whether it was written.
        One statement, so that two replicas taking the same id at once cannot both succeed."""
        values = {**_row(record), NOW: self._clock()}
        result = await self._run(lambda connection: connection.execute(self._create, values), single=True)
        return bool(result.rowcount == 1)

    async def insert_new(self, record: JobRecord) -> None:
        await self._run(lambda connection: connection.execute(self._insert_new, _row(record)), single=True)

    async def save_if(self, record: JobRecord, statuses: Collection[JobStatus]) -> bool:
        """Replace the stored record by `record` only while the stored one is in one of `statuses`: whether it was
        (a cancel that must not overwrite a job another replica has taken on)."""
        row = _row(record)
        del row["id"]
        statement = (
            update(jobs_table)
            .where(jobs_table.c.id == record.id, jobs_table.c.status.in_([status.value for status in statuses]))
            .values(row)
        )
        result = await self._run(lambda connection: connection.execute(statement), single=True)
        return bool(result.rowcount == 1)

    async def get(self, job_id: str) -> JobRecord | None:
        statement = select(jobs_table).where(jobs_table.c.id == job_id, jobs_table.c.expires_at > self._clock())
        row = (await self._run(lambda connection: connection.execute(statement), single=True)).first()
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
        rows = (await self._run(lambda connection: connection.execute(statement))).all()
        return [_record(row) for row in rows]

    async def delete_expired(self) -> int:
        now = self._clock()

        async def work(connection: AsyncConnection) -> Any:
            await connection.execute(delete(keys_table).where(keys_table.c.expires_at <= now))
            return await connection.execute(delete(jobs_table).where(jobs_table.c.expires_at <= now))

        return int((await self._run(work)).rowcount)

    async def claim_key(self, key: str, expires_at: int) -> bool:
        claim = self._insert(keys_table).values(key=key, expires_at=expires_at).on_conflict_do_nothing()
        expired = keys_table.c.expires_at <= self._clock()

        async def work(connection: AsyncConnection) -> Any:
            await connection.execute(delete(keys_table).where(keys_table.c.key == key, expired))
            return await connection.execute(claim)

        return bool((await self._run(work)).rowcount == 1)

    async def release_key(self, key: str) -> None:
        await self._run(lambda connection: connection.execute(delete(keys_table).where(keys_table.c.key == key)))

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = self._autocommit = None

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]], *, single: bool = False) -> T:
        """`work` in one transaction; once more when the connection the pool gave turned out dead (the database
        restarted since it was opened): SQLAlchemy then drops every pooled connection, so the retry gets a new one.
        A connection is not pinged before each use: that is a round trip per transaction (bench/fleet.py).
        `single`: `work` is one statement, atomic by itself: where `single_statement_autocommit` is set, it runs
        without BEGIN and COMMIT, two round trips fewer."""
        try:
            return await self._once(work, single)
        except JobStoreError as exc:
            if not (isinstance(exc.__cause__, DBAPIError) and exc.__cause__.connection_invalidated):
                raise
        return await self._once(work, single)

    async def _once(self, work: Callable[[AsyncConnection], Awaitable[T]], single: bool) -> T:
        engine = self._connected()
        with self._converted():
            if single and self.single_statement_autocommit:
                if self._autocommit is None:
                    self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
                async with self._autocommit.connect() as connection:
                    return await work(connection)
            async with engine.begin() as connection:
                return await work(connection)

    def _connected(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the job store is not open")
        return self._engine


def _row(record: JobRecord) -> dict[str, Any]:
    return record_row(record)


def _record(row: Row[Any]) -> JobRecord:
    return row_record(row._mapping)
