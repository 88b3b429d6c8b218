"""A real webhook receiver on loopback for tests: records every request and checks Standard Webhooks signatures.

    with WebhookReceiver(secret="whsec_...") as hook:      # started; stopped on exit
        hook.fail_next(2, status=500)                      # the next 2 requests get 500, later ones 200
        ...send to hook.url (or hook.url_for("/path?x=1"))...
        got = await hook.async_wait_for(lambda reqs: len(reqs) >= 3, timeout_s=10)
        got[0].json(), got[0].headers["webhook-id"], got[0].verified, got[0].status

API:
* `WebhookReceiver(secret=None, port=0)` binds 127.0.0.1 on `port` (0: a free one), so `port=` a stopped
  receiver's port brings a receiver that was down back up; `start()` (returns self) starts answering; `url` is
  `http://127.0.0.1:<port>/hook`, `url_for(path)` any other path on it.
* Every request (any method, any path) is recorded as a `Received`: `path` (the request target as sent, so a
  request through a proxy shows the absolute URL), lower-cased `headers`, `body` (str), `at` (time.monotonic()
  on arrival, before any scripted delay), `status` (what was answered), `verified` (None without a secret, else
  whether `svix.webhooks.Webhook(secret).verify(body, headers)` accepted it). `json()` parses the body.
* With a secret, a request that fails verification is answered 400 (and still recorded).
* `fail_next(n, status=500)`: the next n requests (that verified) get `status`; `delay_next(n, seconds)`: the next
  n requests are answered only after `seconds` (a hanging receiver). Scripts queue up: `fail_next(1)` then
  `fail_next(1, status=503)` answers 500 then 503.
* `requests` is a snapshot list; `wait_for(predicate, timeout_s)` blocks on a condition variable until
  `predicate(requests)` is true and returns the snapshot, or raises AssertionError after `timeout_s`.
  It blocks the calling thread: from async code use `await async_wait_for(...)`, which waits in a worker thread
  so the event loop (and the sender under test) keeps running.
* `stop()` closes the listening socket, so later connections are refused; delayed answers are released at
  once. Idempotent; `__exit__` calls it. Every answer closes its connection (HTTP/1.0), so no pooled keep-alive
  connection can outlive `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from svix.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: str
    at: float
    status: int
    verified: bool | None

    def json(self) -> Any:
        return json.loads(self.body)


Predicate = Callable[[list[Received]], bool]


class WebhookReceiver:
    def __init__(self, secret: str | None = None, *, port: int = 0) -> None:
        self.secret = secret
        self._verifier = Webhook(secret) if secret else None
        self._cond = threading.Condition()
        self._requests: list[Received] = []
        # Scripted answers, consumed in order: (status or None, delay in seconds).
        self._script: list[tuple[int | None, float]] = []
        self._released = threading.Event()
        self._stopped = False
        self._httpd = _Server(("127.0.0.1", port), _handler(self))
        self.port: int = self._httpd.server_address[1]
        self.url = self.url_for("/hook")
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="receiver", daemon=True)

    def url_for(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._released.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def fail_next(self, n: int, *, status: int = 500) -> None:
        with self._cond:
            self._script.extend([(status, 0.0)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        with self._cond:
            self._script.extend([(None, seconds)] * n)

    @property
    def requests(self) -> list[Received]:
        with self._cond:
            return list(self._requests)

    def wait_for(self, predicate: Predicate, timeout_s: float = 10.0) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._requests), timeout_s):
                raise AssertionError(
                    f"receiver: condition not met in {timeout_s} s; got {len(self._requests)} requests"
                )
            return list(self._requests)

    async def async_wait_for(self, predicate: Predicate, timeout_s: float = 10.0) -> list[Received]:
        return await asyncio.to_thread(self.wait_for, predicate, timeout_s)

    def _record(self, method: str, path: str, headers: dict[str, str], body: str) -> tuple[int, float]:
        at = time.monotonic()
        verified: bool | None = None
        if self._verifier is not None:
            try:
                self._verifier.verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        with self._cond:
            status, delay = 200, 0.0
            if verified is False:
                status = 400
            elif self._script:
                scripted, delay = self._script.pop(0)
                status = scripted or 200
            self._requests.append(Received(method, path, headers, body, at, status, verified))
            self._cond.notify_all()
        return status, delay


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 makes a burst of concurrent webhooks wait out a 1 s SYN retransmit.
    request_queue_size = 128


def _handler(receiver: WebhookReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, delay = receiver._record(self.command, self.path, headers, body)
            if delay:
                receiver._released.wait(delay)
            with contextlib.suppress(OSError):  # the client may have given up (timeout tests)
                payload = b'{"ok":true}' if status < 300 else b'{"ok":false}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_POST = do_PUT = do_GET = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
