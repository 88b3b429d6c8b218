"""The storage manager: picks the provider for a URL, fetches through the cache, links into place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Settings
from ..errors import DownloadError, InvalidUrl, UnsafeUrl
from ..jobstore.records import now_ms
from ..metrics import Metrics
from ..urls import redact_url, split_url
from .auth import DownloadAuth
from .azure import AzureProvider, azure_service_client
from .base import Provider, name_extension
from .cache import DownloadCache, EventHook
from .git import REQUEST_URL_CONFIG, clone, pinned_resolve, repo_dir_name
from .http import HttpProvider
from .huggingface import HuggingFaceProvider
from .net import UrlGuard
from .s3 import S3Provider
from .staging import stage_file, symlink, unique_name


@dataclass(frozen=True)
class Download:
    link: Path  # where the file appears for ComfyUI
    target: Path  # the cache file it points to (or was staged from)
    size: int
    duration_s: float
    downloaded: bool
    staged: bool = False  # a hard link or copy of the request's own, to delete when the request ends
    # When it was in place (ms since the epoch): with `duration_s`, its span in a job's trace (tracing.py).
    finished_at: int = field(default_factory=now_ms)


class StorageManager:
    def __init__(
        self,
        settings: Settings,
        guard: UrlGuard,
        on_event: EventHook | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        # Storage events (file_downloaded here, file_deleted from the cache) for the system webhook.
        self._on_event = on_event
        self._metrics = metrics
        self._guard = guard
        self.cache = DownloadCache(
            settings.cache_dir,
            limit_bytes=int(settings.lru_cache_size_gb * 1024**3),
            on_event=on_event,
            metrics=metrics,
        )
        self._http = HttpProvider(guard, settings.http_auth_header)
        # Operator-configured URLs (manifest models) skip the address check; redirects keep their rules.
        self._operator_http = HttpProvider(guard.for_operator(), settings.http_auth_header)
        providers: list[Provider] = [
            S3Provider(settings.aws_region_name),
            HuggingFaceProvider(
                settings.hf_endpoint,
                settings.hf_token.get_secret_value() if settings.hf_token else None,
                settings.cache_dir / ".huggingface",
            ),
        ]
        azure = azure_service_client(settings)
        if azure is not None:
            providers.append(AzureProvider(azure))
        providers.append(self._http)
        self.providers = providers
        self._repo_locks: dict[Path, asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._operator_http.aclose()

    def provider_for(self, url: str, *, trusted: bool = False) -> Provider:
        for provider in self.providers:
            if provider.matches(url):
                return self._operator_http if trusted and provider is self._http else provider
        raise DownloadError(f"No storage provider found for URL: {redact_url(url)}")

    async def check_url(self, url: str, auth: DownloadAuth | None = None) -> None:
        """Refuse a request-supplied URL the server must not fetch (UnsafeUrl, a DownloadError): a malformed URL,
        a scheme other than http, https and s3, or a host the URL guard refuses."""
        try:
            scheme = split_url(url).scheme.lower()
        except InvalidUrl as exc:
            raise UnsafeUrl(f"{redact_url(url)} is not a valid URL: {exc}") from None
        if scheme not in ("http", "https", "s3"):
            raise UnsafeUrl(f"{redact_url(url)}: only http, https and s3 URLs are allowed, not {scheme or '?'}:")
        for outgoing in self.provider_for(url).outgoing_urls(url, auth):
            await self._guard.check(outgoing)

    async def download(
        self,
        url: str,
        target_dir: Path,
        *,
        filename: str | None = None,
        auth: DownloadAuth | None = None,
        stage: bool = False,
        trusted: bool = False,
    ) -> Download:
        """Fetch `url` into the cache and place it in `target_dir`: as a symlink `<filename or cache name>`, or
        with `stage` as a hard link or copy under a name of its own (inputs; delete it when the request ends).

        `trusted`: the URL is the operator's (no address check). A `filename` without an extension gets the cache
        file's (found from the response, e.g. its Content-Disposition). The cache file stays pinned (safe from
        eviction) until `release(download)`.
        """
        if not trusted:
            await self.check_url(url, auth)
        provider = self.provider_for(url, trusted=trusted)
        entry = await self.cache.fetch(url, provider, auth)
        if entry.downloaded and self._metrics is not None:
            self._metrics.transferred("download", provider.name, entry.size, entry.duration_s)
        try:
            if filename and not name_extension(filename):
                filename += entry.path.suffix
            if stage:
                link = await asyncio.to_thread(stage_file, entry.path, target_dir, filename or unique_name(entry.path))
            else:
                link = target_dir / (filename or entry.path.name)
                symlink(link, entry.path)
        except OSError as exc:  # a full or read-only target folder: the cause, never a bare 500
            self.cache.unpin(entry.path)
            raise DownloadError(f"Cannot place the file in {target_dir}: {exc.strerror or exc}") from exc
        except BaseException:
            self.cache.unpin(entry.path)
            raise
        if entry.downloaded and self._on_event is not None:
            self._on_event(
                "file_downloaded",
                {"url": redact_url(url), "local_path": str(link), "size": entry.size, "duration": entry.duration_s},
            )
        return Download(link, entry.path, entry.size, entry.duration_s, entry.downloaded, staged=stage)

    def release(self, download: Download) -> None:
        self.cache.unpin(download.target)

    async def clone_repo(self, url: str, target_dir: Path, *, trusted: bool = False) -> Path:
        """A git repository as a folder of `target_dir` (kept, not cached: ComfyUI loads it in place). A request's
        URL passes the URL guard and is cloned over http(s) only, without redirects."""
        config = None
        if not trusted:
            address = await self._guard.check(url, field="a git repository")
            config = {**REQUEST_URL_CONFIG, **pinned_resolve(url, address)}
        destination = target_dir / repo_dir_name(url)
        async with self._repo_locks.setdefault(destination, asyncio.Lock()):
            if not destination.exists():
                await clone(url, destination, config=config)
        return destination
