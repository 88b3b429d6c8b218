"""Static bearer auth in process: API_KEYS and API_KEYS_FILE, the middleware's answers in each route family's error
shape, the open paths, the constant-time comparison's structure, the OpenAPI scheme, and keys kept out of logs.

With a real server and ComfyUI: tests/test_auth.py."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from comfyui_api.api import auth
from comfyui_api.api.auth import BearerAuth, install_bearer_auth
from comfyui_api.api.handlers import install_error_handlers
from comfyui_api.api.middleware import RequestContext
from comfyui_api.app import create_app
from comfyui_api.comfy.process import ComfyProcess
from comfyui_api.config import ConfigError, Settings, dump_for_log, load_settings

KEYS = ("key-one-0123456789", "key-two-abcdefghij")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests happen to run in."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def _app(keys: tuple[str, ...]) -> FastAPI:
    """Routes of both families, each answering 200 when reached; auth installed as create_app installs it."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/prompt")
    async def prompt(payload: dict[str, Any]) -> dict[str, Any]:
        return {"echo": payload}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/ready")
    async def ready() -> str:
        return "ready"

    @app.get("/api/v2/health")
    async def v2_health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v2/jobs")
    async def v2_jobs() -> dict[str, list[str]]:
        return {"jobs": []}

    if keys:
        install_bearer_auth(app, tuple(SecretStr(key) for key in keys))
    app.add_middleware(RequestContext)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(_app(KEYS)) as client:
        yield client


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# Without keys ---------------------------------------------------------------------------------------------------


async def test_without_keys_every_route_is_open() -> None:
    async with _client(_app(())) as client:
        assert (await client.post("/prompt", json={"a": 1})).status_code == 200
        assert (await client.get("/api/v2/jobs")).status_code == 200
        assert (await client.post("/prompt", json={"a": 1}, headers=_bearer("anything"))).status_code == 200


def test_by_default_no_keys_are_configured() -> None:
    assert load_settings().api_keys == ()
    assert load_settings(api_keys="").api_keys == ()  # `API_KEYS: ""` in a manifest means unset


# The reference-compatible family --------------------------------------------------------------------------------


async def test_a_request_without_a_key_is_401_in_this_servers_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json={"a": 1})

    assert response.status_code == 401
    assert response.json() == {
        "error": "Missing bearer token: send Authorization: Bearer <key>",
        "location": "authorization",
    }
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"


async def test_a_wrong_key_is_401_invalid_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/prompt", json={"a": 1}, headers=_bearer("key-one-012345678"))  # a prefix

    assert response.status_code == 401
    assert response.json() == {"error": "Invalid bearer token", "location": "authorization"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    "value",
    [
        KEYS[0],  # no scheme
        f"Basic {KEYS[0]}",
        "Bearer",
        "Bearer   ",
    ],
)
async def test_an_authorization_header_without_a_bearer_token_counts_as_missing(
    client: httpx.AsyncClient, value: str
) -> None:
    response = await client.post("/prompt", json={"a": 1}, headers={"Authorization": value})

    assert response.status_code == 401
    assert response.json()["error"].startswith("Missing bearer token")


