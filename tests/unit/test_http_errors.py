"""Error responses of the HTTP layer, in process: the body size limit and the JSON error handlers, including
FastAPI's and Starlette's own errors (404, 405, a body that is not UTF-8 or nests too deeply to parse)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from comfyui_api.api.handlers import install_error_handlers
from comfyui_api.api.middleware import BodySizeLimit
from comfyui_api.errors import ApiError, BadRequest, Conflict, DownloadError, InvalidUrl, TransportError, located

MAX_BYTES = 256


class Node(BaseModel):
    class_type: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class Graph(BaseModel):
    prompt: dict[str, Node]
    id: str = "default"


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BYTES)

    @app.post("/prompt")
    async def prompt(graph: Graph) -> dict[str, Any]:
        if graph.id == "taken":
            raise Conflict("A request with id 'taken' is already in progress", location="id")
        if graph.id == "bad":
            raise BadRequest("Bad node", location="prompt.1", node_errors={"1": ["nope"]})
        if graph.id == "boom":
            raise RuntimeError("secret internals at /opt/app")
        return {"nodes": sorted(graph.prompt)}

    @app.post("/api/v2/jobs")
    async def jobs(body: dict[str, Any]) -> dict[str, Any]:
        return body

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _valid_body(padding: int = 0) -> dict[str, Any]:
    return {"prompt": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x" * padding}}}}


async def test_a_valid_body_reaches_the_route(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json=_valid_body())

    assert response.status_code == 200
    assert response.json() == {"nodes": ["1"]}


async def test_a_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = json.dumps(_valid_body()).encode()
    body = body.replace(b'"filename_prefix": "', b'"filename_prefix": "' + b"x" * (MAX_BYTES - len(body)))
    assert len(body) == MAX_BYTES

    response = await client.post("/prompt", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 200


async def test_an_over_limit_content_length_is_413_json_at_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json=_valid_body(padding=MAX_BYTES))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["location"] == "body"
    assert body["error"].startswith("Request body is larger than")


async def test_an_over_limit_body_under_api_v2_is_413_in_the_v2_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v2/jobs", json=_valid_body(padding=MAX_BYTES))

    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["details"]) == ("payload_too_large", {"location": "body"})
    assert error["message"].startswith("Request body is larger than")


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    encoded = json.dumps(_valid_body(padding=MAX_BYTES)).encode()
    parts = [encoded[index : index + 64] for index in range(0, len(encoded), 64)]

    response = await client.post("/prompt", content=_chunks(*parts), headers={"content-type": "application/json"})

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.json()["location"] == "body"


async def test_a_streamed_body_within_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    encoded = json.dumps(_valid_body()).encode()

    response = await client.post(
        "/prompt", content=_chunks(encoded[:10], encoded[10:]), headers={"content-type": "application/json"}
    )

    assert response.status_code == 200
    assert response.json() == {"nodes": ["1"]}


async def test_malformed_json_is_400_at_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", content=b'{"prompt": ', headers={"content-type": "application/json"})

    assert response.status_code == 400
    body = response.json()
    assert body["location"] == "body"
    assert body["error"].startswith("Malformed JSON body")


@pytest.mark.parametrize("headers", [{"content-type": "application/json"}, {}])
async def test_an_empty_body_is_400(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post("/prompt", content=b"", headers=headers)

    assert response.status_code == 400
    assert response.json() == {"error": "The request body is empty: send a JSON object", "location": "body"}


async def test_a_text_plain_body_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/prompt", content=json.dumps(_valid_body()).encode(), headers={"content-type": "text/plain"}
    )

    assert response.status_code == 415
    assert response.json() == {
        "error": "Unsupported content type 'text/plain': send application/json",
        "location": "body",
    }


async def test_a_validation_error_names_the_field_path(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json={"prompt": {"1": {"inputs": {}}}})

    assert response.status_code == 400
    body = response.json()
    assert body["location"] == "prompt.1.class_type"
    assert body["error"].startswith("prompt.1.class_type: ")
    assert body["errors"] == [{"location": "prompt.1.class_type", "message": "Field required"}]


async def test_every_validation_error_is_listed(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json={"prompt": {"1": {"inputs": {}}, "2": {"class_type": 3}}})

    assert response.status_code == 400
    locations = [problem["location"] for problem in response.json()["errors"]]
    assert locations == ["prompt.1.class_type", "prompt.2.class_type"]


async def test_a_json_value_of_the_wrong_shape_is_400_at_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json=[1, 2])

    assert response.status_code == 400
    assert response.json()["location"] == "body"


@pytest.mark.parametrize(
    ("request_id", "status", "expected"),
    [
        ("taken", 409, {"error": "A request with id 'taken' is already in progress", "location": "id"}),
        ("bad", 400, {"error": "Bad node", "location": "prompt.1", "node_errors": {"1": ["nope"]}}),
    ],
)
async def test_an_api_error_in_the_route_keeps_its_status_and_body(
    client: httpx.AsyncClient, request_id: str, status: int, expected: dict[str, Any]
) -> None:
    response = await client.post("/prompt", json={**_valid_body(), "id": request_id})

    assert response.status_code == status
    assert response.json() == expected


def test_an_api_error_status_can_be_overridden() -> None:
    error = ApiError("Slow down", status_code=429, retry_after=3)

    assert error.status_code == 429
    assert error.body() == {"error": "Slow down", "retry_after": 3}


async def test_an_unexpected_error_is_500_without_details(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json={**_valid_body(), "id": "boom"})

    assert response.status_code == 500
    assert response.json() == {"error": "Internal error: RuntimeError"}


async def test_a_body_shorter_than_its_content_length_is_a_400_after_the_read_timeout() -> None:
    """Through a real uvicorn: the connection is answered, not held open for ever."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BYTES, read_timeout_s=0.5)

    @app.post("/prompt")
    async def prompt(graph: Graph) -> dict[str, Any]:
        return {"nodes": sorted(graph.prompt)}

    # A socket listening before uvicorn starts: the connection waits in its backlog, no polling for readiness.
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        reader, writer = await asyncio.open_connection(*listening.getsockname())
        writer.write(
            b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"prompt":'
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))[15:])
        body = json.loads(await reader.readexactly(length))
        writer.close()
        assert head.startswith(b"HTTP/1.1 400")
        assert body == {
            "error": "The request body stopped arriving: 10 of 100 bytes received, then nothing for 0.5 s",
            "location": "body",
        }
    finally:
        server.should_exit = True
        await serving


