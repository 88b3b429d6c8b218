"""Comfy API v2's assets shared by the fleet (AssetStore with `shared_url`) on a real PostgreSQL: two stores with
folders of their own over one database stand for two replicas. What one uploads, outputs or deletes, the other
reads, fetches into its own folder, stages and serves (or no longer serves); Idempotency-Keys and the disk limit
are the fleet's; sweeps clean PostgreSQL and each replica's cached copies; large blobs travel in chunks; a
corrupted chunk is refused and never cached; a database that does not answer is an error, not a hang."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from blake3 import blake3

from comfyui_api.errors import ConfigError, JobStoreError, V2Error
from comfyui_api.v2.asset_blobs import CHUNK_BYTES
from comfyui_api.v2.asset_schema import SHARED_SCHEMA_VERSION
from comfyui_api.v2.assets import AssetRecord, AssetStore
from tests.support.postgres import query, with_database
from tests.support.server import closed_port
from tests.unit.test_asset_store import (
    DATA,
    HOUR_MS,
    OTHER,
    Clock,
    blob_files,
    digest,
    temporary_files,
    upload,
)
from tests.unit.test_v2_asset_routes import app_over, assert_envelope, post_upload

TABLES = "assets, asset_blobs, asset_upload_keys, asset_chunks, asset_schema"
MIB = 1024 * 1024

MakeReplica = Callable[..., Awaitable[AssetStore]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[str]:
    """This session's database, without asset tables before and after each test."""
    await query(database_url, f"DROP TABLE IF EXISTS {TABLES}")
    yield database_url
    await asyncio.wait_for(query(database_url, f"DROP TABLE IF EXISTS {TABLES}"), 10)


@pytest.fixture
async def make_replica(database: str, tmp_path: Path, clock: Clock) -> AsyncIterator[MakeReplica]:
    opened: list[AssetStore] = []

    async def make(name: str, *, disk_limit_bytes: int = 0, max_upload_bytes: int = 64 * MIB) -> AssetStore:
        store = AssetStore(
            tmp_path / name,
            retention_s=3600,
            max_upload_bytes=max_upload_bytes,
            disk_limit_bytes=disk_limit_bytes,
            clock=clock,
            shared_url=database,
        )
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def a(make_replica: MakeReplica) -> AssetStore:
    return await make_replica("a")


@pytest.fixture
async def b(make_replica: MakeReplica) -> AssetStore:
    return await make_replica("b")


async def chunk_rows(database: str, record: AssetRecord) -> list[int]:
    """The sizes of the record's chunks in PostgreSQL, in order."""
    rows = await query(
        database, "SELECT length(data) AS size FROM asset_chunks WHERE hash = $1 ORDER BY seq", record.hash
    )
    return [row["size"] for row in rows]


async def pending_chunks(database: str) -> int:
    return len(await query(database, "SELECT 1 FROM asset_chunks WHERE hash NOT LIKE 'blake3:%'"))


async def output(store: AssetStore, folder: Path, data: bytes, name: str = "out.png") -> AssetRecord:
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return await store.add_output(
        folder / name, job_id="job", file_path=name, content_type="image/png", expires_at=None
    )


async def test_an_upload_on_one_replica_is_read_fetched_and_staged_on_another(
    a: AssetStore, b: AssetStore, database: str, tmp_path: Path
) -> None:
    record, created = await upload(a)
    assert created
    assert await chunk_rows(database, record) == [len(DATA)]

    assert await b.get(record.id) == record
    assert await b.has_blob(record.hash)
    assert blob_files(b) == []
    fetched = await b.local_content(record)
    assert fetched == b.blobs / record.digest[:2] / record.digest
    assert fetched.read_bytes() == DATA
    assert blob_files(b) == [fetched]
    assert temporary_files(b) == []

    staged = await b.stage(record, tmp_path / "input", "photo-1.png")
    assert staged.read_bytes() == DATA
    assert not staged.is_symlink()


async def test_concurrent_fetches_of_one_blob_leave_one_good_copy(a: AssetStore, b: AssetStore) -> None:
    record, _ = await upload(a, os.urandom(3 * MIB))
    other = await b.get(record.id)
    assert other is not None

    paths = await asyncio.gather(*(b.local_content(other) for _ in range(5)))

    assert len(set(paths)) == 1
    assert blake3(paths[0].read_bytes()).hexdigest() == record.digest
    assert blob_files(b) == [paths[0]]
    assert temporary_files(b) == []


