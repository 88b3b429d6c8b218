"""The fleet's shared job store: PostgreSQL (`JOB_STORE_URL=postgresql://…`), through SQLAlchemy Core's asyncio
extension over asyncpg, with sql.py's tables and queries. Every replica reads and writes the same records, so any
one answers for any job.

Replicas that start together create the schema once: `open()` holds a transaction-scoped advisory lock while it
checks the schema version and creates what is missing. A connection broken by a database restart fails its first
statement, which is tried again on a new connection (sql.py's `_run`), so the store works again as soon as the
database does.

The statements every job runs, `create` (or `insert_new`) at its submission and `save` as it changes, skip
SQLAlchemy's execution: sql.py's statements, compiled once by SQLAlchemy's PostgreSQL compiler, run on a pool of
asyncpg's own. That is 0.42 ms a statement instead of 1.22 (SQLAlchemy's pool checkout alone is 0.45), on the fleet's
critical path twice (bench/fleet.py: fleet added over standalone).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import JSON, Column, Integer, MetaData, Table, select, text
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import ConfigError, JobStoreError
from ..urls import redact_url
from .records import JobRecord, now_ms, record_row
from .sql import NOW, SqlJobStore, metadata

SCHEMA_VERSION = 2
# Any constant shared by every replica: the key of the advisory lock held while the schema is created.
_SCHEMA_LOCK = 0x636F6D6679
# Seconds to connect before a database that does not answer counts as down.
CONNECT_TIMEOUT_S = 5.0
# Seconds a statement may take.
COMMAND_TIMEOUT_S = 30.0
# Connections of the pool that runs `create`, `insert_new` and `save` (besides SQLAlchemy's, for everything else).
FAST_POOL_SIZE = 8
# What SQLAlchemy's asyncpg dialect takes among the connection's arguments, and asyncpg does not.
_DIALECT_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn")
# A statement failed this way on a connection a database restart closed: a new connection runs it.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    ConnectionError,
)

T = TypeVar("T")

_version_metadata = MetaData()
_version_table = Table("comfyui_api_schema", _version_metadata, Column("version", Integer, nullable=False))


def asyncpg_url(url: str) -> str:
    """`postgresql://…` (as operators write it) with SQLAlchemy's asyncpg driver named; ConfigError if it is not a
    PostgreSQL URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"JOB_STORE_URL: not a database URL: {redact_url(url)}") from None
    if parsed.get_backend_name() not in {"postgresql", "postgres"}:
        raise ConfigError(f"JOB_STORE_URL: only postgresql:// URLs are supported, got {parsed.drivername}://")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


