"""The download cache against a real HTTP file server: de-duplication, atomic writes, access checks, LRU."""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.errors import AccessDenied, DownloadError
from comfyui_api.storage.auth import BasicAuth, BearerAuth
from comfyui_api.storage.cache import DownloadCache, cache_key
from comfyui_api.storage.http import HttpProvider
from comfyui_api.storage.net import UrlGuard
from tests.support.files import FileServer
from tests.support.listeners import Listener

MB = 1024 * 1024


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    for name, size in (("a.bin", MB), ("b.bin", MB), ("c.bin", MB), ("big.bin", 8 * MB)):
        (root / name).write_bytes(bytes([len(name)]) * size)
    (root / "download").mkdir()
    (root / "download" / "123").write_bytes(b"weights")
    with FileServer(root, dispositions={"/download/123": "model.safetensors"}, drop={"/big.bin"}) as server:
        yield server


@pytest.fixture
async def provider() -> Any:
    provider = HttpProvider(UrlGuard(block_private=False))  # the file server listens on loopback
    yield provider
    await provider.aclose()


def cache_files(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


async def test_concurrent_fetches_of_one_url_download_it_once(tmp_path: Path, files: FileServer, provider: Any) -> None:
    cache = DownloadCache(tmp_path / "cache")
    url = f"{files.url}/a.bin"
    entries = await asyncio.gather(*(cache.fetch(url, provider, None) for _ in range(10)))
    assert files.count("/a.bin") == 1
    assert {entry.path for entry in entries} == {tmp_path / "cache" / f"{cache_key(url)}.bin"}
    assert sum(entry.downloaded for entry in entries) == 1
    assert {entry.size for entry in entries} == {MB}
    # A later fetch is a hit: no request at all.
    await cache.fetch(url, provider, None)
    assert files.count("/a.bin") == 1


async def test_a_dropped_download_leaves_no_entry(tmp_path: Path, files: FileServer, provider: Any) -> None:
    cache = DownloadCache(tmp_path / "cache")
    url = f"{files.url}/big.bin"
    with pytest.raises(DownloadError):
        await cache.fetch(url, provider, None)
    assert cache_files(tmp_path / "cache") == []
    files.drop.clear()
    entry = await cache.fetch(url, provider, None)
    assert entry.size == 8 * MB and entry.downloaded


async def test_the_extension_comes_from_content_disposition(tmp_path: Path, files: FileServer, provider: Any) -> None:
    cache = DownloadCache(tmp_path / "cache")
    url = f"{files.url}/download/123"
    entry = await cache.fetch(url, provider, None)
    assert entry.path.name == f"{cache_key(url)}.safetensors"
    assert cache_files(tmp_path / "cache") == sorted([entry.path.name, entry.path.name + ".meta"])


async def test_an_http_error_is_a_download_error(tmp_path: Path, files: FileServer, provider: Any) -> None:
    cache = DownloadCache(tmp_path / "cache")
    with pytest.raises(DownloadError, match="404"):
        await cache.fetch(f"{files.url}/missing.bin", provider, None)


async def test_a_cached_private_file_needs_credentials_again(tmp_path: Path, provider: Any) -> None:
    root = tmp_path / "private"
    root.mkdir()
    (root / "secret.bin").write_bytes(b"secret")
    right = BasicAuth(type="basic", username="u", password="p")
    wrong = BasicAuth(type="basic", username="u", password="nope")
    cache = DownloadCache(tmp_path / "cache")
    with FileServer(root, basic=("u", "p")) as files:
        url = f"{files.url}/secret.bin"
        with pytest.raises(AccessDenied, match="401"):
            await cache.fetch(url, provider, None)
        await cache.fetch(url, provider, right)
        with pytest.raises(AccessDenied, match="Authentication required to access cached file"):
            await cache.fetch(url, provider, None)
        with pytest.raises(AccessDenied, match="Authentication failed"):
            await cache.fetch(url, provider, wrong)
        entry = await cache.fetch(url, provider, right)
        assert not entry.downloaded
        assert files.count("/secret.bin") == 1  # the checks were HEADs, the file came down once


async def test_eviction_removes_the_least_recently_used_but_never_a_pinned_file(
    tmp_path: Path, files: FileServer, provider: Any
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    root = tmp_path / "cache"
    cache = DownloadCache(root, limit_bytes=2 * MB, on_event=lambda name, data: events.append((name, data)))
    first = await cache.fetch(f"{files.url}/a.bin", provider, None)  # pinned: still in use
    second = await cache.fetch(f"{files.url}/b.bin", provider, None)
    cache.unpin(second.path)
    third = await cache.fetch(f"{files.url}/c.bin", provider, None)
    # Last use a, then b, then c (file-system clocks are too coarse to order three quick downloads).
    for age, entry in ((300, first), (200, second), (100, third)):
        os.utime(entry.path, (time.time() - age, time.time() - age))
    await cache.enforce_limit()
    # Over the limit by one file: the oldest unpinned one (b) goes, the pinned older one (a) stays.
    assert first.path.exists() and third.path.exists() and not second.path.exists()
    assert not Path(str(second.path) + ".meta").exists()
    assert [(name, data["local_path"]) for name, data in events if name == "file_deleted"] == [
        ("file_deleted", str(second.path))
    ]
    # Once nothing holds them, the least recently used go first until the cache fits.
    cache.unpin(first.path)
    cache.unpin(third.path)
    await cache.fetch(f"{files.url}/c.bin", provider, None)  # a hit refreshes c
    await cache.enforce_limit()
    assert third.path.exists() and first.path.exists()
    cache.unpin(third.path)
    limited = DownloadCache(root, limit_bytes=MB)
    await limited.enforce_limit()
    assert third.path.exists() and not first.path.exists()


async def test_a_compressed_answer_is_stored_as_the_bytes_it_encodes(tmp_path: Path) -> None:
    """Downloads ask for identity encoding; a server that gzips anyway is decoded, so the cache never holds a
    compressed file under an image's name."""
    image = b"\x89PNG\r\n\x1a\n" + b"pixels" * 1000
    with Listener(body=gzip.compress(image)) as server:
        server.extra_headers = {"Content-Encoding": "gzip"}
        provider = HttpProvider(UrlGuard(block_private=False))  # the server listens on loopback
        await provider.download(f"{server.url}/a.png", tmp_path / "a.png", None)
        await provider.aclose()
    assert (tmp_path / "a.png").read_bytes() == image
    assert server.requests[0][2]["Accept-Encoding"] == "identity"


def test_partial_downloads_left_by_an_earlier_run_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".abc.123.part").write_bytes(b"half")
    (root / "abc.png").write_bytes(b"whole")
    (root / "abc.png.meta").write_text("{}")
    assert DownloadCache(root).sweep_partials() == 1
    assert sorted(path.name for path in root.iterdir()) == ["abc.png", "abc.png.meta"]


async def test_a_cache_hit_is_pinned_before_its_access_check_so_eviction_cannot_take_it(tmp_path: Path) -> None:
    """The access check of a private file awaits the provider; an eviction pass in that gap must skip the file."""
    root = tmp_path / "cache"
    root.mkdir()
    url = "https://files.test/private.bin"
    cached = root / f"{cache_key(url)}.bin"
    cached.write_bytes(b"x" * 1024)
    (root / f"{cached.name}.meta").write_text('{"authRequired": true}')
    cache = DownloadCache(root, limit_bytes=1)
    checking = asyncio.Event()
    release = asyncio.Event()

    class SlowCheck:
        name = "slow"

        async def check_access(self, url: str, auth: object) -> None:
            checking.set()
            await release.wait()

    auth = BearerAuth(type="bearer", token="t")
    fetch = asyncio.create_task(cache.fetch(url, SlowCheck(), auth))  # type: ignore[arg-type]
    await checking.wait()
    await cache.enforce_limit()  # over the limit: evicts what it may
    assert cached.exists()
    release.set()
    entry = await fetch
    assert entry.path == cached and not entry.downloaded
    cache.unpin(entry.path)
    await cache.enforce_limit()
    assert not cached.exists()


async def test_a_full_disk_is_a_download_error_with_its_cause_and_no_partial_file(tmp_path: Path) -> None:
    """The disk cannot be filled here: a provider whose write fails with ENOSPC stands in for it."""

    class FullDisk:
        name = "full"

        async def download(self, url: str, destination: Path, auth: object) -> str | None:
            destination.write_bytes(b"half of it")
            raise OSError(errno.ENOSPC, "No space left on device")

    cache = DownloadCache(tmp_path / "cache")
    with pytest.raises(DownloadError, match=r"^Cannot write to the download cache: No space left on device$"):
        await cache.fetch("https://files.test/big.bin", FullDisk(), None)  # type: ignore[arg-type]
    assert list((tmp_path / "cache").iterdir()) == []
