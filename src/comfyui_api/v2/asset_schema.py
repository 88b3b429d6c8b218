"""The asset store's tables (v2/assets.py): the same three in its SQLite file (standalone) and in the fleet's
PostgreSQL (shared mode), plus there the blobs' bytes (`asset_chunks`, see asset_blobs.py); and opening PostgreSQL.

In PostgreSQL the tables share the database with the job store's (`jobs`, `idempotency_keys`,
`comfyui_api_schema`), so theirs are named apart: `assets`, `asset_blobs`, `asset_upload_keys`, `asset_chunks`, and
`asset_schema` for their version. Replicas that start together create them once: `open_shared` holds a
transaction-scoped advisory lock while it checks the version and creates what is missing, as the job store does.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import JobStoreError
from ..jobstore.postgres import open_postgres

# The SQLite file's version (its user_version).
SCHEMA_VERSION = 1
# The PostgreSQL tables' version, in `asset_schema`.
SHARED_SCHEMA_VERSION = 1
# Keys of advisory locks, the same on every replica: one held while the schema is created, and the blob lock
# (LOCK_BLOBS), which every transaction that changes the set of blobs takes before it reads what it relies on.
_SCHEMA_LOCK = 0x6173736574
_BLOBS_LOCK = 0x626C6F6273
LOCK_BLOBS = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_BLOBS_LOCK)
# A statement may wait this long for the blob lock, held by another replica's sweep say.
_COMMAND_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class Tables:
    assets: Table
    blobs: Table
    keys: Table


def _tables(metadata: MetaData, *, blobs: str, keys: str) -> Tables:
    return Tables(
        Table(
            "assets",
            metadata,
            Column("id", String, primary_key=True),
            Column("hash", String, nullable=False),
            Column("size_bytes", BigInteger, nullable=False),
            Column("content_type", String, nullable=False),
            Column("file_path", String),
            Column("tags", JSON, nullable=False),
            Column("created_at", BigInteger, nullable=False),
            Column("expires_at", BigInteger),
            Column("job_id", String),
            Index("assets_by_hash", "hash"),
            Index("assets_by_expiry", "expires_at"),
        ),
        Table(
            blobs,
            metadata,
            Column("hash", String, primary_key=True),
            Column("size_bytes", BigInteger, nullable=False),
            # The content type the bytes were first stored with: a from-hash request names none of its own.
            Column("content_type", String, nullable=False),
            Column("created_at", BigInteger, nullable=False),
        ),
        Table(
            keys,
            metadata,
            Column("key", String, primary_key=True),
            Column("created_at", BigInteger, nullable=False),
        ),
    )


local_metadata = MetaData()
LOCAL = _tables(local_metadata, blobs="blobs", keys="upload_keys")
_shared_metadata = MetaData()
SHARED = _tables(_shared_metadata, blobs="asset_blobs", keys="asset_upload_keys")
chunks_table = Table(
    "asset_chunks",
    _shared_metadata,
    # A blob's hash (blake3:<hex>), or the pending key of bytes not yet adopted (asset_blobs.py).
    Column("hash", String, primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)
_version_table = Table("asset_schema", _shared_metadata, Column("version", Integer, nullable=False))


async def open_shared(url: str, where: str) -> AsyncEngine:
    """An engine on PostgreSQL at `url` (asyncpg's), with the shared tables; `where` names it in errors (redacted).
    ConfigError when it cannot be used."""
    return await open_postgres(
        url,
        _shared_metadata,
        _version_table,
        SHARED_SCHEMA_VERSION,
        lock=_SCHEMA_LOCK,
        where=where,
        store="asset store",
        what="assets",
        command_timeout_s=_COMMAND_TIMEOUT_S,
    )


@contextlib.contextmanager
def converted_shared(where: str) -> Iterator[None]:
    """SQLAlchemy's and asyncpg's errors as JobStoreError naming the store (the one place they are converted)."""
    # asyncpg's connection errors reach us as OSError or TimeoutError when the pool opens a new connection.
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # a file of this server's, not the database
        raise JobStoreError(f"asset store {where}: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc) or type(exc).__name__
