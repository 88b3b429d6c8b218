"""The download cache: hash-named files in CACHE_DIR, shared by every request and every target folder.

A URL is downloaded once (concurrent requests for it wait on the same download) to a temporary name
and renamed into place only when complete, so a failed download never leaves a cache entry. A `.meta`
sidecar records whether the download needed credentials; a later cache hit must then show credentials
that the provider accepts. With a size limit, the least recently used entries are evicted, except those
a running request holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import AccessDenied, DownloadError
from ..metrics import Metrics
from ..urls import redact_url
from .auth import DownloadAuth
from .base import Provider, url_extension

logger = logging.getLogger(__name__)

EventHook = Callable[[str, dict[str, Any]], None]

_PART_SUFFIX = ".part"
_META_SUFFIX = ".meta"


def cache_key(url: str) -> str:
    """First 32 characters of base64url(SHA-256(url)): the reference server's cache file names."""
    digest = hashlib.sha256(url.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    downloaded: bool  # False for a cache hit
    duration_s: float


class DownloadCache:
    def __init__(
        self, root: Path, *, limit_bytes: int = 0, on_event: EventHook | None = None, metrics: Metrics | None = None
    ) -> None:
        self._metrics = metrics
        self.root = root
        self._limit = limit_bytes
        self._on_event = on_event
        self._in_flight: dict[str, asyncio.Future[Path]] = {}
        self._pins: Counter[Path] = Counter()
        self._urls: dict[Path, str] = {}
        self._evicting: asyncio.Task[None] | None = None
        # One eviction pass at a time: two passes over one inventory would both count the same frees.
        self._eviction_lock = asyncio.Lock()

    # pins --------------------------------------------------------------------------------------------
    def pin(self, path: Path) -> None:
        self._pins[path] += 1

    def unpin(self, path: Path) -> None:
        self._pins[path] -= 1
        if self._pins[path] <= 0:
            del self._pins[path]

    # fetch -------------------------------------------------------------------------------------------
    async def fetch(self, url: str, provider: Provider, auth: DownloadAuth | None) -> CacheEntry:
        """The cache file for `url`, downloading it if needed; pinned for the caller (unpin when done)."""
        key = cache_key(url)
        started = time.monotonic()
        path = self._find(key)
        downloaded = False
        if path is None and key in self._in_flight:
            path = await asyncio.shield(self._in_flight[key])
        if path is not None:
            # Pinned before anything is awaited: an eviction pass running meanwhile never deletes it.
            self.pin(path)
            try:
                await self._check_access(path, url, provider, auth)
                with contextlib.suppress(OSError):
                    os.utime(path)  # recency for the LRU, whatever the mount's atime policy
            except BaseException:
                self.unpin(path)
                raise
        else:
            path = await self._download(key, url, provider, auth)
            downloaded = True
            self.pin(path)
        entry = CacheEntry(path, path.stat().st_size, downloaded, time.monotonic() - started)
        if self._metrics is not None:
            self._metrics.cache_looked_up(entry.size, hit=not downloaded)
        if downloaded:
            self._schedule_eviction()
        return entry

    def _find(self, key: str) -> Path | None:
        if key in self._in_flight:
            return None
        for candidate in self.root.glob(f"{key}*"):
            name = candidate.name
            if not name.endswith((_META_SUFFIX, _PART_SUFFIX)) and candidate.is_file():
                return candidate
        return None

    async def _download(self, key: str, url: str, provider: Provider, auth: DownloadAuth | None) -> Path:
        future: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        partial = self.root / f".{key}.{uuid.uuid4().hex}{_PART_SUFFIX}"
        started = time.monotonic()
        try:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                hint = await provider.download(url, partial, auth)
                path = self.root / f"{key}{url_extension(url) or hint or ''}"
                meta = {"authRequired": auth is not None, "url": redact_url(url), "cachedAt": _now_iso()}
                await asyncio.to_thread(_write_meta, path, meta)
                os.replace(partial, path)
            except OSError as exc:  # the cache's own file system: full, read-only; the cause, never a bare 500
                raise DownloadError(f"Cannot write to the download cache: {exc.strerror or exc}") from exc
        except BaseException as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            future.set_exception(exc)
            future.exception()  # waiters may be none; the caller below re-raises
            raise
        finally:
            self._in_flight.pop(key, None)
        future.set_result(path)
        self._urls[path] = redact_url(url)  # for its file_deleted event
        logger.info(
            "downloaded",
            extra={
                "url": redact_url(url),
                "path": str(path),
                "size": path.stat().st_size,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        return path

    async def _check_access(self, path: Path, url: str, provider: Provider, auth: DownloadAuth | None) -> None:
        meta = await asyncio.to_thread(_read_meta, path)
        if not meta.get("authRequired"):
            return
        if auth is None:
            raise AccessDenied(f"Authentication required to access cached file for URL: {redact_url(url)}")
        await provider.check_access(url, auth)

    def sweep_partials(self) -> int:
        """Delete partial downloads a stopped process left behind (call it before any download starts)."""
        swept = 0
        for path in self.root.glob(f".*{_PART_SUFFIX}") if self.root.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                swept += 1
        if swept:
            logger.info("deleted partial downloads left by an earlier run", extra={"count": swept})
        return swept

    # eviction ----------------------------------------------------------------------------------------
    def _schedule_eviction(self) -> None:
        if self._limit > 0 and (self._evicting is None or self._evicting.done()):
            self._evicting = asyncio.create_task(self.enforce_limit())

    async def enforce_limit(self) -> None:
        """Evict least recently used entries until the cache fits its limit; pinned files stay."""
        if self._limit <= 0:
            return
        async with self._eviction_lock:
            await self._evict()

    async def _evict(self) -> None:
        entries = await asyncio.to_thread(_inventory, self.root)
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self._limit:
                break
            # Checked and deleted without awaiting in between, so a file pinned meanwhile is never deleted.
            if path in self._pins or cache_key_of(path) in self._in_flight:
                continue
            self._emit("file_deleted", {"url": self._urls.pop(path, "unknown"), "local_path": str(path), "size": size})
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(FileNotFoundError):
                _meta_path(path).unlink()
            total -= size
            if self._metrics is not None:
                self._metrics.cache_evicted(size)
            logger.info("evicted from the download cache", extra={"path": str(path), "size": size})
        if total > self._limit:
            logger.warning(
                "the download cache is over its limit; the rest is in use",
                extra={"size": total, "limit": self._limit},
            )

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(name, data)


def cache_key_of(path: Path) -> str:
    return path.name[:32]


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + _META_SUFFIX)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    _meta_path(path).write_text(json.dumps(meta))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(_meta_path(path).read_text())
    except (OSError, ValueError):
        # No sidecar: the file predates this server or was placed by hand; treat it as public.
        return {}


def _inventory(root: Path) -> list[tuple[Path, int, int]]:
    """(path, size, last use) of every cache entry, least recently used first."""
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        if path.name.endswith((_META_SUFFIX, _PART_SUFFIX)) or path.name.startswith("."):
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            entries.append((path, stat.st_size, max(stat.st_atime_ns, stat.st_mtime_ns)))
    return sorted(entries, key=lambda entry: entry[2])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
