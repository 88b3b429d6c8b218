"""The storage manager: picks the provider for a URL, fetches through the cache, links into place."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from .auth import DownloadAuth, strip_userinfo
from .azure import AzureProvider, azure_service_client
from .base import DownloadError, Provider, name_extension
from .cache import DownloadCache, EventHook
from .git import clone, repo_dir_name
from .http import HttpProvider
from .huggingface import HuggingFaceProvider
from .s3 import S3Provider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    link: Path  # where the file appears for ComfyUI
    target: Path  # the cache file it points to
    size: int
    duration_s: float
    downloaded: bool


class StorageManager:
    def __init__(self, settings: Settings, on_event: EventHook | None = None) -> None:
        # Storage events (file_downloaded here, file_deleted from the cache) for the system webhook.
        self._on_event = on_event
        self.cache = DownloadCache(
            settings.cache_dir, limit_bytes=int(settings.lru_cache_size_gb * 1024**3), on_event=on_event
        )
        self._http = HttpProvider(settings.http_auth_header)
        providers: list[Provider] = [
            S3Provider(settings.aws_region_name),
            HuggingFaceProvider(settings.hf_endpoint, settings.hf_token, settings.cache_dir / ".huggingface"),
        ]
        azure = azure_service_client(settings)
        if azure is not None:
            providers.append(AzureProvider(azure))
        providers.append(self._http)
        self.providers = providers
        self._repo_locks: dict[Path, asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def provider_for(self, url: str) -> Provider:
        for provider in self.providers:
            if provider.matches(url):
                return provider
        raise DownloadError(f"No storage provider found for URL: {url}")

    async def download(
        self, url: str, target_dir: Path, *, filename: str | None = None, auth: DownloadAuth | None = None
    ) -> Download:
        """Fetch `url` into the cache and link it as `target_dir/<filename or cache name>`.

        A `filename` without an extension gets the cache file's (found from the response, e.g. its
        Content-Disposition). The cache file stays pinned (safe from eviction) until `release(download)`.
        """
        entry = await self.cache.fetch(url, self.provider_for(url), auth)
        try:
            if filename and not name_extension(filename):
                filename += entry.path.suffix
            link = target_dir / (filename or entry.path.name)
            _link(link, entry.path)
        except BaseException:
            self.cache.unpin(entry.path)
            raise
        if entry.downloaded and self._on_event is not None:
            self._on_event(
                "file_downloaded",
                {"url": strip_userinfo(url), "local_path": str(link), "size": entry.size, "duration": entry.duration_s},
            )
        return Download(link, entry.path, entry.size, entry.duration_s, entry.downloaded)

    def release(self, download: Download) -> None:
        self.cache.unpin(download.target)

    async def clone_repo(self, url: str, target_dir: Path) -> Path:
        """A git repository as a folder of `target_dir` (kept, not cached: ComfyUI loads it in place)."""
        destination = target_dir / repo_dir_name(url)
        async with self._repo_locks.setdefault(destination, asyncio.Lock()):
            if not destination.exists():
                await clone(url, destination)
        return destination


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target`, replacing a stale link atomically; a real file there is left alone."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    if link.exists() and not link.is_symlink():
        logger.warning("a file already has the link's name; leaving it", extra={"path": str(link)})
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}.link")
    temporary.symlink_to(target)
    os.replace(temporary, link)
