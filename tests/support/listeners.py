"""A loopback HTTP listener that records every connection and request, for the URL guard's tests.

`Listener()` binds 127.0.0.1 (or `host="::1"`) on a free port. It answers 200 with `body` (an image by default), or a
redirect for the paths given to `redirect(path, location, status)`. `connections` counts accepted TCP connections
(so a test can prove none was opened), `requests` has (method, path, headers) of each request.
"""

from __future__ import annotations

import http.server
import socket
import threading
from types import TracebackType


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listener: Listener, address: tuple[str, int], handler: type, family: int) -> None:
        self.address_family = family
        self.listener = listener
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, object]:
        accepted = super().get_request()
        with self.listener.lock:
            self.listener.connections += 1
        return accepted


class Listener:
    def __init__(self, *, host: str = "127.0.0.1", body: bytes = b"", content_type: str = "image/png") -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []
        self.redirects: dict[str, tuple[str, int]] = {}
        self.body = body
        self.content_type = content_type
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                with listener.lock:
                    listener.requests.append((self.command, self.path, dict(self.headers.items())))
                    listener.bodies.append(payload)
                path = self.path.split("?", 1)[0]
                if path in listener.redirects:
                    location, status = listener.redirects[path]
                    self.send_response(status)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", listener.content_type)
                self.send_header("Content-Length", str(len(listener.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(listener.body)

            do_GET = do_HEAD = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server(self, (host, 0), Handler, family)
        self.port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.redirects[path] = (location, status)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
