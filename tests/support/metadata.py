"""A stand-in for SaladCloud's node metadata service, on loopback: it records each request, answers with `status`, and
can hold requests unanswered (`hold()` / `release()`) to show what the server sends while one is in flight.
`on_change()`, when given, is called from the service's threads whenever a request arrives or is answered."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any


@dataclass
class Put:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class MetadataService:
    def __init__(self, sock: socket.socket | None = None, *, on_change: Callable[[], None] | None = None) -> None:
        """On the bound socket `sock` (a free port when None): a test may hold a port closed, let the server fail
        against it, then start this on it."""
        self._on_change = on_change or (lambda: None)
        self.lock = threading.Lock()
        self.requests: list[Put] = []
        self.status = 200
        self.in_flight = 0
        self.max_in_flight = 0
        self._open = threading.Event()
        self._open.set()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with service.lock:
                    service.in_flight += 1
                    service.max_in_flight = max(service.max_in_flight, service.in_flight)
                    service.requests.append(
                        Put(self.command, self.path, dict(self.headers.items()), json.loads(raw) if raw else None)
                    )
                service._on_change()
                service._open.wait()
                with service.lock:
                    service.in_flight -= 1
                    status = service.status
                service._on_change()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        if sock is None:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:
            self._server = http.server.ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
            self._server.socket.close()
            self._server.socket = sock
            self._server.server_address = sock.getsockname()
            self._server.server_activate()
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def costs(self) -> list[Any]:
        """The `deletion_cost` of each request received, in order."""
        with self.lock:
            return [put.body.get("deletion_cost") if isinstance(put.body, dict) else None for put in self.requests]

    def hold(self) -> None:
        """Requests from now on wait, unanswered, until `release()`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetadataService:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
