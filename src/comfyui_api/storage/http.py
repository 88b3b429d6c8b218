"""Plain HTTP(S) downloads, streamed to disk, with redirects, proxies and every auth style."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path
from urllib.parse import unquote

import httpx

from ..errors import AccessDenied, DownloadError, UnsafeUrl, UploadError
from .auth import DownloadAuth, http_credentials
from .base import extension_for_content_type, name_extension, url_extension
from .net import Redirects, UrlGuard, describe_http_error, send, send_async

_DISPOSITION_NAME = re.compile(r"""filename\*?=(?:UTF-8''|")?([^";]+)"?""", re.IGNORECASE)


class HttpProvider:
    name = "http"

    def __init__(self, guard: UrlGuard, env_header: tuple[str, str] | None = None, *, timeout_s: float = 60.0) -> None:
        self._guard = guard
        self._env_header = env_header
        timeout = httpx.Timeout(timeout_s, connect=15.0)
        # Every connection goes through the guard (storage/net.py), proxies included. The body is received by a
        # synchronous client in a worker thread: through the event loop the same download runs at a third of the
        # speed.
        self._sync = guard.sync_client(timeout)
        self._http = guard.async_client(timeout)

    def matches(self, url: str) -> bool:
        return url.startswith(("http://", "https://"))

    def outgoing_urls(self, url: str, auth: DownloadAuth | None) -> list[str]:
        return [url]

    async def aclose(self) -> None:
        await self._http.aclose()
        await asyncio.to_thread(self._sync.close)

    def _redirects(
        self, method: str, url: str, auth: DownloadAuth | None, headers: dict[str, str] | None = None
    ) -> Redirects:
        env_header = self._env_header if self._guard.may_send_env_auth(url) else None
        target, credentials = http_credentials(url, auth, env_header)
        # The body is stored as received (iter_raw): ask for it uncompressed, or a gzip-encoded image or JSON would
        # enter the cache under its own name.
        return Redirects(
            method, target, credentials=credentials, headers={"Accept-Encoding": "identity", **(headers or {})}
        )

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        redirects = self._redirects("GET", url, auth)
        cancelled = threading.Event()

        def fetch() -> str | None:
            try:
                with contextlib.closing(send(self._sync, redirects)) as response:
                    _raise_for_status(response)
                    # A server that encodes anyway is decoded: the cache holds the bytes as served, never compressed.
                    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
                    with open(destination, "wb") as handle:
                        for chunk in response.iter_bytes() if encoded else response.iter_raw():
                            if cancelled.is_set():
                                raise DownloadError("Download cancelled")
                            handle.write(chunk)
                    return _response_extension(response)
            except httpx.HTTPError as exc:
                raise DownloadError(f"Error downloading file: {describe_http_error(exc)}") from exc

        worker = asyncio.ensure_future(asyncio.to_thread(fetch))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: tell it to stop at its next chunk, and delete what it wrote once it has.
            # The caller does not wait for that: a stalled server holds the thread until its read timeout, and the
            # request's deadline must not (PROMPT_TIMEOUT_S covers downloads).
            cancelled.set()
            worker.add_done_callback(lambda done: _discard(done, destination))
            raise

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        def put() -> None:
            headers = {"Content-Type": content_type, "Content-Length": str(source.stat().st_size)}
            redirects = self._redirects("PUT", url, None, headers)
            with contextlib.ExitStack() as files:
                # A file object as content is streamed: the body never sits in memory. A redirect that repeats
                # the request reads the file again from the start.
                body = lambda: files.enter_context(open(source, "rb"))  # noqa: E731
                with contextlib.closing(send(self._sync, redirects, body)) as response:
                    response.read()
            if not response.is_success:
                raise UploadError(f"Upload failed with status {response.status_code}: {response.reason_phrase}")

        try:
            await asyncio.to_thread(put)
        except httpx.HTTPError as exc:
            raise UploadError(f"Upload failed: {describe_http_error(exc)}") from exc
        except UnsafeUrl as exc:
            raise UploadError(f"Upload refused: {exc}") from None

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        try:
            response = await send_async(self._http, self._redirects("HEAD", url, auth))
            if response.status_code == 405:
                response = await send_async(self._http, self._redirects("GET", url, auth, {"Range": "bytes=0-0"}))
        except httpx.HTTPError as exc:
            raise DownloadError(f"Authentication check failed: {describe_http_error(exc)}") from exc
        _raise_for_status(response)


def _discard(worker: asyncio.Future[str | None], destination: Path) -> None:
    """After a cancelled download's thread ends: its file goes, and so does its outcome (nobody awaits it)."""
    if not worker.cancelled():
        worker.exception()
    destination.unlink(missing_ok=True)


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
