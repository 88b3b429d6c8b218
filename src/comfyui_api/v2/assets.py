"""Comfy API v2's assets: UUID-identified records over content-addressed blobs, on this server's disk, or in fleet
mode in PostgreSQL, shared by every replica.

A blob is named by the blake3 digest of its bytes, so identical bytes are stored once however many assets reference
them; on disk it is a file under `folder/blobs/<first 2 hex>/<hex>`. An upload streams into `folder/blobs/tmp/`
while it is hashed, and is then stored, or dropped when the blob is already there. The records are three tables
(asset_schema.py): `assets` holds one row per record, `blobs` one per stored blob with its size (their sum is what
`disk_limit_bytes` bounds), and `upload_keys` the Idempotency-Keys of uploads, single-use for 24 hours.

Standalone, the tables are `folder/assets.db`, SQLite in WAL mode through SQLAlchemy Core's asyncio extension over
aiosqlite (as the job store), and the files are the blobs. Every change to the set of blobs runs in a transaction
that takes SQLite's write lock at its start (BEGIN IMMEDIATE) and places or deletes the file before committing, so
no sweep or delete, in this process or another one on the same folder, removes a blob between an upload finding it
and referencing it.

Shared mode (`shared_url`, the fleet's JOB_STORE_URL): the tables are in PostgreSQL, over asyncpg, and so are the
blobs' bytes, in chunks (asset_blobs.py): an asset uploaded to one replica is staged on another, an output stored
by one worker is served by any replica, and the disk limit bounds the fleet's store. `folder/blobs/` is then this
replica's cache: whatever needs a file (the content route, staging an input) asks `local_content`, which fetches a
blob missing here, hashing it as it streams in and renaming it into place only if it is the right bytes. Every
transaction that changes the set of blobs takes one transaction-scoped advisory lock, the same on every replica,
before it reads what it relies on, as BEGIN IMMEDIATE does here; an upload sends its new bytes before it takes the
lock (as pending chunks that only its own transaction sees), so a large upload holds no other replica's writes up.
No replica answers what another deleted: `get` reads PostgreSQL every time (only this replica's unwritten outputs,
which no other can delete, come from memory), so a cached file is only served for a record that exists; a fetch of
bytes deleted meanwhile is 404 `not_found`. Each replica's `sweep` removes its cached copies of blobs PostgreSQL no
longer holds, under the lock, so never one an upload is referencing.

A job's outputs are the exception, because a client waits for them: `add_output` places the blob and answers the
record at once, and the record is written behind (`flush_outputs`), before its job's record is (the record writer
flushes the outputs first: a job on disk never lists an asset that is not, and in shared mode, whose bytes are not
in PostgreSQL: the flush sends them in the transaction that writes the records), and before any other transaction
here (`_writing`), so what this store reads and deletes always includes them. Until then reads find it in memory.
Sweeps and deletes of this process wait for an output being placed (`_blob_lock`), so none removes its blob from
under it.

Retention: a record expires `retention_s` after it is made (never, when None), or `expires_in` seconds after when
the request asks for that. An expired record is invisible at once and deleted by `sweep`, with every blob that no
remaining record references. A blob lives as long as its longest-lived record, so referencing bytes again extends
their life and never shortens it. Job outputs (`job_id` set) expire with their job and cannot be deleted before.

The errors meant for the client are V2Error, the same in both modes: 413 `payload_too_large` past
`max_upload_bytes`, 409 `hash_mismatch`, 422 `idempotency_key_reuse`, 404 `blob_not_found`, 409 `asset_in_use`, 404
`not_found` for bytes deleted while they were being fetched, and 507 `storage_full` when a new blob would take the
store past `disk_limit_bytes` (the contract has no code for a full store; 507 Insufficient Storage is HTTP's own
status for it). SQLite's and PostgreSQL's errors become JobStoreError, and so do stored bytes that do not match
their hash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3
from sqlalchemy import Executable, Result, Row, delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ..errors import ConfigError, JobStoreError, V2Error
from ..jobstore.postgres import asyncpg_url
from ..jobstore.records import now_ms
from ..jobstore.sqlite_files import converted, open_sqlite
from ..storage.staging import stage_file
from ..urls import redact_url
from . import asset_blobs
from .asset_schema import LOCAL, LOCK_BLOBS, SCHEMA_VERSION, SHARED, converted_shared, local_metadata, open_shared

logger = logging.getLogger(__name__)

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
# Hashes per statement that asks which of them are stored.
_BATCH = 1000
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
    # Every method but `open` raises JobStoreError when SQLite or PostgreSQL fails.

    def __init__(
        self,
        folder: Path,
        *,
        retention_s: float | None,
        max_upload_bytes: int,
        disk_limit_bytes: int,
        clock: Callable[[], int] = now_ms,
        shared_url: str | None = None,
    ) -> None:
        """`retention_s`: how long a record is kept unless the request says otherwise (None: until deleted);
        `max_upload_bytes`: the largest upload; `disk_limit_bytes`: the most bytes the blobs may take (0: no limit,
        and job outputs are never refused); `shared_url`: the fleet's PostgreSQL (`postgresql://…`, as
        JOB_STORE_URL), which then holds the records and the bytes, `folder` a cache of the blobs (shared mode)."""
        self.folder = folder
        self.path = folder / "assets.db"
        self.blobs = folder / "blobs"
        self._temporaries = self.blobs / "tmp"
        self.retention_s = retention_s
        self.max_upload_bytes = max_upload_bytes
        self.disk_limit_bytes = disk_limit_bytes
        self._clock = clock
        self._engine: AsyncEngine | None = None
        self._shared_url = asyncpg_url(shared_url) if shared_url is not None else None
        self._shared = shared_url is not None
        self._where = redact_url(shared_url) if shared_url is not None else str(self.path)
        self._t = SHARED if self._shared else LOCAL
        self._insert = postgresql_insert if self._shared else sqlite_insert
        # A blob's row, unless its hash has one already (`_blob_row` gives the values).
        self._insert_blob = self._insert(self._t.blobs).on_conflict_do_nothing(index_elements=[self._t.blobs.c.hash])
        # Shared mode: the fetch of each blob being copied from PostgreSQL to this server, by hash.
        self._fetches: dict[str, asyncio.Task[Path]] = {}
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
        if self._shared_url is not None:
            self._engine = await open_shared(self._shared_url, self._where)
            return
        self._engine = await open_sqlite(
            self.path, local_metadata, version=SCHEMA_VERSION, variable="ASSETS_DIR", store="asset store", what="assets"
        )

    async def close(self) -> None:
        """Write the outputs still unwritten (logged when that fails), then close the file or the connections."""
        fetches = list(self._fetches.values())
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
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
        keys = self._t.keys
        statement = select(keys.c.key).where(keys.c.key == key, keys.c.created_at > self._clock() - KEY_LIFETIME_MS)
        if await self._read(statement) is not None:
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
            blobs = self._t.blobs
            blob = (
                await connection.execute(
                    select(blobs.c.size_bytes, blobs.c.content_type).where(blobs.c.hash == full_hash)
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
            await connection.execute(self._t.assets.insert(), _row(record))
        logger.debug("asset minted from a hash", extra={"asset_id": record.id, "hash": full_hash})
        return record, True

    async def has_blob(self, hash: str) -> bool:
        """Whether the bytes of `hash` are stored (and a record may be minted over them)."""
        digest = parse_hash(hash)
        if digest is None:
            return False
        if self._unwritten_hashes[HASH_PREFIX + digest]:
            return True
        return await self._stored(HASH_PREFIX + digest)

    async def _stored(self, full_hash: str) -> bool:
        blobs = self._t.blobs
        return await self._read(select(blobs.c.hash).where(blobs.c.hash == full_hash)) is not None

    async def get(self, asset_id: str) -> AssetRecord | None:
        """The record with this id, unless there is none or it has expired."""
        cached = self._unwritten.get(asset_id) or self._recent.get(asset_id)
        if cached is not None and (cached.expires_at is None or cached.expires_at > self._clock()):
            return cached
        row = await self._read(select(self._t.assets).where(self._t.assets.c.id == asset_id, self._unexpired()))
        if row is None:
            return None
        return self._remember(_record(row))

    def _remember(self, record: AssetRecord) -> AssetRecord:
        """Keep a record read or made here for the next `get`: a job's outputs are read back at once, and a content
        download should not wait for SQLite (measured in bench/v2.py). A cached record is only trusted until its
        `expires_at`; a later one (retention extended) is read again from the file, and `delete` drops it. Not in
        shared mode, where another replica may delete a record at any time: there `get` always asks PostgreSQL."""
        if self._shared:
            return record
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
        assets = self._t.assets
        async with self._blob_lock, self._writing() as connection:
            row = (
                await connection.execute(
                    select(assets.c.hash, assets.c.job_id).where(assets.c.id == asset_id, self._unexpired())
                )
            ).first()
            if row is None:
                return False
            if row.job_id is not None:
                raise V2Error(
                    "asset_in_use", "The asset cannot be deleted while the platform depends on it", status_code=409
                )
            await connection.execute(delete(assets).where(assets.c.id == asset_id))
            referenced = select(assets.c.id).where(assets.c.hash == row.hash, self._unexpired()).limit(1)
            if (await connection.execute(referenced)).first() is None:
                await connection.execute(delete(self._t.blobs).where(self._t.blobs.c.hash == row.hash))
                if self._shared:
                    await asset_blobs.drop(connection, [row.hash])
                await asyncio.to_thread(self._remove_blobs, [row.hash])
        logger.debug("asset deleted", extra={"asset_id": asset_id})
        return True

    async def local_content(self, record: AssetRecord) -> Path:
        """A file on this server holding the record's bytes: its blob. In shared mode, a blob this server has not
        cached yet is first fetched from PostgreSQL (one fetch per blob at a time, however many ask), and a blob
        deleted since the record was read is 404 `not_found`; bytes there that do not hash to the record's hash are a
        JobStoreError, and are not cached."""
        blob = self._blob_path(record.digest)
        if not self._shared or blob.exists():
            return blob
        fetch = self._fetches.get(record.hash)
        if fetch is None:
            fetch = self._fetches[record.hash] = asyncio.ensure_future(self._fetch(record, blob))
            fetch.add_done_callback(functools.partial(self._fetched, record.hash))
        # Shielded: a caller that gives up (a client gone) leaves the fetch to the others, and to the cache.
        return await asyncio.shield(fetch)

    def _fetched(self, full_hash: str, fetch: asyncio.Task[Path]) -> None:
        if self._fetches.get(full_hash) is fetch:
            del self._fetches[full_hash]
        if not fetch.cancelled():
            fetch.exception()  # retrieved here, for when every caller gave up on it

    async def _fetch(self, record: AssetRecord, blob: Path) -> Path:
        temporary = self._temporaries / f"{uuid.uuid4().hex}.part"
        if await asset_blobs.fetch(self._begun, record.hash, record.size_bytes, temporary, blob):
            logger.debug("asset blob fetched", extra={"hash": record.hash, "size_bytes": record.size_bytes})
            return blob
        if not await self._stored(record.hash):
            raise V2Error("not_found", f"No asset with id {record.id!r} (it was deleted)", status_code=404)
        logger.error("asset blob corrupt in the store", extra={"hash": record.hash})
        raise JobStoreError(f"asset store {self._where}: the stored bytes of {record.hash} do not match their hash")

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
            if self._shared:
                await self._write_shared(batch)
            else:
                async with self._transaction() as connection:
                    await connection.execute(self._insert_blob, [_blob_row(record) for record in batch])
                    await connection.execute(self._t.assets.insert(), [_row(record) for record in batch])
            for record in batch:
                del self._unwritten[record.id]
                self._unwritten_hashes[record.hash] -= 1
                if not self._unwritten_hashes[record.hash]:
                    del self._unwritten_hashes[record.hash]

    async def _write_shared(self, batch: list[AssetRecord]) -> None:
        """The outputs' records, in PostgreSQL with the bytes of every blob they reference: their chunks are sent
        first (from this server's blobs), then the records written, all in one transaction."""
        firsts: dict[str, AssetRecord] = {}
        for record in batch:
            firsts.setdefault(record.hash, record)
        sources = {full_hash: self._blob_path(record.digest) for full_hash, record in firsts.items()}
        blobs = self._t.blobs
        async with self._begun(select(blobs.c.hash).where(blobs.c.hash.in_(list(firsts)))) as (connection, found):
            stored = set(found.scalars())
            pending: dict[str, str] = {}
            for full_hash in firsts.keys() - stored:
                pending[full_hash] = asset_blobs.pending_key()
                await asset_blobs.write(connection, pending[full_hash], sources[full_hash])
            await connection.execute(LOCK_BLOBS)
            await self._adopt(connection, list(firsts.values()), pending, sources, limited=False)
            await connection.execute(self._t.assets.insert(), [_row(record) for record in batch])

    async def stage(self, record: AssetRecord, folder: Path, name: str) -> Path:
        """The record's bytes as `folder/name`, where ComfyUI reads its inputs: a hard link to the blob, else a
        copy, never a symlink (see storage/staging.py)."""
        return await asyncio.to_thread(stage_file, await self.local_content(record), folder, name)

    async def sweep(self) -> int:
        """Delete the expired records, the blobs no remaining record references, the Idempotency-Keys past their 24
        hours and the temporary files of uploads that ended long ago; how many records were deleted. In shared mode
        also this server's cached blobs that PostgreSQL no longer stores (deleted by any replica)."""
        now = self._clock()
        assets, blobs, keys = self._t.assets, self._t.blobs, self._t.keys
        async with self._blob_lock, self._writing() as connection:
            expired = (await connection.execute(delete(assets).where(assets.c.expires_at <= now))).rowcount
            unreferenced = ~exists().where(assets.c.hash == blobs.c.hash)
            hashes = (
                (await connection.execute(delete(blobs).where(unreferenced).returning(blobs.c.hash))).scalars().all()
            )
            local = hashes
            if self._shared:
                await asset_blobs.drop(connection, hashes)
                local = await self._not_stored(connection, await asyncio.to_thread(self._cached))
            await asyncio.to_thread(self._remove_blobs, local)
            await connection.execute(delete(keys).where(keys.c.created_at <= now - KEY_LIFETIME_MS))
        stale = await asyncio.to_thread(self._remove_stale_temporaries, now)
        if expired or hashes or local or stale:
            logger.debug(
                "assets swept",
                extra={"records": expired, "blobs": len(hashes), "local_blobs": len(local), "temporary_files": stale},
            )
        return expired

    def _cached(self) -> list[str]:
        """The hashes of the blobs on this server's disk."""
        return [HASH_PREFIX + path.name for path in self.blobs.glob("??/*") if _HEX.fullmatch(path.name)]

    async def _not_stored(self, connection: AsyncConnection, hashes: Sequence[str]) -> list[str]:
        """Those of `hashes` that PostgreSQL holds no blob of, and no output here waits to send."""
        stored = await self._stored_among(connection, hashes)
        return [full_hash for full_hash in hashes if full_hash not in stored and not self._unwritten_hashes[full_hash]]

    async def _stored_among(self, connection: AsyncConnection, hashes: Sequence[str]) -> set[str]:
        blobs = self._t.blobs
        stored: set[str] = set()
        for start in range(0, len(hashes), _BATCH):
            batch = hashes[start : start + _BATCH]
            stored.update((await connection.execute(select(blobs.c.hash).where(blobs.c.hash.in_(batch)))).scalars())
        return stored

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
        if self._shared:
            return await self._store_shared(upload, record, idempotency_key=idempotency_key, limited=limited)
        blob = self._blob_path(upload.digest)
        placed = False
        try:
            async with self._writing() as connection:
                if idempotency_key is not None:
                    await self._claim(connection, idempotency_key)
                added = await connection.execute(self._insert_blob, _blob_row(record))
                created = added.rowcount == 1
                if created and limited and await self._over_limit(connection):
                    raise _storage_full()
                await connection.execute(self._t.assets.insert(), _row(record))
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

    async def _store_shared(
        self, upload: Upload, record: AssetRecord, *, idempotency_key: str | None, limited: bool
    ) -> bool:
        """`_store` in PostgreSQL: new bytes sent as pending chunks first, then, under the blob lock, the key
        claimed, the blob adopted (or found stored meanwhile) and the record inserted; once that commits, `upload`'s
        file becomes this server's cached copy of the blob. (Nothing but the private pending chunks is written before
        the lock: a row locked while waiting for it could deadlock with a sweep.)"""
        await self.flush_outputs()
        blobs = self._t.blobs
        async with self._begun(select(blobs.c.hash).where(blobs.c.hash == record.hash)) as (connection, found):
            pending: dict[str, str] = {}
            if found.first() is None:
                # Refused before the bytes are sent when they could not fit; checked again under the lock.
                if limited and await self._over_limit(connection, adding=record.size_bytes):
                    raise _storage_full()
                pending[record.hash] = asset_blobs.pending_key()
                await asset_blobs.write(connection, pending[record.hash], upload.path)
            await connection.execute(LOCK_BLOBS)
            if idempotency_key is not None:
                await self._claim(connection, idempotency_key)
            added = await self._adopt(connection, [record], pending, {record.hash: upload.path}, limited=limited)
            created = record.hash in added
            await connection.execute(self._t.assets.insert(), _row(record))
        blob = self._blob_path(upload.digest)
        if not await asyncio.to_thread(blob.exists):
            try:
                await asyncio.to_thread(_place, upload.path, blob)
            except OSError as exc:  # only a cache: the bytes are stored, and fetched when asked for
                logger.warning("an uploaded blob could not be cached", extra={"hash": record.hash, "reason": str(exc)})
        logger.debug(
            "asset stored",
            extra={"asset_id": record.id, "hash": record.hash, "size_bytes": record.size_bytes, "created_new": created},
        )
        return created

    async def _adopt(
        self,
        connection: AsyncConnection,
        records: Sequence[AssetRecord],
        pending: dict[str, str],
        sources: dict[str, Path],
        *,
        limited: bool,
    ) -> set[str]:
        """Under the blob lock: a blob for each record's hash that PostgreSQL does not hold, its chunks those sent
        under its `pending` key, else (it was stored when the transaction began, and deleted since) sent now from
        `sources`; pending chunks of blobs stored meanwhile are dropped. The hashes of the new blobs; past
        `disk_limit_bytes` when `limited`: 507 `storage_full`."""
        stored = await self._stored_among(connection, [record.hash for record in records])
        added = {record.hash: record for record in records if record.hash not in stored}
        if added:
            await connection.execute(self._insert_blob, [_blob_row(record) for record in added.values()])
            if limited and await self._over_limit(connection):
                raise _storage_full()
        for full_hash in added:
            key = pending.pop(full_hash, None)
            if key is not None:
                await asset_blobs.adopt(connection, key, full_hash)
            else:
                await asset_blobs.write(connection, full_hash, sources[full_hash])
        await asset_blobs.drop(connection, list(pending.values()))
        return set(added)

    async def _over_limit(self, connection: AsyncConnection, *, adding: int = 0) -> bool:
        """Whether the blobs stored, and `adding` bytes more, pass `disk_limit_bytes`."""
        if not self.disk_limit_bytes:
            return False
        total = select(func.coalesce(func.sum(self._t.blobs.c.size_bytes), 0))
        return int((await connection.execute(total)).scalar_one()) + adding > self.disk_limit_bytes

    async def _claim(self, connection: AsyncConnection, key: str) -> None:
        now = self._clock()
        keys = self._t.keys
        insert = self._insert(keys).values(key=key, created_at=now)
        claimed = await connection.execute(
            insert.on_conflict_do_update(
                index_elements=[keys.c.key],
                set_={"created_at": now},
                where=keys.c.created_at <= now - KEY_LIFETIME_MS,
            )
        )
        if claimed.rowcount == 0:
            raise _key_reused()

    async def _identical(
        self, connection: AsyncConnection, full_hash: str, file_path: str | None, tags: list[str]
    ) -> AssetRecord | None:
        assets = self._t.assets
        statement = (
            select(assets)
            .where(
                assets.c.hash == full_hash,
                assets.c.file_path.is_(None) if file_path is None else assets.c.file_path == file_path,
                assets.c.job_id.is_(None),
                self._unexpired(),
            )
            .order_by(assets.c.created_at)
        )
        rows = (await connection.execute(statement)).all()
        return next((_record(row) for row in rows if row.tags == tags), None)

    async def _extended(self, connection: AsyncConnection, record: AssetRecord, deadline: int | None) -> AssetRecord:
        if record.expires_at is None or (deadline is not None and deadline <= record.expires_at):
            return record
        assets = self._t.assets
        await connection.execute(update(assets).where(assets.c.id == record.id).values(expires_at=deadline))
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
        return or_(self._t.assets.c.expires_at.is_(None), self._t.assets.c.expires_at > self._clock())

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
        also against other processes on the same file. In PostgreSQL, the blob lock, which every transaction that
        changes the set of blobs takes, on every replica."""
        if self._shared:
            async with self._begun(LOCK_BLOBS) as (connection, _):
                yield connection
            return
        with self._converted():
            async with self._connected().begin() as connection:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection

    @contextlib.asynccontextmanager
    async def _begun(self, first: Executable) -> AsyncIterator[tuple[AsyncConnection, Result[Any]]]:
        """A PostgreSQL transaction that ran `first`, and its result. A pooled connection that a database restart
        broke fails that first statement: it runs once more on a new connection (nothing else has run yet), so the
        store works again as soon as the database does (as the job store's `_run`)."""
        with self._converted():
            for last in (False, True):
                connection = await self._connected().connect()
                try:
                    result = await connection.execute(first)
                    break
                except DBAPIError as exc:
                    await connection.close()
                    if last or not exc.connection_invalidated:
                        raise
                except BaseException:
                    await connection.close()
                    raise
            try:
                yield connection, result
                await connection.commit()
            finally:
                await asyncio.shield(connection.close())  # rolls back what was not committed

    async def _read(self, statement: Executable) -> Row[Any] | None:
        """The first row `statement` reads, if any."""
        if self._shared:
            async with self._begun(statement) as (_, result):
                return result.first()
        with self._converted():
            async with self._connected().connect() as connection:
                return (await connection.execute(statement)).first()

    def _converted(self) -> contextlib.AbstractContextManager[None]:
        return converted_shared(self._where) if self._shared else converted("asset store", self.path)

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
