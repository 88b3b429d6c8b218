"""A lean HTTP/1.1 client for the local ComfyUI: keep-alive connections over asyncio streams, h11 for the protocol.

Every prompt costs this server a few calls to ComfyUI (queue it, read its history entry, delete the entry).
Through httpx each call costs about 1 ms of CPU on a small machine, more than the rest of a request's handling
together; these calls need none of what httpx adds (proxies, TLS, redirects, auth, cookies, compression), and
this client makes the same call for about a quarter of the CPU. Connections are never shared between calls in
flight; at most `max_connections` calls run at once, the others wait their turn in FIFO order.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import h11

from ..errors import TransportError

_READ_SIZE = 256 * 1024
# Idle connections older than this are closed rather than reused: well under aiohttp's keep-alive timeout
# (75 s), so ComfyUI never closes one under a request being written to it.
_MAX_IDLE_S = 20.0


@dataclass
class Reply:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._protocol = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        # Whether any of the current call's response has arrived (a stale keep-alive connection fails before).
        self.answered = False

    @property
    def usable(self) -> bool:
        return (
            not self._reader.at_eof()
            and not self._writer.is_closing()
            and time.monotonic() - self.idle_since < _MAX_IDLE_S
        )

    async def exchange(self, request: h11.Request, body: bytes) -> Reply:
        self.answered = False
        protocol = self._protocol
        data = protocol.send(request) or b""
        if body:
            data += protocol.send(h11.Data(data=body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        self._writer.write(data)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                received = await self._reader.read(_READ_SIZE)
                if received:
                    self.answered = True
                protocol.receive_data(received)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("ComfyUI closed the connection before answering")
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            self.idle_since = time.monotonic()
        else:  # the server will close it: not reusable
            self.close()
        return Reply(status, b"".join(chunks))

    def close(self) -> None:
        self._writer.close()


class LocalHttp:
    def __init__(self, base_url: str, *, timeout_s: float, connect_timeout_s: float, max_connections: int = 32) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"not a plain http:// URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._authority = parts.netloc.encode()
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        target = quote(self._prefix + path, safe="/%:@!$&'()*+,;=~-._") + (f"?{urlencode(params)}" if params else "")
        body = json.dumps(json_body).encode() if json_body is not None else b""
        headers = [(b"host", self._authority), (b"content-length", str(len(body)).encode())]
        if json_body is not None:
            headers.append((b"content-type", b"application/json"))
        request = h11.Request(method=method, target=target.encode(), headers=headers)
        # The deadline covers the wait for a connection slot: when ComfyUI hangs, every slot may be held by a call
        # that will not be answered, and the watchdog's own call must still come back in time.
        try:
            async with asyncio.timeout(timeout_s or self._timeout_s), self._slots:
                return await self._exchange(request, body)
        except TimeoutError:
            raise TransportError(f"no answer to {method} {path} within {timeout_s or self._timeout_s:g}s") from None

    async def _exchange(self, request: h11.Request, body: bytes) -> Reply:
        connection = self._reuse()
        if connection is not None:
            try:
                return await self._on(connection, request, body)
            except TransportError:
                # Closed by ComfyUI while idle: the request never reached it, so it is safe to send again.
                if connection.answered:
                    raise
        return await self._on(await self._connect(), request, body)

    async def _on(self, connection: _Connection, request: h11.Request, body: bytes) -> Reply:
        try:
            reply = await connection.exchange(request, body)
        except (OSError, h11.ProtocolError) as exc:
            connection.close()
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # a timeout or a cancellation mid-call: the connection's state is unknown
            connection.close()
            raise
        if connection.usable:
            self._idle.append(connection)
        else:
            connection.close()
        return reply

    def _reuse(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be stale
            if connection.usable:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reader, writer = await asyncio.open_connection(self._host, self._port, limit=_READ_SIZE)
        except TimeoutError:
            raise TransportError(f"connecting to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
