"""Plain HTTP(S) downloads, streamed to disk, with redirects, proxies and every auth style."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path
from urllib.parse import unquote

import httpcore._sync.http11
import httpx

from .auth import DownloadAuth, http_request_target
from .base import AccessDenied, DownloadError, UploadError, extension_for_content_type, name_extension, url_extension

# httpcore reads 64 KiB per socket read; at that size the per-read cost caps a download near 400 MiB/s,
# while 1 MiB reads go past curl. Only this module's synchronous client uses httpcore's sync connections.
httpcore._sync.http11.HTTP11Connection.READ_NUM_BYTES = 1024 * 1024

_DISPOSITION_NAME = re.compile(r"""filename\*?=(?:UTF-8''|")?([^";]+)"?""", re.IGNORECASE)


class HttpProvider:
    name = "http"

    def __init__(self, env_header: tuple[str, str] | None = None, *, timeout_s: float = 60.0) -> None:
        self._env_header = env_header
        timeout = httpx.Timeout(timeout_s, connect=15.0)
        # trust_env: downloads honour HTTP(S)_PROXY and NO_PROXY. The body is received by a synchronous
        # client in a worker thread: through the event loop the same download runs at a third of the speed.
        self._sync = httpx.Client(follow_redirects=True, timeout=timeout, trust_env=True)
        self._http = httpx.AsyncClient(follow_redirects=True, timeout=timeout, trust_env=True)

    def matches(self, url: str) -> bool:
        return url.startswith(("http://", "https://"))

    async def aclose(self) -> None:
        await self._http.aclose()
        await asyncio.to_thread(self._sync.close)

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        target, headers = http_request_target(url, auth, self._env_header)
        cancelled = threading.Event()

        def fetch() -> str | None:
            try:
                with self._sync.stream("GET", target, headers=headers) as response:
                    _raise_for_status(response)
                    with open(destination, "wb") as handle:
                        for chunk in response.iter_raw():
                            if cancelled.is_set():
                                raise DownloadError("Download cancelled")
                            handle.write(chunk)
                    return _response_extension(response)
            except httpx.HTTPError as exc:
                raise DownloadError(f"Error downloading file: {type(exc).__name__}: {exc}") from exc

        worker = asyncio.ensure_future(asyncio.to_thread(fetch))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: tell it to stop, and let it finish before the caller cleans up.
            cancelled.set()
            with contextlib.suppress(Exception):
                await worker
            raise

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        target, headers = http_request_target(url, None, self._env_header)

        def put() -> None:
            with open(source, "rb") as handle:
                # A file object as content is streamed: the body never sits in memory.
                response = self._sync.put(
                    target,
                    content=handle,
                    headers={**headers, "Content-Type": content_type, "Content-Length": str(source.stat().st_size)},
                )
            if not response.is_success:
                raise UploadError(f"Upload failed with status {response.status_code}: {response.reason_phrase}")

        try:
            await asyncio.to_thread(put)
        except httpx.HTTPError as exc:
            raise UploadError(f"Upload failed: {type(exc).__name__}: {exc}") from exc

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        target, headers = http_request_target(url, auth, self._env_header)
        try:
            response = await self._http.head(target, headers=headers)
            if response.status_code == 405:
                response = await self._http.get(target, headers={**headers, "Range": "bytes=0-0"})
        except httpx.HTTPError as exc:
            raise DownloadError(f"Authentication check failed: {type(exc).__name__}: {exc}") from exc
        _raise_for_status(response)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        raise AccessDenied(f"Authentication failed: {response.status_code} {response.reason_phrase}")
    if response.status_code >= 400:
        raise DownloadError(f"Error downloading file: {response.status_code} {response.reason_phrase}")


def _response_extension(response: httpx.Response) -> str | None:
    """Content-Disposition's file name, then the final (redirected) URL, then Content-Type."""
    disposition = response.headers.get("content-disposition", "")
    match = _DISPOSITION_NAME.search(disposition)
    if match:
        extension = name_extension(unquote(match.group(1)).strip())
        if extension:
            return extension
    return url_extension(str(response.url)) or extension_for_content_type(response.headers.get("content-type")) or None