async def test_two_authorization_headers_are_refused_even_if_one_holds_a_key(client: httpx.AsyncClient) -> None:
    headers = [("Authorization", f"Bearer {KEYS[0]}"), ("Authorization", "Bearer other")]
    response = await client.post("/prompt", json={"a": 1}, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"] == "Invalid bearer token"


@pytest.mark.parametrize("key", KEYS)
async def test_any_of_the_keys_lets_the_request_through(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post("/prompt", json={"a": 1}, headers=_bearer(key))

    assert response.status_code == 200
    assert response.json() == {"echo": {"a": 1}}


@pytest.mark.parametrize("value", [f"bearer {KEYS[1]}", f"BEARER  {KEYS[1]}", f"  Bearer {KEYS[1]}  "])
async def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    client: httpx.AsyncClient, value: str
) -> None:
    response = await client.post("/prompt", json={"a": 1}, headers={"Authorization": value})

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/api/v2/health"])
async def test_the_probes_need_no_key(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
    # A wrong key on a probe is not checked either: a probe configured with a stale key keeps working.
    assert (await client.get(path, headers=_bearer("stale"))).status_code == 200


async def test_an_unknown_route_is_401_too_without_a_key(client: httpx.AsyncClient) -> None:
    """Which routes exist is not told to a caller without a key."""
    assert (await client.get("/nowhere")).status_code == 401
    assert (await client.get("/nowhere", headers=_bearer(KEYS[0]))).status_code == 404


async def test_a_refused_request_body_is_never_read(client: httpx.AsyncClient) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:  # a body that would never end: only a server that does not read it can answer
            yield b"x" * 65536

    response = await client.post("/prompt", content=endless(), headers={"content-type": "application/json"})

    assert response.status_code == 401


async def test_a_websocket_without_a_key_is_closed_before_it_is_accepted() -> None:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    await BearerAuth(_unreachable, [SecretStr(KEYS[0])])(scope, receive, send)

    assert messages == [{"type": "websocket.close", "code": 1008}]


async def _unreachable(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the request reached the app")


# The Comfy API v2 family ----------------------------------------------------------------------------------------


async def test_a_v2_request_without_a_key_gets_the_v2_error_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v2/jobs")

    assert response.status_code == 401
    # ErrorEnvelope of the comfy-sdk 0.5.0 contract (spec/openapi.yaml): error.code and error.message required,
    # `unauthorized` its code for a missing or invalid credential.
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "Missing bearer token: send Authorization: Bearer <key>"}
    }
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_v2_request_with_a_wrong_key_gets_the_v2_error_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v2/jobs", headers=_bearer("wrong"))

    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthorized", "message": "Invalid bearer token"}}
    assert (await client.get("/api/v2/jobs", headers=_bearer(KEYS[1]))).status_code == 200


@pytest.mark.parametrize(
    ("path", "v2"), [("/api/v2", True), ("/api/v2/assets/x", True), ("/api/v20", False), ("/api/v2x/jobs", False)]
)
def test_the_family_is_chosen_by_the_path_prefix(path: str, v2: bool) -> None:
    body = auth._error_body(path, "m")

    assert (body == {"error": {"code": "unauthorized", "message": "m"}}) is v2


# The comparison -------------------------------------------------------------------------------------------------


def test_every_key_is_compared_in_constant_time_without_stopping_at_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    middleware = BearerAuth(_unreachable, [SecretStr(key) for key in (*KEYS, "key-three")])

    assert middleware.accepts(KEYS[0].encode()) is True  # the first key: the other two are compared anyway
    assert len(calls) == 3
    calls.clear()
    assert middleware.accepts(b"short") is False
    assert len(calls) == 3
    # Digests, all of one length: neither a key's length nor a shared prefix shows in the comparison's time.
    assert {len(a) for a, _ in calls} | {len(b) for _, b in calls} == {32}
    assert all(KEYS[0].encode() not in digest for digest in middleware.digests)


def test_the_middleware_refuses_to_be_built_without_keys() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        BearerAuth(_unreachable, [])


# Settings -------------------------------------------------------------------------------------------------------


def test_api_keys_are_comma_separated_and_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", f" {KEYS[0]} ,{KEYS[1]},")

    keys = load_settings().api_keys

    assert [key.get_secret_value() for key in keys] == list(KEYS)


def test_api_keys_file_holds_one_key_per_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2025-01\n{KEYS[0]}\n\n  {KEYS[1]}  \n", encoding="utf-8")
    monkeypatch.setenv("API_KEYS_FILE", str(path))

    settings = load_settings()

    assert [key.get_secret_value() for key in settings.api_keys] == list(KEYS)
    assert settings.api_keys_file == path


async def test_keys_from_the_file_open_the_routes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEYS[1]}\n", encoding="utf-8")

    async with _client(_server_app(tmp_path, api_keys_file=path)) as client:
        assert (await client.post("/interrupt", json={"id": "nobody"})).status_code == 401
        # Reaches the route, which answers without ComfyUI for an unknown id.
        response = await client.post("/interrupt", json={"id": "nobody"}, headers=_bearer(KEYS[1]))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "API_KEYS_FILE: cannot read"),
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        (b"\xff\xfe", "is not UTF-8 text"),
        ("good-key\nbad key with spaces\n", "(number 2) has characters a bearer token cannot carry"),
    ],
)
def test_a_key_file_that_gives_no_usable_keys_stops_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "keys"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    monkeypatch.setenv("API_KEYS_FILE", str(path))

    with pytest.raises(ConfigError) as raised:
        load_settings()

    message = str(raised.value)
    assert message.startswith("invalid configuration: API_KEYS_FILE: ")
    assert problem in message
    assert "bad key" not in message  # the offending key is named by position, never shown


