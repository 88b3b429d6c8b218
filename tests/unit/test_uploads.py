"""The Uploader's orchestration: uploads run in parallel and answer their URLs in the request's order, the first
failure in that order is the one raised, two uploads to one URL run one after the other, and each upload done is
reported as a `file_uploaded` event with its URL redacted.

The storage provider is a stand-in whose uploads finish (or fail) when the test says, so orders of completion are
chosen rather than raced for. The real providers upload to real servers in tests/test_storage.py and
tests/test_storage_providers.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from comfyui_api.errors import UploadError
from comfyui_api.storage.manager import StorageManager
from comfyui_api.storage.uploads import Uploader


class Provider:
    """Stands in for a storage provider: an upload to a URL starts at once and ends when the test releases that URL,
    with the failure set for it, if any. `log` holds ("start" | "end", file name) in the order they happened."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.content_types: list[str] = []
        self.failures: dict[str, UploadError] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Event()

    def gate(self, url: str) -> asyncio.Event:
        return self._gates.setdefault(url, asyncio.Event())

    async def until_started(self, count: int) -> None:
        async with asyncio.timeout(10):
            while sum(1 for step, _ in self.log if step == "start") < count:
                self.changed.clear()
                await self.changed.wait()

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        self.log.append(("start", source.name))
        self.content_types.append(content_type)
        self.changed.set()
        await self.gate(url).wait()
        self.log.append(("end", source.name))
        if url in self.failures:
            raise self.failures[url]


class Storage:
    """Stands in for StorageManager: every URL goes to the one provider."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def provider_for(self, url: str) -> Provider:
        return self._provider


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def events() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def uploader(provider: Provider, events: list[tuple[str, dict[str, Any]]]) -> Uploader:
    return Uploader(cast(StorageManager, Storage(provider)), on_event=lambda name, data: events.append((name, data)))


def files(folder: Path, *names: str) -> list[Path]:
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"x" * 10)
    return paths


async def test_urls_come_back_in_the_request_order_whatever_order_the_uploads_end_in(
    tmp_path: Path, provider: Provider, uploader: Uploader, events: list[tuple[str, dict[str, Any]]]
) -> None:
    first, second = files(tmp_path, "a.png", "b.webp")
    urls = ["https://uploads.example/a.png?X-Amz-Signature=secret", "https://uploads.example/b.webp"]
    uploading = asyncio.create_task(uploader.upload_all([(first, urls[0]), (second, urls[1])]))

    await provider.until_started(2)  # both under way at once
    provider.gate(urls[1]).set()
    provider.gate(urls[0]).set()

    assert await uploading == urls
    assert provider.content_types == ["image/png", "image/webp"]
    reported = [(name, data["url"], data["local_path"], data["size"]) for name, data in events]
    # The signed query never reaches an event.
    assert reported == [
        ("file_uploaded", "https://uploads.example/b.webp", str(second), 10),
        ("file_uploaded", "https://uploads.example/a.png?<redacted>", str(first), 10),
    ]


async def test_the_first_failure_in_the_request_order_is_raised_once_all_have_ended(
    tmp_path: Path, provider: Provider, uploader: Uploader, events: list[tuple[str, dict[str, Any]]]
) -> None:
    paths = files(tmp_path, "a.png", "b.png", "c.png")
    urls = [f"https://uploads.example/{path.name}" for path in paths]
    provider.failures = {urls[0]: UploadError("a refused"), urls[1]: UploadError("b refused")}
    uploading = asyncio.create_task(uploader.upload_all(list(zip(paths, urls, strict=True))))
    await provider.until_started(3)
    for url in reversed(urls):  # b fails before a does
        provider.gate(url).set()

    with pytest.raises(UploadError, match="a refused"):
        await uploading

    assert sorted(provider.log) == sorted([(step, path.name) for step in ("start", "end") for path in paths])
    assert [data["url"] for _, data in events] == [urls[2]]


async def test_two_uploads_to_one_url_run_one_after_the_other(
    tmp_path: Path, provider: Provider, uploader: Uploader
) -> None:
    earlier, later, other = files(tmp_path, "earlier.png", "later.png", "other.png")
    url, other_url = "https://uploads.example/same.png", "https://uploads.example/other.png"
    first = asyncio.create_task(uploader.upload_all([(earlier, url)]))
    await provider.until_started(1)

    second = asyncio.create_task(uploader.upload_all([(later, url), (other, other_url)]))
    # The second request's uploads are set off in its order: once its other file is under way, the one to the busy
    # URL has been reached too, and waits.
    await provider.until_started(2)
    assert provider.log == [("start", "earlier.png"), ("start", "other.png")]
    provider.gate(other_url).set()
    provider.gate(url).set()

    assert await first == [url]
    assert await second == [url, other_url]
    assert provider.log[provider.log.index(("end", "earlier.png")) + 1 :] == [
        ("start", "later.png"),
        ("end", "later.png"),
    ]
