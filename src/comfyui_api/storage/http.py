"""Plain HTTP(S) downloads, streamed to disk, with redirects, proxies and every auth style."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx

from .auth import DownloadAuth, http_request_target
from .base import AccessDenied, DownloadError, extension_for_content_type, name_extension, url_extension

_CHUNK = 1024 * 1024
_DISPOSITION_NAME = re.compile(r"""filename\*?=(?:UTF-8''|")?([^";]+)"?""", re.IGNORECASE)


class HttpProvider:
    name = "http"

    def __init__(self, env_header: tuple[str, str] | None = None, *, timeout_s: float = 60.0) -> None:
        self._env_header = env_header
        # trust_env: downloads honour HTTP(S)_PROXY and NO_PROXY.
        self._http = httpx.AsyncClient(
            follow_redirects=True, timeout=httpx.Timeout(timeout_s, connect=15.0), trust_env=True
        )

    def matches(self, url: str) -> bool:
        return url.startswith(("http://", "https://"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        target, headers = http_request_target(url, auth, self._env_header)
        try:
            async with self._http.stream("GET", target, headers=headers) as response:
                _raise_for_status(response)
                await write_stream(response.aiter_raw(_CHUNK), destination)
                return _response_extension(response)
        except httpx.HTTPError as exc:
            raise DownloadError(f"Error downloading file: {type(exc).__name__}: {exc}") from exc

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        target, headers = http_request_target(url, auth, self._env_header)
        try:
            response = await self._http.head(target, headers=headers)
            if response.status_code == 405:
                response = await self._http.get(target, headers={**headers, "Range": "bytes=0-0"})
        except httpx.HTTPError as exc:
            raise DownloadError(f"Authentication check failed: {type(exc).__name__}: {exc}") from exc
        _raise_for_status(response)


async def write_stream(chunks: AsyncIterator[bytes], destination: Path) -> None:
    """Write chunks to a file in a worker thread, the write of one overlapping the receipt of the next."""
    handle = await asyncio.to_thread(open, destination, "wb")
    writing: asyncio.Future[int] | None = None
    try:
        async for chunk in chunks:
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(handle.write, chunk))
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            # The stream failed while a write was under way: let it end before the file is closed.
            with contextlib.suppress(Exception):
                await writing
        await asyncio.to_thread(handle.close)


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
