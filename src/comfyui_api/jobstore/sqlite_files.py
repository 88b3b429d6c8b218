"""What the server's SQLite files share (the job store, jobstore/sqlite.py, and the asset store, v2/assets.py):
opening one through SQLAlchemy Core's asyncio extension over aiosqlite, so that no query blocks the event loop, with
its schema version checked and brought up to date; and one conversion of SQLAlchemy's errors.

Each file runs in WAL mode: readers never wait for the writer, and a committed transaction survives the process
being killed. `synchronous=NORMAL` may lose the last transactions on a power cut, never corrupt the file. The
schema's version is SQLite's `user_version`: a file written by a newer schema is refused at startup instead of
misread, and an older one is migrated by the statements each later version lists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import ConfigError, JobStoreError


async def open_sqlite(
    path: Path,
    metadata: MetaData,
    *,
    version: int,
    variable: str,
    store: str,
    what: str,
    migrations: Mapping[int, Sequence[str]] | None = None,
) -> AsyncEngine:
    """An engine on the file at `path` with `metadata`'s tables, at schema `version` (`migrations[n]`: the statements
    that bring version n-1 to n). A file that cannot be used raises ConfigError naming `variable`, the `store`
    ("job store") and `what` it holds ("job records")."""
    engine = create_async_engine(URL.create("sqlite+aiosqlite", database=str(path)))
    event.listen(engine.sync_engine, "connect", _configure_connection)
    try:
        async with engine.begin() as connection:
            found = (await connection.exec_driver_sql("PRAGMA user_version")).scalar_one()
            if found > version:
                raise ConfigError(
                    f"{variable}: {path} holds {what} of schema version {found}, which this version of the server "
                    f"(schema {version}) cannot read; point {variable} at another folder"
                )
            for step in range(found + 1, version + 1) if found else ():
                for statement in (migrations or {})[step]:
                    await connection.exec_driver_sql(statement)
            await connection.run_sync(metadata.create_all)
            await connection.exec_driver_sql(f"PRAGMA user_version = {version}")
    except SQLAlchemyError as exc:
        await engine.dispose()
        raise ConfigError(f"{variable}: cannot open the {store} {path}: {_cause(exc)}") from None
    except BaseException:
        await engine.dispose()
        raise
    return engine


@contextlib.contextmanager
def converted(store: str, path: Path) -> Iterator[None]:
    """SQLAlchemy's and the driver's errors as JobStoreError naming the store and its file (the one place they are
    converted)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise JobStoreError(f"{store} {path}: {_cause(exc)}") from exc


def _cause(exc: SQLAlchemyError) -> str:
    # The driver's own message ("unable to open database file", "database is locked") without SQLAlchemy's wrapping.
    return str(getattr(exc, "orig", None) or exc)


def _configure_connection(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    # WAL: readers and the writer do not block each other; NORMAL is durable against a crash of the process.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Another process on the same file (a second server on one folder) holds the write lock only briefly.
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