async def test_a_streaming_response_is_not_cut_by_the_read_timeout() -> None:
    """After the whole body, receive() waits for a disconnect for as long as a response streams: no timeout."""
    app = FastAPI()
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BYTES, read_timeout_s=0.2)

    @app.post("/slow")
    async def slow() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(4):
                await asyncio.sleep(0.15)
                yield str(index).encode()

        return StreamingResponse(chunks())

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/slow", content=b"{}")
    assert (response.status_code, response.content) == (200, b"0123")


def _errors_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/located")
    async def located_download() -> None:
        with located("url"):
            raise DownloadError("the server answered 404")

    @app.get("/unlocated")
    async def unlocated_url() -> None:
        raise InvalidUrl("the URL cannot be parsed")

    @app.get("/kept")
    async def kept_location() -> None:
        with located("url"):
            raise BadRequest("bad node", location="prompt.3.inputs")

    @app.get("/internal")
    async def internal() -> None:
        raise TransportError("no answer to GET /queue within 30s")

    @app.post("/graph")
    async def graph(graph: Graph) -> dict[str, Any]:
        return {"nodes": sorted(graph.prompt)}

    return app


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/located", 400, {"error": "the server answered 404", "location": "url"}),
        ("/unlocated", 400, {"error": "the URL cannot be parsed"}),
        ("/kept", 400, {"error": "bad node", "location": "prompt.3.inputs"}),
        ("/internal", 500, {"error": "Internal error: TransportError"}),
    ],
)
async def test_errors_of_the_tree_answer_in_one_place(path: str, status: int, body: dict[str, Any]) -> None:
    transport = httpx.ASGITransport(app=_errors_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get(path)

    assert (response.status_code, response.json()) == (status, body)


@pytest.fixture
async def errors_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client of `_errors_app`, which has no body size limit: bodies deeper than the parser goes fit."""
    transport = httpx.ASGITransport(app=_errors_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client


async def test_an_unknown_route_is_a_json_404(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post("/nowhere", json={})

    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})
    assert response.headers["content-type"] == "application/json"


async def test_a_method_the_route_does_not_take_is_a_json_405_with_allow(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.get("/graph")

    assert (response.status_code, response.json()) == (405, {"error": "Method Not Allowed"})
    assert response.headers["allow"] == "POST"


async def test_a_body_that_is_not_utf8_is_a_400_at_body(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post(
        "/graph", content=b'{"prompt": "\xff"}', headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": "Malformed JSON body: 'utf-8' codec can't decode byte 0xff in position 12: invalid start byte",
        "location": "body",
    }


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[" * 100_000, "array"),
        (b"[" * 100_000 + b"]" * 100_000, "array"),
        (b'{"prompt": {"1": {"class_type": "X", "inputs": {"x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}}}", "array"),
        (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "object"),
    ],
    ids=["unclosed-arrays", "closed-arrays", "inside-an-input", "objects"],
)
async def test_a_body_nested_too_deeply_to_parse_is_a_400_at_body(
    errors_client: httpx.AsyncClient, body: bytes, kind: str
) -> None:
    """Python's parser gives up with a RecursionError, which FastAPI turns into its own 400; it answers in this
    server's shape, like any malformed body."""
    response = await errors_client.post("/graph", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {
        "error": f"Malformed JSON body: maximum recursion depth exceeded while decoding a JSON {kind} from a unicode "
        "string",
        "location": "body",
    }
