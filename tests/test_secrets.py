"""The canary sweep: one value in every secret slot at once, at LOG_LEVEL=debug, and it shows up nowhere.

Slots: request `credentials` of every kind (bearer, basic, header, query, s3), a signed query string in an input
URL, HTTP_AUTH_HEADER_VALUE, AZURE_STORAGE_KEY, HF_TOKEN and WEBHOOK_SECRET. Places searched: every response
body, every log line (ours and ComfyUI's, forwarded), and every webhook and system-event payload. The listeners
first prove that each credential really was used where it belongs.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from svix.webhooks import Webhook

from tests.support.graphs import Graph, node, png_bytes
from tests.support.listeners import Listener
from tests.support.receiver import Received, WebhookReceiver
from tests.support.server import ApiServer, trusting, wait_until

CANARY = "Y2FuYXJ5LXNlY3JldC0wMDQyLXZhbHVl"  # base64, so that it is also a valid WEBHOOK_SECRET
# Every spelling in which a leak would show: as is, percent-encoded, and inside a Basic Authorization header.
FORMS = (CANARY, quote(CANARY, safe=""), base64.b64encode(f"alice:{CANARY}".encode()).decode())


@dataclass
class Sweep:
    server: ApiServer
    files: Listener
    refused: Listener
    hooks: WebhookReceiver
    responses: list[httpx.Response]


def credentials(files: Listener) -> list[dict[str, object]]:
    return [
        {"url_pattern": f"{files.url}/bearer.png", "auth": {"type": "bearer", "token": CANARY}},
        {
            "url_pattern": f"{files.url}/basic.png",
            "auth": {"type": "basic", "username": "alice", "password": CANARY},
        },
        {
            "url_pattern": f"{files.url}/header.png",
            "auth": {"type": "header", "header_name": "X-Api-Key", "header_value": CANARY},
        },
        {
            "url_pattern": f"{files.url}/query.png",
            "auth": {"type": "query", "query_param": "token", "query_value": CANARY},
        },
        {
            "url_pattern": "s3://canary-bucket/**",
            "auth": {"type": "s3", "access_key_id": CANARY, "secret_access_key": CANARY, "session_token": CANARY},
        },
    ]


def inputs_graph(files: Listener) -> Graph:
    urls = [
        f"{files.url}/bearer.png",
        f"{files.url}/basic.png",
        f"{files.url}/header.png",
        f"{files.url}/query.png",
        f"{files.url}/signed.png?X-Amz-Credential={CANARY}&X-Amz-Signature={CANARY}",
        f"{files.url}/env.png",  # no request credentials: HTTP_AUTH_HEADER_* applies
    ]
    graph: Graph = {}
    for index, url in enumerate(urls):
        graph[str(10 + index)] = node("LoadImage", image=url)
        graph[str(20 + index)] = node("SaveImage", images=[str(10 + index), 0], filename_prefix=f"in{index}")
    return graph


@pytest.fixture(scope="module")
def sweep(make_server: Callable[..., ApiServer]) -> Iterator[Sweep]:
    with (
        Listener(body=png_bytes(16, 16, (1, 2, 3))) as files,
        Listener() as refused,
        WebhookReceiver(secret=CANARY) as hooks,
    ):
        server = make_server(
            "secrets",
            LOG_LEVEL="debug",
            HTTP_AUTH_HEADER_NAME="X-Env-Auth",
            HTTP_AUTH_HEADER_VALUE=CANARY,
            HTTP_AUTH_ALLOWED_ORIGINS=files.url,
            AZURE_STORAGE_ACCOUNT="canaryaccount",
            AZURE_STORAGE_KEY=CANARY,
            HF_TOKEN=CANARY,
            WEBHOOK_SECRET=CANARY,
            SYSTEM_WEBHOOK_URL=hooks.url_for("/system"),
            SYSTEM_WEBHOOK_EVENTS="all",
            **trusting(files.url, hooks.url),
        )
        (server.base / "models" / "loras").mkdir(parents=True, exist_ok=True)
        server.start()
        post = server.http.post
        graph = inputs_graph(files)
        responses = [
            # Sync: the response carries the images and the preprocessed prompt.
            post("/prompt", json={"prompt": graph, "id": "canary-sync", "credentials": credentials(files)}),
            # Async: the same through a signed webhook.
            post(
                "/prompt",
                json={
                    "prompt": graph,
                    "id": "canary-async",
                    "credentials": credentials(files),
                    "webhook_v2": hooks.url_for("/prompt"),
                },
            ),
            # A failure whose URL carries the signed query: the error names the URL without it.
            post(
                "/prompt",
                json={
                    "prompt": {
                        "1": node("LoadImage", image=f"{refused.url}/x.png?sig={CANARY}"),
                        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
                    },
                    "credentials": credentials(files),
                },
            ),
            # /download with request auth and a signed query, waited for and in the background.
            post(
                "/download",
                json={
                    "url": f"{files.url}/model.safetensors?sig={CANARY}",
                    "model_type": "loras",
                    "wait": True,
                    "auth": {"type": "bearer", "token": CANARY},
                },
            ),
            post("/download", json={"url": f"{refused.url}/m.safetensors?sig={CANARY}", "model_type": "loras"}),
        ]
        wait_until(
            lambda: any(request.path == "/prompt" for request in hooks.requests), 300, "the prompt.complete webhook"
        )
        wait_until(
            lambda: any("execution_success" in request.body for request in hooks.requests),
            120,
            "the system events of the async prompt",
        )
        yield Sweep(server, files, refused, hooks, responses)


def test_every_credential_reached_its_own_url(sweep: Sweep) -> None:
    by_path = {path.split("?", 1)[0]: (path, headers) for _, path, headers in sweep.files.requests}
    assert by_path["/bearer.png"][1]["Authorization"] == f"Bearer {CANARY}"
    assert by_path["/basic.png"][1]["Authorization"] == f"Basic {FORMS[2]}"
    assert by_path["/header.png"][1]["X-Api-Key"] == CANARY
    assert f"token={CANARY}" in by_path["/query.png"][0]
    assert f"X-Amz-Signature={CANARY}" in by_path["/signed.png"][0]
    assert by_path["/env.png"][1]["X-Env-Auth"] == CANARY
    assert by_path["/model.safetensors"][1]["Authorization"] == f"Bearer {CANARY}"
    assert sweep.refused.connections == 0


def test_the_requests_did_what_they_should(sweep: Sweep) -> None:
    sync, accepted, refused, download, background = sweep.responses
    assert sync.status_code == 200, sync.text
    assert len(sync.json()["images"]) == 6
    assert accepted.status_code == 202, accepted.text
    assert refused.status_code == 400 and refused.json()["location"] == "prompt.1.inputs.image"
    assert f"{sweep.refused.url}/x.png?<redacted> resolves to a loopback address" in refused.json()["error"]
    assert download.status_code == 200, download.text
    assert download.json()["url"] == f"{sweep.files.url}/model.safetensors?<redacted>"
    assert background.status_code == 400 and background.json()["location"] == "url"


def test_the_canary_is_in_no_response_body(sweep: Sweep) -> None:
    for response in sweep.responses:
        assert not any(form in response.text for form in FORMS), response.text[:500]


def test_the_canary_is_in_no_log_line(sweep: Sweep) -> None:
    lines = sweep.server.log_path.read_text(errors="replace").splitlines()
    assert len(lines) > 50  # debug logging was on
    leaked = [line for line in lines if any(form in line for form in FORMS)]
    assert leaked == []


def test_the_canary_is_in_no_webhook_or_system_event(sweep: Sweep) -> None:
    received: list[Received] = sweep.hooks.requests
    kinds = {request.json().get("type") or request.json().get("event") for request in received}
    assert "prompt.complete" in kinds and "storage.file_downloaded" in kinds and "comfy.execution_success" in kinds
    for request in received:
        assert request.verified, request.path
        assert not any(form in request.body for form in FORMS), request.body[:500]
    downloaded = [request.json() for request in received if request.json().get("event") == "storage.file_downloaded"]
    assert any(event["data"]["url"].endswith("/signed.png?<redacted>") for event in downloaded)
    # The receiver verified each signature with the secret: the secret signs, it never travels.
    complete = next(request for request in received if request.path == "/prompt")
    Webhook(CANARY).verify(complete.body, complete.headers)
