"""LocalHttp (the keep-alive client for the local ComfyUI) against a tiny HTTP/1.1 server on loopback.

The server is written by hand over asyncio streams so each test controls the wire: how many TCP connections it
accepts, when it closes them, whether it answers chunked, half an answer or never.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.comfy.http import LocalHttp
from comfyui_api.errors import ComfyUnavailable, TransportError

# Generous: the machine running these tests may be busy; a deadline only turns a hang into a failure.
DEADLINE_S = 10.0


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which accepted TCP connection it came on, counting from 0
    sequence: int  # its position among the requests of that connection, counting from 0

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


@dataclass
class Peer:
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


# Answers one request; returns whether to keep serving the connection (False: the server closes it).
Handler = Callable[[Request, Peer], Awaitable[bool]]


def response(status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = (), *, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(data: Any, status: int = 200) -> bytes:
    return response(status, json.dumps(data).encode(), [("Content-Type", "application/json")])


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, body


class TinyServer:
    """Keeps the counts the tests assert on: connections accepted, open at once, closed by the client."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._changed = asyncio.Event()
        self.requests: list[Request] = []
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.client_closed: set[int] = set()  # connections on which the server read EOF from the client

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def saw_eof(self, index: int) -> None:
        self.client_closed.add(index)
        self._touch()

    def _touch(self) -> None:
        # Wake every waiter of until(): each re-checks its own condition.
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not condition():
                await self._changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = writer
        peer = Peer(self.accepted, reader, writer)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self._touch()
        try:
            for sequence in itertools.count():
                parsed = await _read_request(reader)
                if parsed is None:
                    self.saw_eof(peer.index)
                    return
                self.requests.append(Request(*parsed, connection=peer.index, sequence=sequence))
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self._touch()
                try:
                    keep_open = await self._handler(self.requests[-1], peer)
                finally:
                    self.in_flight -= 1
                if not keep_open:
                    return
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.open -= 1
            self._writers.pop(task, None)
            self._touch()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        # Closing a connection ends its handler (a stalled one reads EOF); cancelling is the last resort only,
        # since asyncio (3.11) logs an error for every cancelled connection task.
        tasks = list(self._writers)
        for writer in self._writers.values():
            writer.close()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=DEADLINE_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()


