"""Outgoing webhooks, downloads and uploads go through HTTP_PROXY (NO_PROXY respected); ComfyUI never does."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.storage.http import HttpProvider
from comfyui_api.webhooks.sender import WebhookSender
from tests.support.files import FileServer
from tests.support.receiver import WebhookReceiver


class ForwardProxy:
    """A plain-HTTP forward proxy that records the absolute URLs it forwards."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.seen.append(f"{self.command} {self.path}")
                target = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                path = target.path + (f"?{target.query}" if target.query else "")
                upstream.request(self.command, path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    forward = ForwardProxy()
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, forward.url)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield forward
    forward.close()


async def test_webhooks_go_through_the_proxy(proxy: ForwardProxy) -> None:
    with WebhookReceiver() as receiver:
        sender = WebhookSender(None, 1)
        assert await sender.send(receiver.url, {"hello": "proxy"})
        await sender.aclose()
    assert proxy.seen == [f"POST {receiver.url}"]


async def test_downloads_and_uploads_go_through_the_proxy(proxy: ForwardProxy, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    with FileServer(tmp_path) as files:
        provider = HttpProvider()
        await provider.download(f"{files.url}/model.bin", tmp_path / "copy.bin", None)
        await provider.upload(tmp_path / "copy.bin", f"{files.url}/uploaded.bin", "application/octet-stream")
        await provider.aclose()
    assert proxy.seen == [f"GET {files.url}/model.bin", f"PUT {files.url}/uploaded.bin"]
    assert (tmp_path / "uploaded.bin").read_bytes() == b"weights"


async def test_no_proxy_is_respected(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (tmp_path / "model.bin").write_bytes(b"weights")
    with FileServer(tmp_path) as files:
        provider = HttpProvider()
        await provider.download(f"{files.url}/model.bin", tmp_path / "copy.bin", None)
        await provider.aclose()
    assert proxy.seen == []


async def test_comfyui_is_never_reached_through_the_proxy(proxy: ForwardProxy, tmp_path: Path) -> None:
    with FileServer(tmp_path) as comfy:  # an HTTP server standing in for ComfyUI
        client = ComfyClient(comfy.url)
        await client.probe()
        await client.aclose()
        reached_directly = len(comfy.log)
    assert proxy.seen == [] and reached_directly == 1