async def test_an_output_flushed_on_one_replica_is_readable_on_another(
    a: AssetStore, b: AssetStore, database: str, tmp_path: Path
) -> None:
    record = await output(a, tmp_path / "output", OTHER)
    # Written behind: the replica that made it answers it at once, the others once it is flushed.
    assert await a.get(record.id) == record
    assert await b.get(record.id) is None

    await a.flush_outputs()

    assert await chunk_rows(database, record) == [len(OTHER)]
    assert await b.get(record.id) == record
    assert (await b.local_content(record)).read_bytes() == OTHER
    with pytest.raises(V2Error) as raised:
        await b.delete(record.id)
    assert raised.value.code == "asset_in_use"


async def test_outputs_of_known_and_new_bytes_are_flushed_together(
    a: AssetStore, b: AssetStore, database: str, tmp_path: Path
) -> None:
    uploaded, _ = await upload(b, DATA)
    known = await output(a, tmp_path / "output", DATA, "known.png")
    new = await output(a, tmp_path / "output", OTHER, "new.png")
    again = await output(a, tmp_path / "output", OTHER, "again.png")

    await a.flush_outputs()

    assert await chunk_rows(database, uploaded) == [len(DATA)]
    assert await chunk_rows(database, new) == [len(OTHER)]
    assert await pending_chunks(database) == 0
    for record in (known, new, again):
        assert await b.get(record.id) == record


async def test_a_delete_on_one_replica_is_seen_by_every_replica(a: AssetStore, b: AssetStore, database: str) -> None:
    transport_a = httpx.ASGITransport(app=app_over(a))
    transport_b = httpx.ASGITransport(app=app_over(b))
    async with (
        httpx.AsyncClient(transport=transport_a, base_url="http://a") as client_a,
        httpx.AsyncClient(transport=transport_b, base_url="http://b") as client_b,
    ):
        uploaded = await post_upload(client_b, DATA)
        assert uploaded.status_code == 201, uploaded.text
        asset_id = uploaded.json()["id"]
        served = await client_a.get(f"/api/v2/assets/{asset_id}/content")
        assert served.status_code == 200
        assert served.content == DATA
        assert len(blob_files(a)) == 1  # A's cached copy

        assert (await client_b.delete(f"/api/v2/assets/{asset_id}")).status_code == 204

        assert await a.get(asset_id) is None
        assert_envelope(await client_a.get(f"/api/v2/assets/{asset_id}"), 404, "not_found")
        assert_envelope(await client_a.get(f"/api/v2/assets/{asset_id}/content"), 404, "not_found")
        assert_envelope(await client_a.delete(f"/api/v2/assets/{asset_id}"), 404, "not_found")
    assert await query(database, "SELECT hash FROM asset_chunks") == []
    assert not await a.has_blob(digest(DATA))

    await a.sweep()
    assert blob_files(a) == []


async def test_a_record_deleted_while_its_bytes_are_fetched_is_not_found(
    a: AssetStore, b: AssetStore, database: str
) -> None:
    record, _ = await upload(a)
    seen = await b.get(record.id)
    assert seen is not None
    assert await a.delete(record.id)

    with pytest.raises(V2Error) as raised:
        await b.local_content(seen)

    assert (raised.value.code, raised.value.status_code) == ("not_found", 404)
    assert blob_files(b) == []
    assert temporary_files(b) == []


async def test_an_idempotency_key_used_on_one_replica_is_refused_on_another(a: AssetStore, b: AssetStore) -> None:
    await upload(a, idempotency_key="key-1")

    with pytest.raises(V2Error) as checked:
        await b.check_idempotency_key("key-1")
    assert (checked.value.code, checked.value.status_code) == ("idempotency_key_reuse", 422)
    with pytest.raises(V2Error) as reused:
        await upload(b, OTHER, idempotency_key="key-1")
    assert (reused.value.code, reused.value.status_code) == ("idempotency_key_reuse", 422)
    assert not await b.has_blob(digest(OTHER))
    await b.check_idempotency_key("key-2")


async def test_one_key_sent_to_two_replicas_at_once_is_taken_once(a: AssetStore, b: AssetStore) -> None:
    outcomes = await asyncio.gather(
        upload(a, DATA, idempotency_key="twice"), upload(b, OTHER, idempotency_key="twice"), return_exceptions=True
    )

    refused = [outcome for outcome in outcomes if isinstance(outcome, V2Error)]
    assert len(refused) == 1
    assert refused[0].code == "idempotency_key_reuse"