def test_an_unreadable_key_file_is_named_with_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS_FILE", str(tmp_path))  # a folder

    with pytest.raises(ConfigError, match=r"^invalid configuration: API_KEYS_FILE: cannot read .*: Is a directory$"):
        load_settings()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (" , ,", "API_KEYS: Value error, holds no key"),
        ("good,sécret", "API_KEYS: Value error, a key (number 2) has characters a bearer token cannot carry"),
        ("a=b", "API_KEYS: Value error, a key (number 1) has characters"),
    ],
)
def test_api_keys_without_usable_keys_stop_startup(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("API_KEYS", value)

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert problem in str(raised.value)
    assert "sécret" not in str(raised.value)


def test_both_variables_set_stop_startup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEYS[0]}\n", encoding="utf-8")
    monkeypatch.setenv("API_KEYS", KEYS[1])
    monkeypatch.setenv("API_KEYS_FILE", str(path))

    with pytest.raises(ConfigError, match=r"^invalid configuration: API_KEYS and API_KEYS_FILE are both set"):
        load_settings()


def test_keys_are_secret_in_the_settings_logged_at_startup() -> None:
    dumped = json.dumps(dump_for_log(Settings(api_keys=",".join(KEYS))))

    assert all(key not in dumped for key in KEYS)
    assert '"api_keys": ["**********", "**********"]' in dumped


# Logs -----------------------------------------------------------------------------------------------------------


async def test_the_request_log_line_carries_no_key(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        await client.post("/prompt", json={"a": 1}, headers=_bearer(KEYS[0]))
        await client.post("/prompt", json={"a": 1}, headers=_bearer(KEYS[1] + "x"))

    lines = [record for record in caplog.records if record.getMessage() == "request"]
    assert [(record.__dict__["path"], record.__dict__["status"]) for record in lines] == [
        ("/prompt", 200),
        ("/prompt", 401),
    ]
    logged = " ".join(json.dumps(record.__dict__, default=str) for record in caplog.records)
    assert all(key not in logged for key in KEYS)


# The OpenAPI document -------------------------------------------------------------------------------------------


def _server_app(tmp_path: Path, **settings: Any) -> FastAPI:
    """The real app, ComfyUI never started."""
    settings = Settings(comfy_home=tmp_path / "comfy", cache_dir=tmp_path / "cache", **settings)
    return create_app(settings, process=ComfyProcess([], {}))


def test_without_keys_the_document_declares_no_security(tmp_path: Path) -> None:
    document = _server_app(tmp_path).openapi()

    assert "security" not in document
    assert "securitySchemes" not in document.get("components", {})
    # Comfy API v2's routes list their 401 as its contract does, keys or not.
    own = {path: item for path, item in document["paths"].items() if not path.startswith("/api/v2/")}
    assert all("401" not in op["responses"] for item in own.values() for op in item.values())


async def test_with_keys_the_document_declares_the_bearer_scheme(tmp_path: Path) -> None:
    app = _server_app(tmp_path, api_keys=KEYS[0])
    document = app.openapi()

    assert document["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    paths = document["paths"]
    assert paths["/health"]["get"]["security"] == [] and paths["/ready"]["get"]["security"] == []
    assert "401" not in paths["/health"]["get"]["responses"]
    unauthorized = paths["/prompt"]["post"]["responses"]["401"]
    assert unauthorized["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "security" not in paths["/prompt"]["post"]  # the document's default applies
    # The document itself stays open, and says the same when asked over HTTP.
    async with _client(app) as client:
        for path in ("/docs", "/docs/json", "/openapi.json", "/docs/yaml"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/docs/json")).json()["security"] == [{"bearerAuth": []}]
