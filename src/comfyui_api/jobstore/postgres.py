"""The fleet's shared job store: PostgreSQL (`JOB_STORE_URL=postgresql://…`), through SQLAlchemy Core's asyncio
extension over asyncpg, with sql.py's tables and queries. Every replica reads and writes the same records, so any
one answers for any job.

Replicas that start together create the schema once: `open()` holds a transaction-scoped advisory lock while it
checks the schema version and creates what is missing. A connection broken by a database restart fails its first
statement, which is tried again on a new connection (sql.py's `_run`), so the store works again as soon as the
database does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import ConfigError, JobStoreError
from ..urls import redact_url
from .records import now_ms
from .sql import SqlJobStore, metadata

SCHEMA_VERSION = 2
# Any constant shared by every replica: the key of the advisory lock held while the schema is created.
_SCHEMA_LOCK = 0x636F6D6679
# Seconds to connect before a database that does not answer counts as down.
CONNECT_TIMEOUT_S = 5.0

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


class PostgresJobStore(SqlJobStore):
    single_statement_autocommit = True

    def __init__(self, url: str, *, clock: Callable[[], int] = now_ms) -> None:
        self._url = asyncpg_url(url)
        self.where = redact_url(url)
        super().__init__(postgresql_insert, self._convert, clock=clock)

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

    async def ping(self) -> None:
        """Raises JobStoreError unless the database answers now."""
        await self._run(lambda connection: connection.execute(text("SELECT 1")))

    @contextlib.contextmanager
    def _convert(self) -> Iterator[None]:
        # asyncpg's connection errors reach us as OSError or TimeoutError when the pool opens a new connection.
        try:
            yield
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
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
    command_timeout_s: float = 30,
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


def _cause(exc: BaseException) -> Any:
    return str(getattr(exc, "orig", None) or exc) or type(exc).__name__