async def test_the_same_bytes_uploaded_to_two_replicas_at_once_are_stored_once(
    a: AssetStore, b: AssetStore, database: str
) -> None:
    data = os.urandom(2 * MIB + 17)

    (first, first_new), (second, second_new) = await asyncio.gather(upload(a, data), upload(b, data))

    assert sorted([first_new, second_new]) == [False, True]
    assert first.hash == second.hash
    assert await chunk_rows(database, first) == [MIB, MIB, 17]
    assert await pending_chunks(database) == 0


async def test_mint_from_hash_and_has_blob_reach_bytes_another_replica_stored(a: AssetStore, b: AssetStore) -> None:
    uploaded, _ = await upload(a)
    assert await b.has_blob(uploaded.hash)
    assert not await b.has_blob(digest(OTHER))

    minted, created = await b.mint_from_hash(uploaded.hash, file_path="copy.png", tags=[], expires_in_s=600)

    assert created
    assert await a.get(minted.id) == minted
    identical, created = await a.mint_from_hash(uploaded.hash, file_path="copy.png", tags=[], expires_in_s=600)
    assert (identical.id, created) == (minted.id, False)
    with pytest.raises(V2Error) as raised:
        await b.mint_from_hash(digest(OTHER), file_path=None, tags=[], expires_in_s=None)
    assert raised.value.code == "blob_not_found"


async def test_the_disk_limit_bounds_the_fleets_store(make_replica: MakeReplica, database: str) -> None:
    limit = len(DATA) + len(OTHER) // 2
    a = await make_replica("a", disk_limit_bytes=limit)
    b = await make_replica("b", disk_limit_bytes=limit)
    await upload(a, DATA)

    with pytest.raises(V2Error) as raised:
        await upload(b, OTHER)

    assert (raised.value.code, raised.value.status_code) == ("storage_full", 507)
    assert not await a.has_blob(digest(OTHER))
    assert await pending_chunks(database) == 0
    assert temporary_files(b) == []
    _, created_new = await upload(b, DATA)  # bytes the fleet holds take no more room
    assert not created_new


async def test_sweeps_clean_postgresql_and_each_replicas_cached_copies(
    a: AssetStore, b: AssetStore, database: str, clock: Clock
) -> None:
    short, _ = await upload(a, DATA, expires_in_s=60)
    long, _ = await upload(a, OTHER, expires_in_s=86400)
    short_copy = await b.local_content(short)
    long_copy = await b.local_content(long)
    clock.now += 61_000

    assert await b.get(short.id) is None
    assert await a.sweep() == 1

    assert await chunk_rows(database, short) == []
    assert await query(database, "SELECT hash FROM asset_blobs WHERE hash = $1", short.hash) == []
    assert await chunk_rows(database, long) == [len(OTHER)]
    assert blob_files(a) == [a.blobs / long.digest[:2] / long.digest]
    assert short_copy.exists()  # B's copy, until B's sweep

    assert await b.sweep() == 0
    assert not short_copy.exists()
    assert long_copy.read_bytes() == OTHER
    assert blob_files(b) == [long_copy]


async def test_replicas_sweeping_at_once_are_safe(make_replica: MakeReplica, database: str, clock: Clock) -> None:
    replicas = [await make_replica(name) for name in ("a", "b", "c")]
    for index, replica in enumerate(replicas):
        await upload(replica, DATA + bytes([index]), expires_in_s=60)
    kept, _ = await upload(replicas[0], OTHER, expires_in_s=86400)
    clock.now += 61_000

    swept = await asyncio.gather(*(replica.sweep() for replica in replicas))

    assert sum(swept) == 3
    assert [row["hash"] for row in await query(database, "SELECT hash FROM asset_blobs")] == [kept.hash]
    assert {row["hash"] for row in await query(database, "SELECT hash FROM asset_chunks")} == {kept.hash}
    for replica in replicas:
        assert await replica.get(kept.id) == kept


async def test_expired_upload_keys_are_swept_fleet_wide(
    a: AssetStore, b: AssetStore, database: str, clock: Clock
) -> None:
    await upload(a, idempotency_key="old")
    clock.now += 24 * HOUR_MS + 1

    await b.sweep()

    assert await query(database, "SELECT key FROM asset_upload_keys") == []
    await upload(b, OTHER, idempotency_key="old")


