"""The embedded job store: one SQLite file (`STATE_DIR/jobs.db`), opened as sqlite_files.py opens the server's
SQLite files (WAL: readers such as GET /prompt/{id} never wait for the writer; the schema version checked and a
version-1 file migrated). Its queries are sql.py's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .records import now_ms
from .sql import SqlJobStore, metadata
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


class SQLiteJobStore(SqlJobStore):
    def __init__(self, path: Path, *, clock: Callable[[], int] = now_ms) -> None:
        super().__init__(sqlite_insert, lambda: converted("job store", path), clock=clock)
        self.path = path

    async def open(self) -> None:
        self._engine = await open_sqlite(
            self.path,
            metadata,
            version=SCHEMA_VERSION,
            variable="STATE_DIR",
            store="job store",
            what="job records",
            migrations=_MIGRATIONS,
        )