Serve = Callable[[Handler], Awaitable[TinyServer]]
MakeHttp = Callable[..., LocalHttp]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TinyServer] = []

    async def start(handler: Handler) -> TinyServer:
        server = TinyServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def make_http() -> AsyncIterator[MakeHttp]:
    clients: list[LocalHttp] = []

    def make(base_url: str, *, timeout_s: float = DEADLINE_S, max_connections: int = 32) -> LocalHttp:
        http = LocalHttp(base_url, timeout_s=timeout_s, connect_timeout_s=DEADLINE_S, max_connections=max_connections)
        clients.append(http)
        return http

    yield make
    for http in clients:
        await http.aclose()


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where connections are refused: bound (so nothing else can take it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def answer(peer: Peer, data: bytes) -> None:
    peer.writer.write(data)
    await peer.writer.drain()


async def test_get_returns_status_and_json_and_reuses_one_connection(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        if request.path == "/queue":
            await answer(peer, json_response({"queue_running": [], "queue_pending": [[0, "p1"]]}))
        else:
            await answer(peer, response(404, b"Not Found"))
        return True

    server = await serve(handler)
    http = make_http(server.url)

    first = await http.request("GET", "/queue")
    second = await http.request("GET", "/missing")

    assert (first.status, first.ok) == (200, True)
    assert first.json() == {"queue_running": [], "queue_pending": [[0, "p1"]]}
    assert (second.status, second.ok, second.text) == (404, False, "Not Found")
    assert server.accepted == 1
    assert [(request.method, request.connection) for request in server.requests] == [("GET", 0), ("GET", 0)]


async def test_post_sends_the_json_body_and_encodes_params(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, json_response({}))
        return True

    server = await serve(handler)
    # A path prefix in the base URL is kept, with or without its trailing slash.
    http = make_http(server.url + "/base/")
    payload = {"prompt": {"1": {"class_type": "SaveImage", "inputs": {"text": "a cat ☕ & co"}}}, "n": [1, 2.5, None]}

    reply = await http.request("POST", "/prompt", json_body=payload, params={"client id": "a&b=c", "n": "1 2"})

    assert reply.status == 200
    [received] = server.requests
    assert received.method == "POST"
    assert received.path == "/base/prompt"
    assert parse_qs(urlsplit(received.target).query) == {"client id": ["a&b=c"], "n": ["1 2"]}
    # Raw, so a separator that was not escaped would show.
    assert urlsplit(received.target).query == "client+id=a%26b%3Dc&n=1+2"
    assert json.loads(received.body) == payload
    assert received.headers["content-type"] == "application/json"
    assert received.headers["content-length"] == str(len(received.body))
    assert received.headers["host"] == f"127.0.0.1:{server.port}"


async def test_a_get_sends_no_body_and_no_content_type(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, json_response([]))
        return True

    server = await serve(handler)
    http = make_http(server.url)

    await http.request("GET", "/models")

    [received] = server.requests
    assert received.body == b""
    assert received.headers.get("content-length", "0") == "0"
    assert "content-type" not in received.headers


async def test_a_chunked_response_is_decoded_whole(serve: Serve, make_http: MakeHttp) -> None:
    document = {"p1": {"outputs": {"9": {"images": [{"filename": f"out_{i:05}.png"} for i in range(200)]}}}}
    encoded = json.dumps(document).encode()
    pieces = [encoded[:1], encoded[1:1000], encoded[1000:]]

    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, response(200, headers=[("Transfer-Encoding", "chunked")], length=False))
        # One write per chunk, so the client meets chunk boundaries across reads too.
        for piece in pieces:
            await answer(peer, f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await answer(peer, b"0\r\n\r\n")
        return True

    server = await serve(handler)
    http = make_http(server.url)

    first = await http.request("GET", "/history/p1")
    second = await http.request("GET", "/history/p1")

    assert first.status == 200
    assert first.json() == document
    assert second.body == encoded
    # The terminating chunk ends the message: the connection stays reusable.
    assert server.accepted == 1


async def test_a_response_delimited_by_closing_the_connection_is_read_whole(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        if request.path == "/old":
            await answer(peer, response(200, b"until the end", length=False))
            return False
        await answer(peer, response(200, b"ok"))
        return True

    server = await serve(handler)
    http = make_http(server.url)

    old = await http.request("GET", "/old")
    after = await http.request("GET", "/ok")

    assert (old.status, old.body) == (200, b"until the end")
    assert (after.status, after.body) == (200, b"ok")
    assert server.accepted == 2


async def test_a_connection_that_cannot_be_reused_is_closed(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, response(200, b"until the end", length=False))
        return False

    server = await serve(handler)
    http = make_http(server.url)
    # An unclosed socket shows as a ResourceWarning when its objects are freed: by reference counting as the call
    # returns, or by the collector. Earlier garbage is collected first so that only this call's can report.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        reply = await http.request("GET", "/old")
        gc.collect()

    assert reply.body == b"until the end"
    assert [str(warning.message) for warning in caught if "unclosed" in str(warning.message)] == []


async def test_connection_refused_raises_transport_error(make_http: MakeHttp) -> None:
    with refusing_port() as port:
        http = make_http(f"http://127.0.0.1:{port}")

        with pytest.raises(TransportError, match="cannot connect"):
            await asyncio.wait_for(http.request("GET", "/"), DEADLINE_S)


async def test_a_server_that_never_answers_times_out_and_the_pool_stays_usable(
    serve: Serve, make_http: MakeHttp
) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        if request.path == "/stall":
            # Never answers; reading on shows whether the client gave the connection up.
            await peer.reader.read()
            server.saw_eof(peer.index)
            return False
        await answer(peer, response(200, b"ok"))
        return True

    server = await serve(handler)
    http = make_http(server.url, max_connections=1)

    with pytest.raises(TransportError, match=r"within 0\.3s"):
        await asyncio.wait_for(http.request("GET", "/stall", timeout_s=0.3), DEADLINE_S)
    # One slot only: a slot leaked by the timed out call would hang this one.
    reply = await http.request("GET", "/ok")

    assert (reply.status, reply.body) == (200, b"ok")
    # The timed out connection is closed, not put back: its late answer must never reach another call.
    await server.until(lambda: 0 in server.client_closed)
    assert [(request.path, request.connection) for request in server.requests] == [("/stall", 0), ("/ok", 1)]


async def test_a_connection_closed_after_an_answer_is_not_reused_wrongly(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, response(200, f"answer {len(server.requests)}".encode()))
        # Closes the idle connection without having announced it (no Connection: close), as a keep-alive timeout
        # does.
        return False

    server = await serve(handler)
    http = make_http(server.url)

    first = await http.request("GET", "/a")
    await server.until(lambda: server.open == 0)
    second = await http.request("GET", "/b")

    assert (first.status, first.body) == (200, b"answer 1")
    assert (second.status, second.body) == (200, b"answer 2")
    assert server.accepted == 2
    assert server.paths() == ["/a", "/b"]


async def test_a_reused_connection_closed_before_any_answer_is_retried_on_a_fresh_one(
    serve: Serve, make_http: MakeHttp
) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        if request.sequence > 0:
            # The keep-alive race: the server gives the connection up just as a new request arrives on it.
            return False
        await answer(peer, response(200, b"ok"))
        return True

    server = await serve(handler)
    http = make_http(server.url)

    await http.request("GET", "/first")
    reply = await http.request("GET", "/second")

    assert (reply.status, reply.body) == (200, b"ok")
    assert server.accepted == 2
    assert [(request.path, request.connection) for request in server.requests] == [
        ("/first", 0),
        ("/second", 0),
        ("/second", 1),
    ]


async def test_a_connection_dropped_mid_answer_raises_and_is_not_retried(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        if request.path == "/drop":
            await answer(peer, response(200, b"x" * 100)[:-90])
            return False
        await answer(peer, response(200, b"ok"))
        return True

    server = await serve(handler)
    http = make_http(server.url)
    await http.request("GET", "/ok")

    # On the reused connection, where a failure before any answer would be retried.
    with pytest.raises(TransportError):
        await http.request("POST", "/drop", json_body={"delete": ["p1"]})
    after = await http.request("GET", "/ok")

    assert server.paths().count("/drop") == 1
    assert after.status == 200
    assert server.accepted == 2


async def test_connection_close_in_an_answer_means_a_new_connection_next(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, response(200, b"bye", [("Connection", "close")]))
        # Keeps serving anyway, so only the client's own bookkeeping prevents a reuse.
        return True

    server = await serve(handler)
    http = make_http(server.url)

    first = await http.request("GET", "/a")
    second = await http.request("GET", "/b")

    assert (first.status, first.body, second.status, second.body) == (200, b"bye", 200, b"bye")
    assert [request.connection for request in server.requests] == [0, 1]
    await server.until(lambda: 0 in server.client_closed)


async def test_at_most_max_connections_calls_run_at_once(serve: Serve, make_http: MakeHttp) -> None:
    release = asyncio.Event()

    async def handler(request: Request, peer: Peer) -> bool:
        await release.wait()
        await answer(peer, json_response({"path": request.path}))
        return True

    server = await serve(handler)
    http = make_http(server.url, max_connections=3)

    calls = [asyncio.create_task(http.request("GET", f"/call/{i}")) for i in range(10)]
    try:
        await server.until(lambda: server.in_flight == 3)
    finally:
        # Also when the wait failed: the calls then end by themselves rather than outlive the test.
        release.set()
    replies = await asyncio.wait_for(asyncio.gather(*calls), DEADLINE_S)

    assert [reply.json() for reply in replies] == [{"path": f"/call/{i}"} for i in range(10)]
    assert server.max_open == 3
    assert server.max_in_flight == 3
    assert server.accepted == 3
    assert len(server.requests) == 10


async def test_aclose_closes_idle_connections(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, response(200, b"ok"))
        return True

    server = await serve(handler)
    http = make_http(server.url, max_connections=2)
    await asyncio.gather(http.request("GET", "/a"), http.request("GET", "/b"))
    assert server.accepted == 2

    await http.aclose()

    await server.until(lambda: server.client_closed == {0, 1})


@pytest.mark.parametrize("base_url", ["https://127.0.0.1:8188", "127.0.0.1:8188", "ws://127.0.0.1:8188", "http://"])
def test_only_plain_http_base_urls_are_accepted(base_url: str) -> None:
    with pytest.raises(ValueError, match="not a plain http:// URL"):
        LocalHttp(base_url, timeout_s=1.0, connect_timeout_s=1.0)


async def test_a_path_with_a_space_is_percent_encoded(serve: Serve, make_http: MakeHttp) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        await answer(peer, json_response([]))
        return True

    server = await serve(handler)
    http = make_http(server.url)

    # ComfyClient.model_files builds this path from folder names ComfyUI lists (extra_model_paths may add any).
    reply = await http.request("GET", "/models/my loras")

    assert reply.status == 200
    assert [request.target for request in server.requests] == ["/models/my%20loras"]


async def test_comfy_client_probe_is_false_when_comfyui_refuses_connections() -> None:
    with refusing_port() as port:
        client = ComfyClient(f"http://127.0.0.1:{port}")
        try:
            assert await asyncio.wait_for(client.probe(), DEADLINE_S) is False
        finally:
            await client.aclose()


async def test_comfy_client_history_rejects_a_non_json_answer(serve: Serve) -> None:
    async def handler(request: Request, peer: Peer) -> bool:
        if request.path == "/":
            await answer(peer, response(200, b"<html>ComfyUI</html>", [("Content-Type", "text/html")]))
        else:
            await answer(peer, response(200, b"<html>not json</html>", [("Content-Type", "text/html")]))
        return True

    server = await serve(handler)
    client = ComfyClient(server.url, timeout_s=DEADLINE_S)
    try:
        assert await client.probe() is True
        with pytest.raises(ComfyUnavailable, match="invalid JSON"):
            await client.history("p1")
    finally:
        await client.aclose()
    assert server.paths() == ["/", "/history/p1"]