async def test_a_large_file_round_trips_in_chunks(a: AssetStore, b: AssetStore, database: str) -> None:
    data = os.urandom(5 * MIB + 123)

    record, _ = await upload(a, data)

    assert record.hash == digest(data)
    assert await chunk_rows(database, record) == [CHUNK_BYTES] * 5 + [123]
    fetched = await b.local_content(record)
    assert blake3(fetched.read_bytes()).hexdigest() == record.digest


async def test_a_corrupted_chunk_is_refused_and_never_cached(a: AssetStore, b: AssetStore, database: str) -> None:
    record, _ = await upload(a, os.urandom(2 * MIB + 5))
    await query(
        database,
        "UPDATE asset_chunks SET data = overlay(data placing '\\x00'::bytea from 1000) WHERE hash = $1 AND seq = 1",
        record.hash,
    )

    with pytest.raises(JobStoreError, match="do not match their hash"):
        await b.local_content(record)

    assert blob_files(b) == []
    assert temporary_files(b) == []


async def test_two_replicas_opening_a_new_database_create_its_tables_once(
    database: str, tmp_path: Path, clock: Clock
) -> None:
    stores = [
        AssetStore(tmp_path / f"r{n}", retention_s=60, max_upload_bytes=MIB, disk_limit_bytes=0, shared_url=database)
        for n in range(4)
    ]

    await asyncio.gather(*(store.open() for store in stores))

    for store in stores:
        await store.close()
    assert [row["version"] for row in await query(database, "SELECT version FROM asset_schema")] == [
        SHARED_SCHEMA_VERSION
    ]


async def test_a_database_of_a_newer_asset_schema_is_refused(a: AssetStore, database: str, tmp_path: Path) -> None:
    await query(database, "UPDATE asset_schema SET version = $1", SHARED_SCHEMA_VERSION + 1)
    store = AssetStore(tmp_path / "new", retention_s=60, max_upload_bytes=MIB, disk_limit_bytes=0, shared_url=database)

    with pytest.raises(ConfigError, match=rf"JOB_STORE_URL: .* schema version {SHARED_SCHEMA_VERSION + 1}"):
        await store.open()


async def test_connections_the_database_ended_are_replaced_without_an_error(
    a: AssetStore, b: AssetStore, database: str
) -> None:
    record, _ = await upload(a)
    assert await b.get(record.id) == record
    # As a database restart does: every connection of the replicas' pools ends.
    await query(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()",
    )

    assert (await b.local_content(record)).read_bytes() == DATA  # a fetch's first statement, too
    assert await b.get(record.id) == record
    again, created_new = await upload(a)
    assert not created_new
    assert await b.delete(again.id)


async def test_a_database_that_does_not_answer_is_an_error_not_a_hang(tmp_path: Path) -> None:
    url = f"postgresql://assets:hunter2@127.0.0.1:{closed_port()}/assets"
    store = AssetStore(tmp_path / "assets", retention_s=60, max_upload_bytes=MIB, disk_limit_bytes=0, shared_url=url)
    began = time.monotonic()

    with pytest.raises(ConfigError, match="JOB_STORE_URL: cannot open the asset store") as refused:
        await store.open()

    assert time.monotonic() - began < 10
    assert "hunter2" not in str(refused.value)


async def test_a_database_gone_after_startup_is_a_job_store_error(database_server: str, tmp_path: Path) -> None:
    name = f"comfyui_api_test_assets_{secrets.token_hex(4)}"
    await query(database_server, f'CREATE DATABASE "{name}"')
    store = AssetStore(
        tmp_path / "assets",
        retention_s=60,
        max_upload_bytes=MIB,
        disk_limit_bytes=0,
        shared_url=with_database(database_server, name),
    )
    await store.open()
    try:
        record, _ = await upload(store)
        await query(database_server, f'DROP DATABASE "{name}" WITH (FORCE)')
        began = time.monotonic()

        with pytest.raises(JobStoreError, match="asset store"):
            await store.get(record.id)
        with pytest.raises(JobStoreError, match="asset store"):
            await upload(store, OTHER)
        with pytest.raises(JobStoreError, match="asset store"):
            await store.sweep()

        assert time.monotonic() - began < 30
        assert temporary_files(store) == []
    finally:
        await store.close()
        await query(database_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
