"""Comfy API v2's assets: UUID-identified records over content-addressed blobs, on this server's disk.

A blob is a file under `folder/blobs/<first 2 hex>/<hex>`, named by the blake3 digest of its bytes, so identical
bytes are stored once however many assets reference them. An upload streams into `folder/blobs/tmp/` while it is
hashed, and is then renamed into place, or dropped when the blob is already there. The records live in
`folder/assets.db`, SQLite in WAL mode through SQLAlchemy Core's asyncio extension over aiosqlite (as the job
store): `assets` holds one row per record, `blobs` one per stored file with its size (their sum is what
`disk_limit_bytes` bounds), and `upload_keys` the Idempotency-Keys of uploads, single-use for 24 hours.

Every change to the set of blobs runs in a transaction that takes SQLite's write lock at its start (BEGIN
IMMEDIATE) and places or deletes the file before committing, so no sweep or delete, in this process or another
one on the same folder, removes a blob between an upload finding it and referencing it.

A job's outputs are the exception, because a client waits for them: `add_output` places the blob and answers the
record at once, and the record is written behind (`flush_outputs`), before its job's record is (the record writer
flushes the outputs first: a job on disk never lists an asset that is not), and before any other transaction here
(`_writing`), so what this store reads and deletes always includes them. Until then reads find it in memory. Sweeps
and deletes of this process wait for an output being placed (`_blob_lock`), so none removes its blob from under it.

Retention: a record expires `retention_s` after it is made (never, when None), or `expires_in` seconds after when
the request asks for that. An expired record is invisible at once and deleted by `sweep`, with every blob that no
remaining record references. A blob lives as long as its longest-lived record, so referencing bytes again extends
their life and never shortens it. Job outputs (`job_id` set) expire with their job and cannot be deleted before.

The errors meant for the client are V2Error: 413 `payload_too_large` past `max_upload_bytes`, 409 `hash_mismatch`,
422 `idempotency_key_reuse`, 404 `blob_not_found`, 409 `asset_in_use`, and 507 `storage_full` when a new blob would
take the store past `disk_limit_bytes` (the contract has no code for a full store; 507 Insufficient Storage is
HTTP's own status for it). SQLite's errors become JobStoreError.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    MetaData,
    Row,
    String,
    Table,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ..errors import ConfigError, JobStoreError, V2Error
from ..jobstore.records import now_ms
from ..jobstore.sqlite_files import converted, open_sqlite
from ..storage.staging import stage_file

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HASH_PREFIX = "blake3:"
# The contract's bounds on a request's retention override (`expires_in`).
MIN_EXPIRES_IN_S = 60
MAX_EXPIRES_IN_S = 604800
# How long an upload's Idempotency-Key refuses a second use (the contract's 24 hours).
KEY_LIFETIME_MS = 24 * 3600 * 1000
# A temporary file older than this belongs to no upload still running (one that crashed the process, say).
TEMPORARY_LIFETIME_MS = 3600 * 1000

# Files up to this size are hashed, placed or read in the event loop: a worker-thread hop costs more than that work
# (measured in bench/v2.py, where a job's outputs are stored and downloaded while its client waits).
SMALL_FILE_BYTES = 256 * 1024
# Received bytes gathered before one write-and-hash in a thread: fewer thread hops, memory bounded all the same.
_WRITE_SIZE = 1024 * 1024
_READ_SIZE = 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")

_metadata = MetaData()
assets_table = Table(
    "assets",
    _metadata,
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
)
blobs_table = Table(
    "blobs",
    _metadata,
    Column("hash", String, primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    # The content type the bytes were first stored with: a from-hash request names none of its own.
    Column("content_type", String, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
keys_table = Table(
    "upload_keys",
    _metadata,
    Column("key", String, primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)
# A blob's row, unless its hash has one already (`_blob_row` gives the values).
_INSERT_BLOB = sqlite_insert(blobs_table).on_conflict_do_nothing(index_elements=[blobs_table.c.hash])
# Records kept by `_remember` (about 300 bytes each).
_RECENT_RECORDS = 4096
# Output records waiting to be written at most: past this, a new output waits for the write (a failing store slows
# jobs down instead of growing memory or losing records).
_MAX_UNWRITTEN = 10_000


@dataclasses.dataclass(frozen=True)
class AssetRecord:
    """One asset. Times are milliseconds since the epoch; `expires_at` None: kept until deleted. `job_id` is set on
    a job's outputs, None on uploads."""

    id: str
    hash: str  # blake3:<hex>
    size_bytes: int
    content_type: str
    file_path: str | None
    created_at: int
    expires_at: int | None
    tags: list[str] = dataclasses.field(default_factory=list)
    job_id: str | None = None

    @property
    def digest(self) -> str:
        """The hash's hex digest."""
        return self.hash.removeprefix(HASH_PREFIX)


