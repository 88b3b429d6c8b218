"""The bytes of Comfy API v2's assets in the fleet's PostgreSQL (the shared mode of v2/assets.py): each blob as rows
of `asset_chunks`, (hash, seq, data), of at most CHUNK_BYTES each, numbered from 0. They are written and read one
chunk at a time, so neither end of a transfer holds a whole file in memory, however large.

New bytes are written under a key of their own (`pending_key()`), inside the transaction that will reference them
and before it takes the store's lock: a large upload streams without holding every other replica's writes up, and
no other transaction sees its rows until `adopt` gives them their hash, under the lock, in that same transaction.
A transaction that ends without adopting them takes them with it, so nothing is left behind by a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3
from sqlalchemy import Executable, Result, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .asset_schema import chunks_table

# A row small enough to pass through memory at no cost, large enough that a gigabyte is a thousand statements.
CHUNK_BYTES = 1024 * 1024
# Keys per statement that deletes the chunks of many blobs.
_BATCH = 1000

# The asset store's `_begun`: a transaction whose first statement is the one given, and that statement's result.
Begun = Callable[[Executable], contextlib.AbstractAsyncContextManager[tuple[AsyncConnection, Result[Any]]]]


def pending_key() -> str:
    """A key no hash can be, for bytes written before they are adopted."""
    return f"pending:{uuid.uuid4().hex}"


async def write(connection: AsyncConnection, key: str, path: Path) -> None:
    """The bytes of the file at `path` as the chunks of `key`."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        seq = 0
        while data := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            await connection.execute(chunks_table.insert(), {"hash": key, "seq": seq, "data": data})
            seq += 1
    finally:
        await asyncio.to_thread(handle.close)


async def adopt(connection: AsyncConnection, key: str, hash: str) -> None:
    """The chunks written under the pending `key` become those of the blob `hash`."""
    await connection.execute(update(chunks_table).where(chunks_table.c.hash == key).values(hash=hash))


async def drop(connection: AsyncConnection, keys: Sequence[str]) -> None:
    """Delete the chunks of these hashes or pending keys."""
    for start in range(0, len(keys), _BATCH):
        await connection.execute(delete(chunks_table).where(chunks_table.c.hash.in_(keys[start : start + _BATCH])))


async def fetch(begun: Begun, hash: str, size_bytes: int, temporary: Path, destination: Path) -> bool:
    """The blob `hash`'s chunks written to `temporary` as they arrive, hashed, and renamed to `destination` if they
    are `size_bytes` bytes of that hash: whether they were (False: a part is missing, or they are other bytes).
    `temporary` is gone either way, so a concurrent fetch of the same blob, with a temporary of its own, only ever
    renames identical bytes over these. `begun(statement)` is the store's transaction that starts with `statement`
    (and converts the database's errors)."""
    digest = hash.removeprefix("blake3:")
    hasher = blake3()
    size = 0
    try:
        handle = await asyncio.to_thread(temporary.open, "xb")
        try:
            async with contextlib.aclosing(_read(begun, hash)) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > size_bytes:
                        return False
                    await asyncio.to_thread(_write, handle, hasher, chunk)
        finally:
            await asyncio.to_thread(handle.close)
        if size != size_bytes or hasher.hexdigest() != digest:
            return False
        await asyncio.to_thread(_rename, temporary, destination)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(temporary.unlink)


def _write(handle: BinaryIO, hasher: blake3, chunk: bytes) -> None:
    hasher.update(chunk)
    handle.write(chunk)


def _rename(temporary: Path, destination: Path) -> None:
    destination.parent.mkdir(exist_ok=True)
    temporary.replace(destination)


async def _read(begun: Begun, hash: str) -> AsyncIterator[bytes]:
    """The chunks of `hash` in order, each read by a statement of its own, until one is missing. (The consumer's own
    errors, raised outside this generator, never reach `begun`'s conversion.)"""
    statement = select(chunks_table.c.data).where(chunks_table.c.hash == hash, chunks_table.c.seq == bindparam("seq"))
    async with begun(statement.params(seq=0)) as (connection, first):
        data = first.scalar()
        seq = 0
        while data is not None:
            yield data
            seq += 1
            data = (await connection.execute(statement, {"seq": seq})).scalar()
