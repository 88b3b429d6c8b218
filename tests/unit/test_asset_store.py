"""The asset store on a real SQLite file and real blobs: uploads stored once per blake3 hash, a wrong expected_hash,
an upload too large or past the disk limit leaving nothing behind, minting from a hash (new, missing, identical),
deletion sparing shared blobs and refusing job outputs, expiry and the sweep, Idempotency-Keys, job outputs
hard-linked in, staging as a regular file, and a reopened or foreign file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from comfyui_api.errors import ConfigError, V2Error
from comfyui_api.jobstore.records import now_ms
from comfyui_api.v2.assets import KEY_LIFETIME_MS, SCHEMA_VERSION, SMALL_FILE_BYTES, AssetRecord, AssetStore

HOUR_MS = 3_600_000
DATA = b"the bytes of an image " * 1000
OTHER = b"the bytes of another image " * 1000


class Clock:
    """Milliseconds since the epoch, moved by the test. It starts at the real time, so that files written now are
    as old as the store thinks."""

    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


MakeStore = Callable[..., Awaitable[AssetStore]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_store(tmp_path: Path, clock: Clock) -> AsyncIterator[MakeStore]:
    opened: list[AssetStore] = []

    async def make(
        *, retention_s: float | None = 3600, max_upload_bytes: int = 10_000_000, disk_limit_bytes: int = 0
    ) -> AssetStore:
        store = AssetStore(
            tmp_path / "assets",
            retention_s=retention_s,
            max_upload_bytes=max_upload_bytes,
            disk_limit_bytes=disk_limit_bytes,
            clock=clock,
        )
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> AssetStore:
    return await make_store()


def digest(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


async def chunks_of(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def upload(
    store: AssetStore,
    data: bytes = DATA,
    *,
    file_path: str | None = "photo.png",
    tags: Iterable[str] = ("input",),
    expected_hash: str | None = None,
    expires_in_s: int | None = None,
    idempotency_key: str | None = None,
) -> tuple[AssetRecord, bool]:
    return await store.ingest(
        chunks_of(data),
        content_type="image/png",
        file_path=file_path,
        tags=list(tags),
        expected_hash=expected_hash,
        expires_in_s=expires_in_s,
        idempotency_key=idempotency_key,
    )


def blob_files(store: AssetStore) -> list[Path]:
    return sorted(path for path in store.blobs.rglob("*") if path.is_file() and path.parent.name != "tmp")


def temporary_files(store: AssetStore) -> list[Path]:
    return list((store.blobs / "tmp").iterdir())


async def test_an_upload_is_stored_under_its_blake3_hash(store: AssetStore, clock: Clock) -> None:
    record, created_new = await upload(store, expires_in_s=None)

    assert created_new
    hex_digest = blake3(DATA).hexdigest()
    assert record.hash == f"blake3:{hex_digest}"
    assert (record.size_bytes, record.content_type, record.file_path, record.tags) == (
        len(DATA),
        "image/png",
        "photo.png",
        ["input"],
    )
    assert (record.created_at, record.expires_at, record.job_id) == (clock.now, clock.now + HOUR_MS, None)
    assert await store.local_content(record) == store.blobs / hex_digest[:2] / hex_digest
    assert (await store.local_content(record)).read_bytes() == DATA
    assert blob_files(store) == [await store.local_content(record)]
    assert temporary_files(store) == []
    assert await store.get(record.id) == record
    assert await store.has_blob(record.hash)


async def test_the_same_bytes_uploaded_twice_are_stored_once(store: AssetStore) -> None:
    first, first_new = await upload(store, file_path="a.png")
    second, second_new = await upload(store, file_path="b.png")

    assert (first_new, second_new) == (True, False)
    assert first.id != second.id
    assert first.hash == second.hash
    assert blob_files(store) == [await store.local_content(first)]
    assert temporary_files(store) == []
    assert (await store.get(second.id)) == second


async def test_an_expected_hash_is_checked_case_aside(store: AssetStore) -> None:
    record, _ = await upload(store, expected_hash=digest(DATA).upper().replace("BLAKE3", "blake3"))

    assert record.hash == digest(DATA)


async def test_an_expected_hash_that_does_not_match_mints_nothing_and_leaves_no_file(store: AssetStore) -> None:
    with pytest.raises(V2Error) as raised:
        await upload(store, expected_hash=digest(OTHER))

    assert (raised.value.code, raised.value.status_code) == ("hash_mismatch", 409)
    assert raised.value.details == {"expected_hash": digest(OTHER), "hash": digest(DATA)}
    assert not await store.has_blob(digest(DATA))
    assert blob_files(store) == []
    assert temporary_files(store) == []


async def test_an_upload_over_max_upload_bytes_is_refused_as_it_streams(make_store: MakeStore) -> None:
    store = await make_store(max_upload_bytes=10_000)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 4096
            yield b"x" * 4096

    with pytest.raises(V2Error) as raised:
        await store.ingest(
            endless(), content_type="text/plain", file_path=None, tags=[], expected_hash=None, expires_in_s=None
        )

    assert (raised.value.code, raised.value.status_code) == ("payload_too_large", 413)
    assert sent == 3 * 4096  # refused at the first chunk past the limit
    assert blob_files(store) == []
    assert temporary_files(store) == []


async def test_an_upload_of_exactly_max_upload_bytes_is_taken(make_store: MakeStore) -> None:
    store = await make_store(max_upload_bytes=len(DATA))

    record, _ = await upload(store)

    assert record.size_bytes == len(DATA)


async def test_new_bytes_past_the_disk_limit_are_refused_but_known_bytes_and_outputs_are_not(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = await make_store(disk_limit_bytes=len(DATA) + len(OTHER) // 2)
    await upload(store)

    with pytest.raises(V2Error) as raised:
        await upload(store, OTHER)
    assert (raised.value.code, raised.value.status_code) == ("storage_full", 507)
    assert not await store.has_blob(digest(OTHER))
    assert temporary_files(store) == []

    _, created_new = await upload(store)  # the same bytes again take no room
    assert not created_new
    output = tmp_path / "out.png"
    output.write_bytes(OTHER)
    record = await store.add_output(
        output, job_id="job", file_path="out.png", content_type="image/png", expires_at=None
    )
    assert (await store.local_content(record)).read_bytes() == OTHER


async def test_mint_from_hash_makes_a_new_record_over_stored_bytes(store: AssetStore, clock: Clock) -> None:
    uploaded, _ = await upload(store, tags=["input"])
    clock.now += 1000

    minted, created = await store.mint_from_hash(
        uploaded.hash.upper().replace("BLAKE3", "blake3"), file_path="copy.png", tags=[], expires_in_s=600
    )

    assert created
    assert minted.id != uploaded.id
    assert (minted.hash, minted.size_bytes, minted.content_type) == (uploaded.hash, len(DATA), "image/png")
    assert (minted.file_path, minted.tags, minted.job_id) == ("copy.png", [], None)
    assert (minted.created_at, minted.expires_at) == (clock.now, clock.now + 600_000)
    assert await store.get(minted.id) == minted
    assert len(blob_files(store)) == 1


@pytest.mark.parametrize("hash", [digest(OTHER), "blake3:1234", "sha256:" + "0" * 64, "nonsense"])
async def test_mint_from_hash_without_those_bytes_is_blob_not_found(store: AssetStore, hash: str) -> None:
    await upload(store)

    with pytest.raises(V2Error) as raised:
        await store.mint_from_hash(hash, file_path="x.png", tags=[], expires_in_s=None)

    assert (raised.value.code, raised.value.status_code) == ("blob_not_found", 404)
    assert not await store.has_blob(hash)


async def test_an_identical_reference_is_returned_with_its_expiry_extended_never_shortened(
    store: AssetStore, clock: Clock
) -> None:
    uploaded, _ = await upload(store, file_path="photo.png", tags=["input"])

    shorter, created = await store.mint_from_hash(uploaded.hash, file_path="photo.png", tags=["input"], expires_in_s=60)
    assert not created
    assert shorter == uploaded

    longer, created = await store.mint_from_hash(
        uploaded.hash, file_path="photo.png", tags=["input"], expires_in_s=86400
    )
    assert not created
    assert longer.id == uploaded.id
    assert longer.expires_at == clock.now + 86_400_000
    assert await store.get(uploaded.id) == longer


async def test_a_reference_differing_in_path_tags_or_origin_is_not_identical(store: AssetStore, tmp_path: Path) -> None:
    uploaded, _ = await upload(store, file_path="photo.png", tags=["input"])
    output = tmp_path / "photo.png"
    output.write_bytes(OTHER)
    produced = await store.add_output(
        output, job_id="job", file_path="photo.png", content_type="image/png", expires_at=None
    )

    for hash, file_path, tags in [
        (uploaded.hash, "other.png", ["input"]),
        (uploaded.hash, "photo.png", ["input", "more"]),
        (uploaded.hash, None, ["input"]),
        (produced.hash, "photo.png", []),  # a job's output is not an upload's reference
    ]:
        minted, created = await store.mint_from_hash(hash, file_path=file_path, tags=tags, expires_in_s=None)
        assert created
        assert minted.id not in (uploaded.id, produced.id)


async def test_deleting_a_record_keeps_a_shared_blob_and_removes_the_last_one(store: AssetStore) -> None:
    first, _ = await upload(store, file_path="a.png")
    second, _ = await upload(store, file_path="b.png")
    blob = await store.local_content(first)

    assert await store.delete(first.id)
    assert await store.get(first.id) is None
    assert blob.read_bytes() == DATA
    assert await store.get(second.id) == second

    assert await store.delete(second.id)
    assert not blob.exists()
    assert not await store.has_blob(first.hash)
    assert not await store.delete(second.id)
    assert not await store.delete("no-such-id")


async def test_a_deleted_blob_can_be_uploaded_again(store: AssetStore) -> None:
    first, _ = await upload(store)
    await store.delete(first.id)

    again, created_new = await upload(store)

    assert created_new
    assert (await store.local_content(again)).read_bytes() == DATA


async def test_a_job_output_cannot_be_deleted(store: AssetStore, tmp_path: Path) -> None:
    output = tmp_path / "out.png"
    output.write_bytes(DATA)
    record = await store.add_output(
        output, job_id="job", file_path="out.png", content_type="image/png", expires_at=None
    )

    with pytest.raises(V2Error) as raised:
        await store.delete(record.id)

    assert (raised.value.code, raised.value.status_code) == ("asset_in_use", 409)
    assert await store.get(record.id) == record
    assert (await store.local_content(record)).exists()


async def test_expired_records_are_invisible_and_the_sweep_deletes_them_with_their_blobs(
    store: AssetStore, clock: Clock
) -> None:
    short, _ = await upload(store, DATA, expires_in_s=60)
    long, _ = await upload(store, OTHER, expires_in_s=86400)
    clock.now += 61_000

    assert await store.get(short.id) is None
    assert (await store.local_content(short)).exists()  # until the sweep

    assert await store.sweep() == 1

    assert not (await store.local_content(short)).exists()
    assert not await store.has_blob(short.hash)
    assert await store.get(long.id) == long
    assert (await store.local_content(long)).read_bytes() == OTHER
    assert await store.sweep() == 0


async def test_referencing_bytes_again_extends_their_life_and_never_shortens_it(
    store: AssetStore, clock: Clock
) -> None:
    long, _ = await upload(store, file_path="a.png", expires_in_s=86400)
    short, _ = await upload(store, file_path="b.png", expires_in_s=60)
    clock.now += 120_000

    await store.sweep()

    assert await store.get(short.id) is None
    assert (await store.local_content(long)).read_bytes() == DATA

    clock.now += 86_400_000
    await store.sweep()
    assert blob_files(store) == []


async def test_without_a_retention_uploads_are_kept_until_deleted(make_store: MakeStore, clock: Clock) -> None:
    store = await make_store(retention_s=None)
    kept, _ = await upload(store)
    limited, _ = await upload(store, OTHER, expires_in_s=60)

    assert kept.expires_at is None
    assert limited.expires_at == clock.now + 60_000
    clock.now += 365 * 24 * HOUR_MS
    await store.sweep()
    assert await store.get(kept.id) == kept
    assert await store.get(limited.id) is None


async def test_the_sweep_removes_temporary_files_older_than_an_hour(store: AssetStore, clock: Clock) -> None:
    stale = store.blobs / "tmp" / "left-by-a-crash.part"
    stale.write_bytes(b"partial")

    await store.sweep()
    assert stale.exists()

    clock.now += HOUR_MS + 60_000
    await store.sweep()
    assert not stale.exists()


async def test_an_idempotency_key_is_single_use_for_24_hours(store: AssetStore, clock: Clock) -> None:
    await upload(store, idempotency_key="key-1")

    await store.check_idempotency_key("key-2")
    with pytest.raises(V2Error) as checked:
        await store.check_idempotency_key("key-1")
    assert (checked.value.code, checked.value.status_code) == ("idempotency_key_reuse", 422)
    with pytest.raises(V2Error) as reused:
        await upload(store, OTHER, idempotency_key="key-1")
    assert reused.value.code == "idempotency_key_reuse"
    assert not await store.has_blob(digest(OTHER))
    assert temporary_files(store) == []

    clock.now += KEY_LIFETIME_MS + 1
    await store.check_idempotency_key("key-1")
    _, created_new = await upload(store, OTHER, idempotency_key="key-1")
    assert created_new


async def test_a_refused_upload_does_not_use_up_its_idempotency_key(store: AssetStore) -> None:
    with pytest.raises(V2Error):
        await upload(store, expected_hash=digest(OTHER), idempotency_key="key")

    record, _ = await upload(store, idempotency_key="key")

    assert record.hash == digest(DATA)


async def test_a_job_output_is_hard_linked_in_and_deduplicated(store: AssetStore, tmp_path: Path) -> None:
    output = tmp_path / "output" / "ComfyUI_00001_.png"
    output.parent.mkdir()
    output.write_bytes(DATA)

    record = await store.add_output(
        output, job_id="job-1", file_path="ComfyUI_00001_.png", content_type="image/png", expires_at=12345
    )

    assert (record.hash, record.size_bytes, record.job_id, record.expires_at) == (
        digest(DATA),
        len(DATA),
        "job-1",
        12345,
    )
    blob = await store.local_content(record)
    assert blob.stat().st_ino == output.stat().st_ino
    assert output.read_bytes() == DATA  # left where it was

    again = tmp_path / "output" / "ComfyUI_00002_.png"
    again.write_bytes(DATA)
    second = await store.add_output(
        again, job_id="job-2", file_path="ComfyUI_00002_.png", content_type="image/png", expires_at=None
    )
    assert second.id != record.id
    assert await store.local_content(second) == blob
    assert blob.stat().st_ino == output.stat().st_ino
    assert blob_files(store) == [blob]
    assert temporary_files(store) == []


async def test_an_output_outlives_the_file_it_came_from(store: AssetStore, tmp_path: Path) -> None:
    output = tmp_path / "out.png"
    output.write_bytes(DATA)
    record = await store.add_output(
        output, job_id="job", file_path="out.png", content_type="image/png", expires_at=None
    )

    output.unlink()

    assert (await store.local_content(record)).read_bytes() == DATA


async def test_staging_places_a_regular_file_with_the_same_bytes(store: AssetStore, tmp_path: Path) -> None:
    record, _ = await upload(store)
    inputs = tmp_path / "input"

    staged = await store.stage(record, inputs, "photo-1.png")

    assert staged == inputs / "photo-1.png"
    assert not staged.is_symlink()
    assert staged.is_file()
    assert staged.read_bytes() == DATA
    staged.unlink()
    assert (await store.local_content(record)).read_bytes() == DATA


async def test_a_reopened_store_keeps_its_records(make_store: MakeStore) -> None:
    first = await make_store()
    record, _ = await upload(first)
    await first.close()

    reopened = await make_store()

    assert await reopened.get(record.id) == record
    _, created_new = await upload(reopened)
    assert not created_new


async def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "assets"
    folder.mkdir()
    with sqlite3.connect(folder / "assets.db") as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = AssetStore(folder, retention_s=60, max_upload_bytes=10, disk_limit_bytes=0)

    with pytest.raises(ConfigError, match=f"ASSETS_DIR: .* schema version {SCHEMA_VERSION + 1}"):
        await store.open()


async def _output(store: AssetStore, folder: Path, data: bytes = DATA, name: str = "out.png") -> AssetRecord:
    output = folder / name
    output.write_bytes(data)
    return await store.add_output(output, job_id="job", file_path=name, content_type="image/png", expires_at=None)


def stored_ids(store: AssetStore) -> set[str]:
    """The ids of the records on disk, read with the file's own driver."""
    with sqlite3.connect(store.path) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM assets")}


