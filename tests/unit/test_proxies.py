"""Outgoing webhooks, downloads and uploads go through HTTP_PROXY as CONNECT tunnels to the checked address
(NO_PROXY respected); ComfyUI never does."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.errors import UnsafeUrl
from comfyui_api.storage.http import HttpProvider
from comfyui_api.storage.net import Proxies, UrlGuard
from comfyui_api.urls import url_origin
from comfyui_api.webhooks.sender import WebhookSender
from tests.support.files import FileServer
from tests.support.receiver import WebhookReceiver


class ForwardProxy:
    """An HTTP proxy that tunnels with CONNECT, as outgoing requests use it, and records each CONNECT target."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                proxy.seen.append(f"CONNECT {self.path}")
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                relay = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
                relay.start()
                _pipe(self.connection, upstream)
                relay.join(timeout=30)
                upstream.close()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes until `source` closes, then half-close `target`."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            target.sendall(chunk)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def authority(url: str) -> str:
    return urlsplit(url).netloc


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    forward = ForwardProxy()
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, forward.url)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield forward
    forward.close()


def trusting(url: str) -> UrlGuard:
    """The receivers listen on loopback: their origin is trusted, as an operator would list it."""
    return UrlGuard(trusted_origins=[url_origin(url)])


async def test_webhooks_go_through_the_proxy(proxy: ForwardProxy) -> None:
    with WebhookReceiver() as receiver:
        sender = WebhookSender(None, 1, guard=trusting(receiver.url))
        assert await sender.send(receiver.url, {"hello": "proxy"})
        await sender.aclose()
    assert proxy.seen == [f"CONNECT {authority(receiver.url)}"]


async def test_downloads_and_uploads_go_through_the_proxy(proxy: ForwardProxy, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    with FileServer(tmp_path) as files:
        provider = HttpProvider(trusting(files.url))
        await provider.download(f"{files.url}/model.bin", tmp_path / "copy.bin", None)
        await provider.upload(tmp_path / "copy.bin", f"{files.url}/uploaded.bin", "application/octet-stream")
        await provider.aclose()
    # A tunnel per request (the file server closes each connection after one answer).
    assert proxy.seen == [f"CONNECT {authority(files.url)}"] * 2
    assert (tmp_path / "uploaded.bin").read_bytes() == b"weights"


async def test_the_proxy_is_asked_for_the_checked_address_not_the_name(proxy: ForwardProxy, tmp_path: Path) -> None:
    """Pinning holds through a proxy: it is asked to CONNECT to the address the guard resolved and checked, so
    it never resolves the name itself (a second DNS answer could differ)."""
    (tmp_path / "model.bin").write_bytes(b"weights")
    with FileServer(tmp_path) as files:
        by_name = files.url.replace("127.0.0.1", "files.test")
        guard = UrlGuard(trusted_origins=[url_origin(by_name)], resolver=lambda host, port: ["127.0.0.1"])
        provider = HttpProvider(guard)
        await provider.download(f"{by_name}/model.bin", tmp_path / "copy.bin", None)
        await provider.aclose()
        assert files.log[-1][2]["Host"] == authority(by_name)  # the name stays in Host
    assert proxy.seen == [f"CONNECT {authority(files.url)}"]
    assert (tmp_path / "copy.bin").read_bytes() == b"weights"


async def test_a_refused_address_never_reaches_the_proxy(proxy: ForwardProxy, tmp_path: Path) -> None:
    with FileServer(tmp_path) as files:
        provider = HttpProvider(UrlGuard())
        with pytest.raises(UnsafeUrl, match="loopback"):
            await provider.download(f"{files.url}/model.bin", tmp_path / "copy.bin", None)
        await provider.aclose()
        assert files.log == []
    assert proxy.seen == []


async def test_no_proxy_is_respected(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (tmp_path / "model.bin").write_bytes(b"weights")
    with FileServer(tmp_path) as files:
        provider = HttpProvider(trusting(files.url))
        await provider.download(f"{files.url}/model.bin", tmp_path / "copy.bin", None)
        await provider.aclose()
    assert proxy.seen == []


def test_an_invalid_proxy_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "ftp://proxy.test:21")
    monkeypatch.delenv("https_proxy", raising=False)
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        Proxies.from_environment()


async def test_comfyui_is_never_reached_through_the_proxy(proxy: ForwardProxy, tmp_path: Path) -> None:
    with FileServer(tmp_path) as comfy:  # an HTTP server standing in for ComfyUI
        client = ComfyClient(comfy.url)
        await client.probe()
        await client.aclose()
        reached_directly = len(comfy.log)
    assert proxy.seen == [] and reached_directly == 1