@dataclasses.dataclass(frozen=True)
class Upload:
    """Bytes received into a temporary file (see AssetStore.receiving), with their blake3 hex digest and size."""

    path: Path
    digest: str
    size_bytes: int


def parse_hash(value: str) -> str | None:
    """The hex digest of a `blake3:<hex>` hash (case aside), or None when `value` is not one."""
    prefix, _, digest = value.strip().partition(":")
    digest = digest.lower()
    return digest if prefix.lower() == HASH_PREFIX[:-1] and _HEX.fullmatch(digest) else None


class AssetStore:
    # Every method but `open` raises JobStoreError when SQLite fails.

    def __init__(
        self,
        folder: Path,
        *,
        retention_s: float | None,
        max_upload_bytes: int,
        disk_limit_bytes: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """`retention_s`: how long a record is kept unless the request says otherwise (None: until deleted);
        `max_upload_bytes`: the largest upload; `disk_limit_bytes`: the most bytes the blobs may take (0: no limit,
        and job outputs are never refused)."""
        self.folder = folder
        self.path = folder / "assets.db"
        self.blobs = folder / "blobs"
        self._temporaries = self.blobs / "tmp"
        self.retention_s = retention_s
        self.max_upload_bytes = max_upload_bytes
        self.disk_limit_bytes = disk_limit_bytes
        self._clock = clock
        self._engine: AsyncEngine | None = None
        # Records read or made lately, by id, oldest first (see `_remember`).
        self._recent: collections.OrderedDict[str, AssetRecord] = collections.OrderedDict()
        # Job outputs placed but not yet written, by id, and how many of them reference each hash.
        self._unwritten: dict[str, AssetRecord] = {}
        self._unwritten_hashes: collections.Counter[str] = collections.Counter()
        # Held while an output's blob is placed, and by what removes blobs: one never removes the other's.
        self._blob_lock = asyncio.Lock()
        # One write of the unwritten outputs at a time.
        self._flush_lock = asyncio.Lock()

    async def open(self) -> None:
        """Create the folders and the schema if they are missing; raises ConfigError when the store cannot be used."""
        try:
            await asyncio.to_thread(self._temporaries.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"ASSETS_DIR: cannot create the asset store in {self.folder}: {exc}") from None
        self._engine = await open_sqlite(
            self.path, _metadata, version=SCHEMA_VERSION, variable="ASSETS_DIR", store="asset store", what="assets"
        )

    async def close(self) -> None:
        """Write the outputs still unwritten (logged when that fails), then close the file."""
        if self._engine is not None:
            try:
                await self.flush_outputs()
            except JobStoreError as exc:
                logger.error(
                    "output asset records could not be written at shutdown",
                    extra={"reason": str(exc), "lost": len(self._unwritten)},
                )
            await self._engine.dispose()
            self._engine = None

    async def ingest(
        self,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str,
        file_path: str | None,
        tags: Sequence[str],
        expected_hash: str | None,
        expires_in_s: int | None,
        idempotency_key: str | None = None,
    ) -> tuple[AssetRecord, bool]:
        """Store the bytes of `chunks` and mint a record over them: `receiving` then `commit`. The bool says whether
        the bytes were new (False: a blob with the same hash was already stored)."""
        async with self.receiving(chunks) as upload:
            return await self.commit(
                upload,
                content_type=content_type,
                file_path=file_path,
                tags=tags,
                expected_hash=expected_hash,
                expires_in_s=expires_in_s,
                idempotency_key=idempotency_key,
            )

    @contextlib.asynccontextmanager
    async def receiving(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[Upload]:
        """The bytes of `chunks`, written to a temporary file and hashed as they arrive (never held whole), for
        `commit` to store; the file is removed on leaving unless `commit` moved it into the store. Raises 413
        `payload_too_large` as soon as the bytes received pass `max_upload_bytes`. (The disk limit waits for
        `commit`: bytes the store holds already take no more room.)"""
        temporary = self._temporaries / f"{uuid.uuid4().hex}.part"
        try:
            yield await self._receive(chunks, temporary)
        finally:
            await asyncio.to_thread(_remove, temporary)

    async def commit(
        self,
        upload: Upload,
        *,
        content_type: str,
        file_path: str | None,
        tags: Sequence[str],
        expected_hash: str | None,
        expires_in_s: int | None,
        idempotency_key: str | None = None,
    ) -> tuple[AssetRecord, bool]:
        """Mint a record over `upload`'s bytes, moving them into the store unless a blob with their hash is there
        already (the bool: whether they were new). `expected_hash` that is not theirs: 409 `hash_mismatch`, and
        nothing is minted; an `idempotency_key` already used: 422 `idempotency_key_reuse`; new bytes past
        `disk_limit_bytes`: 507 `storage_full`."""
        digest = HASH_PREFIX + upload.digest
        if expected_hash is not None and expected_hash.strip().lower() != digest:
            raise V2Error(
                "hash_mismatch",
                f"The bytes received hash to {digest}, not to the expected_hash {expected_hash}",
                status_code=409,
                details={"expected_hash": expected_hash, "hash": digest},
            )
        now = self._clock()
        record = self._new_record(
            digest,
            upload.size_bytes,
            content_type=content_type,
            file_path=file_path,
            tags=tags,
            now=now,
            expires_at=self._deadline(expires_in_s, now),
        )
        created = await self._store(upload, record, idempotency_key=idempotency_key, limited=True)
        return record, created

    async def check_idempotency_key(self, key: str) -> None:
        """422 `idempotency_key_reuse` when an upload already used `key` (within 24 hours), so that a refused upload
        is refused before its bytes are read; `commit` claims the key."""
        statement = select(keys_table.c.key).where(
            keys_table.c.key == key, keys_table.c.created_at > self._clock() - KEY_LIFETIME_MS
        )
        with self._converted():
            async with self._connected().connect() as connection:
                if (await connection.execute(statement)).first() is not None:
                    raise _key_reused()

    async def mint_from_hash(
        self, hash: str, *, file_path: str | None, tags: Sequence[str], expires_in_s: int | None
    ) -> tuple[AssetRecord, bool]:
        """A new record over the stored blob `hash`, and True; 404 `blob_not_found` without one. When an identical
        reference exists (an unexpired upload record of the same hash, `file_path` and `tags`), that record and
        False instead: its expiry is moved to the requested one if that is later, never brought forward."""
        digest = parse_hash(hash)
        if digest is None:
            raise _blob_not_found(hash)
        full_hash = HASH_PREFIX + digest
        now = self._clock()
        deadline = self._deadline(expires_in_s, now)
        async with self._writing() as connection:
            existing = await self._identical(connection, full_hash, file_path, list(tags))
            if existing is not None:
                return await self._extended(connection, existing, deadline), False
            blob = (
                await connection.execute(
                    select(blobs_table.c.size_bytes, blobs_table.c.content_type).where(blobs_table.c.hash == full_hash)
                )
            ).first()
            if blob is None:
                raise _blob_not_found(hash)
            record = self._new_record(
                full_hash,
                blob.size_bytes,
                content_type=blob.content_type,
                file_path=file_path,
                tags=tags,
                now=now,
                expires_at=deadline,
            )
            await connection.execute(assets_table.insert(), _row(record))
        logger.debug("asset minted from a hash", extra={"asset_id": record.id, "hash": full_hash})
        return record, True

    async def has_blob(self, hash: str) -> bool:
        """Whether the bytes of `hash` are stored (and a record may be minted over them)."""
        digest = parse_hash(hash)
        if digest is None:
            return False
        if self._unwritten_hashes[HASH_PREFIX + digest]:
            return True
        statement = select(blobs_table.c.hash).where(blobs_table.c.hash == HASH_PREFIX + digest)
        with self._converted():
            async with self._connected().connect() as connection:
                return (await connection.execute(statement)).first() is not None

    async def get(self, asset_id: str) -> AssetRecord | None:
        """The record with this id, unless there is none or it has expired."""
        cached = self._unwritten.get(asset_id) or self._recent.get(asset_id)
        if cached is not None and (cached.expires_at is None or cached.expires_at > self._clock()):
            return cached
        statement = select(assets_table).where(assets_table.c.id == asset_id, self._unexpired())
        with self._converted():
            async with self._connected().connect() as connection:
                row = (await connection.execute(statement)).first()
        if row is None:
            return None
        return self._remember(_record(row))

    def _remember(self, record: AssetRecord) -> AssetRecord:
        """Keep a record read or made here for the next `get`: a job's outputs are read back at once, and a content
        download should not wait for SQLite (measured in bench/v2.py). A cached record is only trusted until its
        `expires_at`; a later one (retention extended) is read again from the file, and `delete` drops it."""
        recent = self._recent
        recent[record.id] = record
        recent.move_to_end(record.id)
        if len(recent) > _RECENT_RECORDS:
            recent.popitem(last=False)
        return record

    async def delete(self, asset_id: str) -> bool:
        """Delete the record (False: there is none, or it has expired), and its blob when no other record
        references it. A job's output: 409 `asset_in_use` (it goes when it expires, with its job)."""
        self._recent.pop(asset_id, None)
        async with self._blob_lock, self._writing() as connection:
            row = (
                await connection.execute(
                    select(assets_table.c.hash, assets_table.c.job_id).where(
                        assets_table.c.id == asset_id, self._unexpired()
                    )
                )
            ).first()
            if row is None:
                return False
            if row.job_id is not None:
                raise V2Error(
                    "asset_in_use", "The asset cannot be deleted while the platform depends on it", status_code=409
                )
            await connection.execute(delete(assets_table).where(assets_table.c.id == asset_id))
            referenced = select(assets_table.c.id).where(assets_table.c.hash == row.hash, self._unexpired()).limit(1)
            if (await connection.execute(referenced)).first() is None:
                await connection.execute(delete(blobs_table).where(blobs_table.c.hash == row.hash))
                await asyncio.to_thread(self._remove_blobs, [row.hash])
        logger.debug("asset deleted", extra={"asset_id": asset_id})
        return True

    def content_path(self, record: AssetRecord) -> Path:
        """Where the record's bytes are stored."""
        return self._blob_path(record.digest)

    async def add_output(
        self, path: Path, *, job_id: str, file_path: str, content_type: str, expires_at: int | None
    ) -> AssetRecord:
        """A job's output file as an asset of that job: hard-linked into the store (copied across file systems) and
        hashed, unless its bytes are stored already; its record is written behind (see the module's docstring). The
        file stays where it is; its owner deletes (never rewrites) it. Outputs are never refused for
        `disk_limit_bytes`: they are on this disk already."""
        if len(self._unwritten) >= _MAX_UNWRITTEN:
            await self.flush_outputs()
        temporary = self._temporaries / f"{uuid.uuid4().hex}.part"
        async with self._blob_lock:
            try:
                if os.stat(path).st_size <= SMALL_FILE_BYTES:
                    upload = self._placed_output(path, temporary)
                else:
                    upload = await asyncio.to_thread(self._placed_output, path, temporary)
            finally:
                _remove(temporary)  # one unlink, usually of nothing (the file became the blob): no thread hop
            record = self._new_record(
                HASH_PREFIX + upload.digest,
                upload.size_bytes,
                content_type=content_type,
                file_path=file_path,
                tags=(),
                now=self._clock(),
                expires_at=expires_at,
                job_id=job_id,
            )
            self._unwritten[record.id] = record
            self._unwritten_hashes[record.hash] += 1
        logger.debug(
            "job output stored", extra={"asset_id": record.id, "hash": record.hash, "size_bytes": record.size_bytes}
        )
        return self._remember(record)

    def _placed_output(self, source: Path, temporary: Path) -> Upload:
        """`source`'s bytes as a blob (`temporary` is where they wait while hashed), placed unless already there."""
        upload = _take_in(source, temporary)
        blob = self._blob_path(upload.digest)
        if not blob.exists():
            _place(temporary, blob)
        return upload

    async def flush_outputs(self) -> None:
        """Write the job outputs' records still unwritten, in one transaction; on failure they stay unwritten (and
        JobStoreError is raised)."""
        async with self._flush_lock:
            if not self._unwritten:
                return
            batch = list(self._unwritten.values())
            async with self._transaction() as connection:
                await connection.execute(_INSERT_BLOB, [_blob_row(record) for record in batch])
                await connection.execute(assets_table.insert(), [_row(record) for record in batch])
            for record in batch:
                del self._unwritten[record.id]
                self._unwritten_hashes[record.hash] -= 1
                if not self._unwritten_hashes[record.hash]:
                    del self._unwritten_hashes[record.hash]

    async def stage(self, record: AssetRecord, folder: Path, name: str) -> Path:
        """The record's bytes as `folder/name`, where ComfyUI reads its inputs: a hard link to the blob, else a
        copy, never a symlink (see storage/staging.py)."""
        return await asyncio.to_thread(stage_file, self.content_path(record), folder, name)

    async def sweep(self) -> int:
        """Delete the expired records, the blobs no remaining record references, the Idempotency-Keys past their 24
        hours and the temporary files of uploads that ended long ago; how many records were deleted."""
        now = self._clock()
        async with self._blob_lock, self._writing() as connection:
            expired = (await connection.execute(delete(assets_table).where(assets_table.c.expires_at <= now))).rowcount
            unreferenced = ~exists().where(assets_table.c.hash == blobs_table.c.hash)
            hashes = (
                (await connection.execute(delete(blobs_table).where(unreferenced).returning(blobs_table.c.hash)))
                .scalars()
                .all()
            )
            await asyncio.to_thread(self._remove_blobs, hashes)
            await connection.execute(delete(keys_table).where(keys_table.c.created_at <= now - KEY_LIFETIME_MS))
        stale = await asyncio.to_thread(self._remove_stale_temporaries, now)
        if expired or hashes or stale:
            logger.debug("assets swept", extra={"records": expired, "blobs": len(hashes), "temporary_files": stale})
        return expired

    async def _receive(self, chunks: AsyncIterator[bytes], temporary: Path) -> Upload:
        hasher = blake3()
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        handle = await asyncio.to_thread(temporary.open, "xb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_upload_bytes:
                    raise self._too_large()
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _WRITE_SIZE:
                    await asyncio.to_thread(_write, handle, hasher, pending)
                    pending, pending_size = [], 0
            await asyncio.to_thread(_write, handle, hasher, pending)
        finally:
            await asyncio.to_thread(handle.close)
        return Upload(temporary, hasher.hexdigest(), size)

    def _too_large(self) -> V2Error:
        return V2Error(
            "payload_too_large",
            f"The file is larger than the {self.max_upload_bytes} bytes an upload may have",
            status_code=413,
            details={"max_bytes": self.max_upload_bytes},
        )

    async def _store(self, upload: Upload, record: AssetRecord, *, idempotency_key: str | None, limited: bool) -> bool:
        """Insert `record`, and move `upload`'s file into place when its blob is new (the return value)."""
        blob = self._blob_path(upload.digest)
        placed = False
        try:
            async with self._writing() as connection:
                if idempotency_key is not None:
                    await self._claim(connection, idempotency_key)
                added = await connection.execute(_INSERT_BLOB, _blob_row(record))
                created = added.rowcount == 1
                if created and limited and await self._over_limit(connection):
                    raise _storage_full()
                await connection.execute(assets_table.insert(), _row(record))
                # A blob whose file went missing (deleted by hand) gets these same bytes back.
                if created or not await asyncio.to_thread(blob.exists):
                    await asyncio.to_thread(_place, upload.path, blob)
                    placed = created
        except JobStoreError:
            # The commit failed after the file was moved: no row stands for it (unless an output found it since).
            if placed and not self._unwritten_hashes[record.hash]:
                await asyncio.to_thread(_remove, blob)
            raise
        logger.debug(
            "asset stored",
            extra={"asset_id": record.id, "hash": record.hash, "size_bytes": record.size_bytes, "created_new": created},
        )
        return created

    async def _over_limit(self, connection: AsyncConnection) -> bool:
        return bool(self.disk_limit_bytes) and await _stored_bytes(connection) > self.disk_limit_bytes

    async def _claim(self, connection: AsyncConnection, key: str) -> None:
        now = self._clock()
        insert = sqlite_insert(keys_table).values(key=key, created_at=now)
        claimed = await connection.execute(
            insert.on_conflict_do_update(
                index_elements=[keys_table.c.key],
                set_={"created_at": now},
                where=keys_table.c.created_at <= now - KEY_LIFETIME_MS,
            )
        )
        if claimed.rowcount == 0:
            raise _key_reused()

    async def _identical(
        self, connection: AsyncConnection, full_hash: str, file_path: str | None, tags: list[str]
    ) -> AssetRecord | None:
        statement = (
            select(assets_table)
            .where(
                assets_table.c.hash == full_hash,
                assets_table.c.file_path.is_(None) if file_path is None else assets_table.c.file_path == file_path,
                assets_table.c.job_id.is_(None),
                self._unexpired(),
            )
            .order_by(assets_table.c.created_at)
        )
        rows = (await connection.execute(statement)).all()
        return next((_record(row) for row in rows if row.tags == tags), None)

    async def _extended(self, connection: AsyncConnection, record: AssetRecord, deadline: int | None) -> AssetRecord:
        if record.expires_at is None or (deadline is not None and deadline <= record.expires_at):
            return record
        await connection.execute(update(assets_table).where(assets_table.c.id == record.id).values(expires_at=deadline))
        return dataclasses.replace(record, expires_at=deadline)

    def _new_record(
        self,
        full_hash: str,
        size_bytes: int,
        *,
        content_type: str,
        file_path: str | None,
        tags: Iterable[str],
        now: int,
        expires_at: int | None,
        job_id: str | None = None,
    ) -> AssetRecord:
        return AssetRecord(
            id=str(uuid.uuid4()),
            hash=full_hash,
            size_bytes=size_bytes,
            content_type=content_type,
            file_path=file_path,
            created_at=now,
            expires_at=expires_at,
            tags=list(tags),
            job_id=job_id,
        )

    def _deadline(self, expires_in_s: int | None, now: int) -> int | None:
        """When a record made `now` expires: `expires_in_s` replaces the default retention."""
        if expires_in_s is not None:
            return now + expires_in_s * 1000
        if self.retention_s is None:
            return None
        return now + int(self.retention_s * 1000)

    def _unexpired(self) -> ColumnElement[bool]:
        return or_(assets_table.c.expires_at.is_(None), assets_table.c.expires_at > self._clock())

    def _blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def _remove_blobs(self, hashes: Iterable[str]) -> None:
        for full_hash in hashes:
            _remove(self._blob_path(full_hash.removeprefix(HASH_PREFIX)))

    def _remove_stale_temporaries(self, now: int) -> int:
        removed = 0
        for temporary in self._temporaries.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if temporary.stat().st_mtime * 1000 < now - TEMPORARY_LIFETIME_MS:
                    _remove(temporary)
                    removed += 1
        return removed

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """`_transaction`, after the unwritten outputs are written: it sees every record this store answered."""
        await self.flush_outputs()
        async with self._transaction() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction holding SQLite's write lock from its start: what it reads stays true until it commits,
        also against other processes on the same file."""
        with self._converted():
            async with self._connected().begin() as connection:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection

    def _converted(self) -> contextlib.AbstractContextManager[None]:
        return converted("asset store", self.path)

    def _connected(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the asset store is not open")
        return self._engine


def _key_reused() -> V2Error:
    return V2Error(
        "idempotency_key_reuse",
        "This Idempotency-Key was already used for an upload; send a new key with each upload",
        status_code=422,
    )


def _blob_not_found(hash: str) -> V2Error:
    return V2Error("blob_not_found", f"No stored bytes have the hash {hash}", status_code=404)


def _storage_full() -> V2Error:
    return V2Error("storage_full", "The asset store is full; delete assets or try again later", status_code=507)


async def _stored_bytes(connection: AsyncConnection) -> int:
    return (await connection.execute(select(func.coalesce(func.sum(blobs_table.c.size_bytes), 0)))).scalar_one()


def _write(handle: BinaryIO, hasher: blake3, pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    hasher.update(data)
    handle.write(data)


def _take_in(source: Path, temporary: Path) -> Upload:
    """`source` as `temporary` (a hard link, else a copy), hashed."""
    try:
        os.link(source, temporary)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, temporary)
    hasher = blake3()
    size = 0
    with temporary.open("rb") as handle:
        while chunk := handle.read(_READ_SIZE):
            hasher.update(chunk)
            size += len(chunk)
    return Upload(temporary, hasher.hexdigest(), size)


def _place(temporary: Path, blob: Path) -> None:
    blob.parent.mkdir(exist_ok=True)
    os.replace(temporary, blob)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _blob_row(record: AssetRecord) -> dict[str, Any]:
    """The row of the blob a record's bytes are stored in, as the record's creation makes it."""
    return {
        "hash": record.hash,
        "size_bytes": record.size_bytes,
        "content_type": record.content_type,
        "created_at": record.created_at,
    }


def _row(record: AssetRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "hash": record.hash,
        "size_bytes": record.size_bytes,
        "content_type": record.content_type,
        "file_path": record.file_path,
        "tags": record.tags,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "job_id": record.job_id,
    }


def _record(row: Row[Any]) -> AssetRecord:
    return AssetRecord(
        id=row.id,
        hash=row.hash,
        size_bytes=row.size_bytes,
        content_type=row.content_type,
        file_path=row.file_path,
        created_at=row.created_at,
        expires_at=row.expires_at,
        tags=list(row.tags),
        job_id=row.job_id,
    )