async def test_an_output_is_readable_at_once_and_on_disk_once_flushed(
    store: AssetStore, make_store: MakeStore, tmp_path: Path
) -> None:
    record = await _output(store, tmp_path)

    # Written behind: not yet in the file, already answered.
    assert record.id not in stored_ids(store)
    assert await store.get(record.id) == record
    assert await store.has_blob(record.hash)

    await store.flush_outputs()

    assert record.id in stored_ids(store)
    assert await (await make_store()).get(record.id) == record


async def test_what_the_store_reads_and_writes_next_includes_the_unwritten_outputs(
    store: AssetStore, tmp_path: Path
) -> None:
    record = await _output(store, tmp_path)

    minted, created = await store.mint_from_hash(record.hash, file_path="copy.png", tags=[], expires_in_s=None)
    assert created
    assert minted.size_bytes == len(DATA)
    with pytest.raises(V2Error) as raised:
        await store.delete(record.id)
    assert raised.value.code == "asset_in_use"
    assert {record.id, minted.id} <= stored_ids(store)


async def test_closing_the_store_writes_the_unwritten_outputs(
    store: AssetStore, make_store: MakeStore, tmp_path: Path
) -> None:
    record = await _output(store, tmp_path)

    await store.close()

    assert record.id in stored_ids(store)
    assert await (await make_store()).get(record.id) == record


async def test_a_sweep_never_removes_the_blob_of_an_output_being_placed(
    store: AssetStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The only record of these bytes expires: the sweep would remove their blob, which the output being placed (in a
    # worker thread: it is large) finds there and relies on.
    large = DATA * (SMALL_FILE_BYTES // len(DATA) + 1)
    expiring, _ = await upload(store, large, expires_in_s=60)
    clock.now += 61_000
    found = threading.Event()
    go_on = threading.Event()
    placed_output = store._placed_output

    def held(source: Path, temporary: Path) -> Any:
        answer = placed_output(source, temporary)
        found.set()
        assert go_on.wait(30)
        return answer

    monkeypatch.setattr(store, "_placed_output", held)
    adding = asyncio.create_task(_output(store, tmp_path, large))
    assert await asyncio.to_thread(found.wait, 30)
    sweeping = asyncio.create_task(store.sweep())
    await asyncio.sleep(0.05)
    assert not sweeping.done()  # waiting for the output's blob to be placed

    go_on.set()
    record = await adding
    assert await sweeping == 1

    assert await store.get(expiring.id) is None
    assert (await store.local_content(record)).read_bytes() == large
    assert record.id in stored_ids(store)