class _Compiled:
    """One of sql.py's statements as asyncpg runs it: SQLAlchemy's PostgreSQL SQL, and its parameters in order, with
    the constants it binds and its JSON columns' values serialized as SQLAlchemy would."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self._names: Sequence[str] = compiled.positiontup or ()
        self._constants = {name: value for name, value in compiled.params.items() if value is not None}
        # JSON parameter → whether a None is SQL NULL (none_as_null) rather than the JSON text 'null'.
        self._json = {
            name: bool(bind.type.none_as_null) for name, bind in compiled.binds.items() if isinstance(bind.type, JSON)
        }

    def args(self, values: dict[str, Any]) -> list[Any]:
        values = self._constants | values
        return [self._value(name, values[name]) for name in self._names]

    def _value(self, name: str, value: Any) -> Any:
        null = self._json.get(name)
        if null is None or (value is None and null):
            return value
        return json.dumps(value)


class PostgresJobStore(SqlJobStore):
    single_statement_autocommit = True

    def __init__(self, url: str, *, clock: Callable[[], int] = now_ms) -> None:
        self._url = asyncpg_url(url)
        self.where = redact_url(url)
        super().__init__(postgresql_insert, self._convert, clock=clock)
        self._pool: asyncpg.Pool | None = None
        dialect = postgresql_asyncpg.dialect()
        self._fast_create = _Compiled(self._create, dialect)
        self._fast_save = _Compiled(self._upsert, dialect)
        self._fast_insert_new = _Compiled(self._insert_new, dialect)

    async def open(self) -> None:
        self._engine = await open_postgres(
            self._url,
            metadata,
            _version_table,
            SCHEMA_VERSION,
            lock=_SCHEMA_LOCK,
            where=self.where,
            store="job store",
            what="job records",
        )
        # Connected as the engine connects.
        _, arguments = self._engine.dialect.create_connect_args(self._engine.url)
        for name in _DIALECT_ONLY:
            arguments.pop(name, None)
        try:
            self._pool = await asyncpg.create_pool(
                **arguments,
                min_size=1,
                max_size=FAST_POOL_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                reset=_reset,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            await self._engine.dispose()
            self._engine = None
            raise ConfigError(f"JOB_STORE_URL: cannot open the job store {self.where}: {_cause(exc)}") from None

    async def save(self, records: Sequence[JobRecord]) -> None:
        if not records:
            return
        rows = [self._fast_save.args(record_row(record)) for record in records]
        await self._fast(lambda connection: connection.executemany(self._fast_save.sql, rows))

    async def create(self, record: JobRecord) -> bool:
        args = self._fast_create.args({**record_row(record), NOW: self._clock()})
        status = await self._fast(lambda connection: connection.execute(self._fast_create.sql, *args))
        return bool(status == "INSERT 0 1")

    async def insert_new(self, record: JobRecord) -> None:
        args = self._fast_insert_new.args(record_row(record))
        await self._fast(lambda connection: connection.execute(self._fast_insert_new.sql, *args))

    async def _fast(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`work` on a connection of the asyncpg pool; once more on a new one when the connection turned out closed
        by a database restart (the pool then replaces all it holds), as sql.py's `_run` does."""
        try:
            return await self._fast_once(work)
        except JobStoreError as exc:
            if not isinstance(exc.__cause__, _CONNECTION_LOST):
                raise
            assert self._pool is not None
            await self._pool.expire_connections()
        return await self._fast_once(work)

    async def _fast_once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise RuntimeError("the job store is not open")
        with self._convert():
            async with self._pool.acquire() as connection:
                return await work(connection)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await super().close()

    async def ping(self) -> None:
        """Raises JobStoreError unless the database answers now."""
        await self._run(lambda connection: connection.execute(text("SELECT 1")))

    @contextlib.contextmanager
    def _convert(self) -> Iterator[None]:
        # asyncpg's connection errors reach us as OSError or TimeoutError when the pool opens a new connection.
        try:
            yield
        except (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise JobStoreError(f"job store {self.where}: {_cause(exc)}") from exc


async def open_postgres(
    url: str,
    metadata: MetaData,
    version_table: Table,
    version: int,
    *,
    lock: int,
    where: str,
    store: str,
    what: str,
    command_timeout_s: float = COMMAND_TIMEOUT_S,
) -> AsyncEngine:
    """An engine on PostgreSQL at `url` (asyncpg's) with `metadata`'s tables, at schema `version`, kept in the one
    row of `version_table`. Replicas that start together create them once: the transaction holds the advisory lock
    `lock` (a constant of the store) while it checks the version and creates what is missing. ConfigError names
    JOB_STORE_URL, `where` (redacted), the `store` and `what` it holds when it cannot be used."""
    engine = create_async_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_S, "command_timeout": command_timeout_s})
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock})
            await connection.run_sync(version_table.create, checkfirst=True)
            found = (await connection.execute(select(version_table.c.version))).scalar()
            if found is not None and found > version:
                # Raised inside the transaction: nothing it made is kept.
                raise ConfigError(
                    f"JOB_STORE_URL: {where} holds {what} of schema version {found}, which this version of the "
                    f"server (schema {version}) cannot read"
                )
            await connection.run_sync(metadata.create_all)
            if found is None:
                await connection.execute(version_table.insert().values(version=version))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        await engine.dispose()
        raise ConfigError(f"JOB_STORE_URL: cannot open the {store} {where}: {_cause(exc)}") from None
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def _reset(connection: asyncpg.Connection) -> None:
    """What a connection returned to the fast pool needs: only a transaction a cancelled statement left open is ended.
    asyncpg's default reset (unlock advisory locks, close cursors, unlisten, reset settings) is a round trip per
    statement, for session state these statements never make."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


def _cause(exc: BaseException) -> Any:
    return str(getattr(exc, "orig", None) or exc) or type(exc).__name__
