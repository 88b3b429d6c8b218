"""Outputs and delivery, end to end: conversion, uploads to every real storage server, signed webhooks
verified by a real receiver, legacy webhooks, system events, and the failure paths of each."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import hf_hub_download
from PIL import Image

from tests.support.files import FileServer
from tests.support.graphs import Graph, img2img, node, solid, txt2img
from tests.support.receiver import Received, WebhookReceiver
from tests.support.server import ApiServer, closed_port, trusting, wait_until
from tests.support.services import Azurite, FakeHub, SeaweedS3

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, fixed").decode()
TOKEN = "tok-never-echoed-3141"


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as hook:
        yield hook


@pytest.fixture(scope="module")
def legacy_receiver() -> Iterator[WebhookReceiver]:
    """For the legacy `webhook`, which is unsigned (a receiver with a secret would refuse it)."""
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def flaky_receiver() -> Iterator[WebhookReceiver]:
    """A receiver of its own for the retry test (which counts every request it gets), started before the server so
    that the server can trust its origin."""
    with WebhookReceiver(secret=SECRET) as hook:
        yield hook


@pytest.fixture(scope="module")
def holding_receiver() -> Iterator[WebhookReceiver]:
    """A receiver of its own for the test that holds a webhook's first attempt (a delay would hit any request)."""
    with WebhookReceiver(secret=SECRET) as hook:
        yield hook


@pytest.fixture(scope="module")
def down_url() -> str:
    """A webhook URL on a loopback port where nothing listens: a receiver that is down."""
    return f"http://127.0.0.1:{closed_port()}/hook"


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    with FileServer(tmp_path_factory.mktemp("uploads")) as files:
        yield files


@pytest.fixture(scope="module")
def delivery_server(
    make_server: Callable[..., ApiServer],
    receiver: WebhookReceiver,
    legacy_receiver: WebhookReceiver,
    flaky_receiver: WebhookReceiver,
    holding_receiver: WebhookReceiver,
    down_url: str,
    uploads: FileServer,
    s3_server: SeaweedS3,
    azurite: Azurite,
    fake_hub: FakeHub,
) -> ApiServer:
    s3_server.create_bucket("outputs")
    azurite.create_container("outputs")
    env = {
        **s3_server.env(),
        # An identity that may write objects but not create buckets, as in a real deployment.
        "AWS_ACCESS_KEY_ID": s3_server.writer_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.writer_secret,
        **azurite.env(),
        **fake_hub.env(),
        "WEBHOOK_SECRET": SECRET,
        "PROMPT_WEBHOOK_RETRIES": "3",
        # The 10-minute retry schedule compressed: 3 attempts at least, then more for 3 s.
        "WEBHOOK_RETRY_WINDOW_S": "3",
        "WEBHOOK_RETRY_BASE_S": "0.1",
        "WEBHOOK_RETRY_MAX_DELAY_S": "0.5",
        "SYSTEM_WEBHOOK_URL": receiver.url_for("/system"),
        "SYSTEM_WEBHOOK_EVENTS": "execution_start, executing, execution_success, executed, file_uploaded",
        "SYSTEM_META_deployment": "tests",
        # The loopback receivers and the upload target are services the operator trusts (the signed receiver is
        # trusted already, as the system webhook's origin). The down receiver too, so that its failure is the
        # refused connection, not the URL guard.
        **trusting(legacy_receiver.url, flaky_receiver.url, holding_receiver.url, down_url, uploads.url),
    }
    return make_server("delivery", **env).start()


def post(server: ApiServer, graph: dict[str, Any], **fields: Any) -> httpx.Response:
    return server.http.post("/prompt", json={"prompt": graph, **fields})


def image(data: bytes) -> Image.Image:
    opened = Image.open(io.BytesIO(data))
    opened.load()
    return opened


def hooks(receiver: WebhookReceiver, path: str, request_id: str, count: int = 1) -> list[Received]:
    """Wait for `count` webhooks on `path` whose body names `request_id`, and return them."""

    def mine(requests: list[Received]) -> list[Received]:
        return [r for r in requests if r.path == path and r.status == 200 and r.json().get("id") == request_id]

    receiver.wait_for(lambda requests: len(mine(requests)) >= count, timeout_s=120)
    return mine(receiver.requests)


# uploads ----------------------------------------------------------------------------------------------


def fetch_uploaded(kind: str, url: str, s3: SeaweedS3, azurite: Azurite, hub: FakeHub, files: FileServer) -> bytes:
    if kind == "s3":
        bucket, key = url.removeprefix("s3://").split("/", 1)
        return s3.get(bucket, key)
    if kind == "azure":
        container, blob = url.removeprefix(azurite.blob_endpoint + "/").split("/", 1)
        return azurite.get(container, blob)
    if kind == "hf":
        name = url.split("/resolve/main/", 1)[1]
        return Path(hf_hub_download("org/outputs", name, endpoint=hub.url, cache_dir=files.root / ".hf")).read_bytes()
    return (files.root / url.removeprefix(files.url + "/")).read_bytes()


@pytest.mark.parametrize("kind", ["s3", "azure", "hf", "http"])
def test_sync_uploads_answer_with_urls_to_valid_images(
    delivery_server: ApiServer,
    kind: str,
    s3_server: SeaweedS3,
    azurite: Azurite,
    fake_hub: FakeHub,
    uploads: FileServer,
) -> None:
    block = {
        "s3": {"s3": {"bucket": "outputs", "prefix": "sync/"}},
        "azure": {"azure_blob_upload": {"container": "outputs", "blob_prefix": "sync/"}},
        "hf": {"hf_upload": {"repo": "org/outputs", "directory": "sync"}},
        "http": {"http_upload": {"url_prefix": f"{uploads.url}/put/"}},
    }[kind]
    response = post(delivery_server, txt2img(64, 48), id=f"upload-{kind}", **block)
    assert response.status_code == 200, response.text
    body = response.json()
    (url,) = body["images"]
    assert url.endswith(f"/upload-{kind}_txt2img_00001_.png")
    assert "/sync/" in url or "/put/" in url
    uploaded = image(fetch_uploaded(kind, url, s3_server, azurite, fake_hub, uploads))
    assert (uploaded.format, uploaded.size) == ("PNG", (64, 48))
    assert body["stats"]["upload_time"] >= 0
    assert delivery_server.files_under("output") == []


@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_an_upload_prefix_is_joined_to_the_file_name_as_given(
    delivery_server: ApiServer, kind: str, s3_server: SeaweedS3, azurite: Azurite
) -> None:
    """The reference server's object keys: `runs/42-` + the name, no '/' added, so objects land where its clients
    look for them."""
    block = {
        "s3": {"s3": {"bucket": "outputs", "prefix": "runs/42-"}},
        "azure": {"azure_blob_upload": {"container": "outputs", "blob_prefix": "runs/42-"}},
    }[kind]
    response = post(delivery_server, solid(8, 8), id=f"prefixed-{kind}", **block)
    assert response.status_code == 200, response.text
    body = response.json()
    key = f"runs/42-prefixed-{kind}_solid_00001_.png"
    if kind == "s3":
        assert body["images"] == [f"s3://outputs/{key}"]
        stored = s3_server.get("outputs", key)
    else:
        assert body["images"] == [f"{azurite.blob_endpoint}/outputs/{key}"]
        stored = azurite.get("outputs", key)
    assert image(stored).size == (8, 8)


def test_an_async_upload_answers_202_and_the_signed_webhook_follows(
    delivery_server: ApiServer, receiver: WebhookReceiver, s3_server: SeaweedS3
) -> None:
    response = post(
        delivery_server,
        solid(24, 24),
        id="async-upload",
        s3={"bucket": "outputs", "prefix": "async/", "async": True},
        webhook_v2=receiver.url,
    )
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "ok" and accepted["id"] == "async-upload"
    assert accepted["prompt"]["2"]["inputs"]["filename_prefix"] == "async-upload_solid"
    (hook,) = hooks(receiver, "/hook", "async-upload")
    assert hook.verified and hook.headers["webhook-id"] == "async-upload"
    body = hook.json()
    assert body["type"] == "prompt.complete"
    assert body["images"] == ["s3://outputs/async/async-upload_solid_00001_.png"]
    assert body["s3"] == {"bucket": "outputs", "prefix": "async/", "async": True}
    assert image(s3_server.get("outputs", "async/async-upload_solid_00001_.png")).size == (24, 24)


def test_an_upload_to_a_missing_bucket_fails_loudly(delivery_server: ApiServer, receiver: WebhookReceiver) -> None:
    sync = post(delivery_server, solid(8, 8), s3={"bucket": "no-such-bucket", "prefix": "x/"})
    assert sync.status_code == 502
    assert sync.json()["error"].startswith("Upload failed: S3 access denied for s3://no-such-bucket/x/")
    assert delivery_server.files_under("output") == []

    accepted = post(
        delivery_server,
        solid(8, 8),
        id="missing-bucket",
        s3={"bucket": "no-such-bucket", "prefix": "x/", "async": True},
        webhook_v2=receiver.url,
    )
    assert accepted.status_code == 202
    (hook,) = hooks(receiver, "/hook", "missing-bucket")
    assert hook.json()["type"] == "prompt.failed" and "Upload failed" in hook.json()["error"]


# conversion -------------------------------------------------------------------------------------------


def converted(server: ApiServer, graph: dict[str, Any], convert: dict[str, Any]) -> tuple[str, bytes]:
    response = post(server, graph, convert_output=convert)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["filenames"][0], base64.b64decode(body["images"][0])


def test_jpeg_conversion_honours_its_options(delivery_server: ApiServer) -> None:
    graph = img2img(base64.b64encode(_noise_png()).decode(), size=64)
    name, low = converted(delivery_server, graph, {"format": "jpeg", "options": {"quality": 5}})
    _, high = converted(delivery_server, graph, {"format": "jpeg", "options": {"quality": 95}})
    _, progressive = converted(delivery_server, graph, {"format": "jpg", "options": {"progressive": True}})
    assert name.endswith(".jpeg")
    assert image(low).format == image(high).format == "JPEG"
    assert len(low) < len(high)
    assert image(progressive).info.get("progressive") and not image(high).info.get("progressive")


def test_webp_conversion_honours_its_options(delivery_server: ApiServer) -> None:
    graph = solid(32, 32, color=0x336699)
    name, lossless = converted(delivery_server, graph, {"format": "webp", "options": {"lossless": True}})
    _, lossy = converted(delivery_server, graph, {"format": "webp", "options": {"quality": 1}})
    assert name.endswith(".webp") and image(lossless).format == "WEBP"
    assert image(lossless).convert("RGB").getpixel((5, 5)) == (0x33, 0x66, 0x99)
    assert lossless != lossy


def test_conversion_options_are_validated_for_the_format(delivery_server: ApiServer) -> None:
    response = post(delivery_server, solid(8, 8), convert_output={"format": "jpeg", "options": {"lossless": True}})
    assert response.status_code == 400
    assert response.json()["location"] == "convert_output.jpeg.options.lossless"
    assert "lossless" in response.json()["error"]


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((80, 80), 64).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# webhooks ---------------------------------------------------------------------------------------------


def test_a_batch_of_four_makes_four_uploads_four_legacy_webhooks_and_one_v2(
    delivery_server: ApiServer, receiver: WebhookReceiver, legacy_receiver: WebhookReceiver, s3_server: SeaweedS3
) -> None:
    uploaded = post(delivery_server, txt2img(64, 64, batch=4), id="batch-up", s3={"bucket": "outputs", "prefix": "b"})
    assert uploaded.status_code == 200, uploaded.text
    assert len(uploaded.json()["images"]) == 4
    for url in uploaded.json()["images"]:
        assert image(s3_server.get("outputs", url.removeprefix("s3://outputs/"))).size == (64, 64)

    accepted = post(
        delivery_server,
        txt2img(64, 64, batch=4),
        id="batch-hooks",
        webhook=legacy_receiver.url_for("/legacy"),
        webhook_v2=receiver.url,
    )
    assert accepted.status_code == 202
    legacy = hooks(legacy_receiver, "/legacy", "batch-hooks", count=4)
    assert len(legacy) == 4 and {r.json()["event"] for r in legacy} == {"output.complete"}
    assert all("webhook-signature" not in r.headers for r in legacy)  # the legacy webhook is unsigned
    assert sorted(image(base64.b64decode(r.json()["image"])).size for r in legacy) == [(64, 64)] * 4
    (v2,) = hooks(receiver, "/hook", "batch-hooks")
    assert v2.verified and len(v2.json()["images"]) == 4 and len(v2.json()["filenames"]) == 4


def test_a_receiver_that_fails_twice_gets_the_webhook_once_with_one_id(
    delivery_server: ApiServer, flaky_receiver: WebhookReceiver
) -> None:
    flaky = flaky_receiver
    flaky.fail_next(2, status=500)
    assert post(delivery_server, solid(8, 8), id="retried", webhook_v2=flaky.url).status_code == 202
    (delivered,) = hooks(flaky, "/hook", "retried")
    attempts = flaky.requests
    assert [r.status for r in attempts] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in attempts} == {"retried"}
    assert len({r.headers["webhook-signature"] for r in attempts}) == 1
    assert all(r.verified for r in attempts)
    assert delivered.json()["type"] == "prompt.complete"


def test_a_receiver_that_is_down_gets_retries_for_the_whole_window_then_an_error_is_logged(
    delivery_server: ApiServer, down_url: str
) -> None:
    down = down_url
    assert post(delivery_server, solid(8, 8), id="nobody-home", webhook_v2=down).status_code == 202

    def failure_logged() -> list[dict[str, Any]]:
        return [
            e
            for e in delivery_server.log_entries()
            if e.get("msg") == "webhook delivery failed" and e.get("url") == down
        ]

    (entry,) = wait_until(failure_logged, 120, "the failed delivery to be logged")
    # More than PROMPT_WEBHOOK_RETRIES: the attempts go on until WEBHOOK_RETRY_WINDOW_S is over.
    assert entry["attempts"] > 3 and entry["level"] == "error"
    assert "ConnectError" in entry["last_error"]
    assert post(delivery_server, solid(8, 8)).status_code == 200  # the server keeps serving


def noisy(width: int, height: int, prefix: str = "noisy") -> Graph:
    """A PNG that does not compress: about 3 bytes a pixel."""
    return {
        "1": node("EmptyImage", width=width, height=height, batch_size=1, color=0x808080),
        "2": node("ImageAddNoise", image=["1", 0], seed=1, strength=0.5),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }


def test_a_large_output_is_streamed_to_webhook_v2_and_kept_on_disk_until_delivered(
    delivery_server: ApiServer, holding_receiver: WebhookReceiver
) -> None:
    """Over a MiB of output, so the body is streamed from disk: signed in one pass, streamed again for the retry
    (the first attempt is held past its deadline). The job ends before its webhooks (its id is free again), while
    its output file stays until the webhook is delivered."""
    hook = holding_receiver
    hook.delay_next(1, 120.0)
    accepted = post(delivery_server, noisy(768, 768), id="large-hook", webhook_v2=hook.url)
    assert accepted.status_code == 202
    hook.wait_for(lambda requests: len(requests) >= 1, timeout_s=120)
    assert [p.name for p in delivery_server.files_under("output") if p.name.startswith("large-hook")]
    assert post(delivery_server, solid(8, 8), id="large-hook").status_code == 200

    # The first attempt's answer never came (the receiver holds it): the retry is the delivery.
    first, delivered = hook.wait_for(lambda requests: len(requests) >= 2, timeout_s=120)[:2]
    assert first.body == delivered.body and first.verified and delivered.verified
    assert first.headers["webhook-signature"] == delivered.headers["webhook-signature"]
    body = delivered.json()
    (data,) = [base64.b64decode(text, validate=True) for text in body["images"]]
    assert len(data) > 1024 * 1024 and image(data).size == (768, 768)
    assert body["type"] == "prompt.complete" and body["filenames"][0].startswith("large-hook")
    wait_until(lambda: delivery_server.files_under("output") == [], 60, "the output to be deleted after delivery")


def test_a_long_string_input_is_echoed_exactly_by_the_response_the_202_and_the_webhook(
    delivery_server: ApiServer, receiver: WebhookReceiver
) -> None:
    text = 'a long note ☕ "quoted" \\ \n' * 120_000
    graph = solid(8, 8)
    graph["2"]["inputs"]["note"] = text  # an input SaveImage does not take: ComfyUI ignores it, we echo it
    sync = post(delivery_server, graph, id="long-echo")
    assert sync.status_code == 200, sync.text[:500]
    assert int(sync.headers["content-length"]) == len(sync.content)
    assert sync.json()["prompt"]["2"]["inputs"]["note"] == text
    accepted = post(delivery_server, graph, id="long-echo-async", webhook_v2=receiver.url)
    assert accepted.status_code == 202
    assert accepted.json()["prompt"]["2"]["inputs"]["note"] == text
    (webhook,) = hooks(receiver, "/hook", "long-echo-async")
    assert webhook.verified and webhook.json()["prompt"]["2"]["inputs"]["note"] == text


def test_an_execution_failure_after_202_is_a_prompt_failed_webhook(
    delivery_server: ApiServer, receiver: WebhookReceiver
) -> None:
    (delivery_server.base / "input" / "broken.png").write_text("not an image")
    accepted = post(delivery_server, img2img("broken.png"), id="fails-later", webhook_v2=receiver.url)
    assert accepted.status_code == 202
    (hook,) = hooks(receiver, "/hook", "fails-later")
    body = hook.json()
    assert body["type"] == "prompt.failed" and hook.verified
    assert body["node_id"] == "8" and body["node_type"] == "LoadImage"
    assert body["exception_type"] == "PIL.UnidentifiedImageError"


def test_system_events_carry_the_request_id_and_metadata(delivery_server: ApiServer, receiver: WebhookReceiver) -> None:
    response = post(delivery_server, solid(8, 8), id="watched", s3={"bucket": "outputs", "prefix": "sys/"})
    assert response.status_code == 200

    def mine(requests: list[Received]) -> list[dict[str, Any]]:
        found = []
        for r in requests:
            if r.path != "/system":
                continue
            body = r.json()
            data = body["data"]
            if data.get("data", {}).get("prompt_id") == "watched" or "watched_" in data.get("url", ""):
                found.append(body)
        return found

    receiver.wait_for(
        lambda requests: {"comfy.execution_success", "storage.file_uploaded"} <= {b["event"] for b in mine(requests)},
        timeout_s=60,
    )
    events = mine(receiver.requests)
    names = [event["event"] for event in events]
    assert names.count("comfy.execution_success") == 1
    assert names.index("comfy.execution_start") < names.index("comfy.execution_success")
    assert all(event["metadata"] == {"deployment": "tests"} for event in events)
    system_requests = [r for r in receiver.requests if r.path == "/system"]
    assert all(r.verified for r in system_requests)


def test_credentials_never_appear_in_a_response_or_webhook(
    delivery_server: ApiServer, receiver: WebhookReceiver
) -> None:
    credentials = [{"url_pattern": "https://private.example/**", "auth": {"type": "bearer", "token": TOKEN}}]
    sync = post(delivery_server, solid(8, 8), credentials=credentials)
    assert sync.status_code == 200 and TOKEN not in sync.text
    accepted = post(delivery_server, solid(8, 8), id="secretive", credentials=credentials, webhook_v2=receiver.url)
    assert TOKEN not in accepted.text
    hooks(receiver, "/hook", "secretive")
    assert all(TOKEN not in r.body for r in receiver.requests)
    assert TOKEN not in json.dumps(delivery_server.log_entries())


def test_an_async_upload_that_fails_without_a_webhook_is_logged_with_its_cause(
    delivery_server: ApiServer, down_url: str
) -> None:
    """After the 202 nobody is listening: the error line is the failure's only trace, so it must name it."""
    prefix = down_url.removesuffix("/hook")
    body = {"url_prefix": f"{prefix}/uploads/", "async": True}
    assert post(delivery_server, solid(8, 8), id="silent-upload", http_upload=body).status_code == 202

    def failure_logged() -> list[dict[str, Any]]:
        return [
            e
            for e in delivery_server.log_entries()
            if e.get("msg") == "async request failed" and e.get("request_id") == "silent-upload"
        ]

    (entry,) = wait_until(failure_logged, 120, "the failed upload to be logged")
    assert entry["level"] == "error" and entry["status"] == 502
    assert entry["error"].startswith("Upload failed: ") and "ConnectError" in entry["error"]
    assert delivery_server.files_under("output") == []


@pytest.mark.parametrize(
    ("block", "location"),
    [
        ({"s3": {"bucket": "not a bucket", "prefix": "x"}}, "s3.bucket"),
        ({"s3": {"bucket": "a/b", "prefix": "x"}}, "s3.bucket"),
        ({"azure_blob_upload": {"container": "Upper_Case"}}, "azure_blob_upload.container"),
        ({"hf_upload": {"repo": "no-owner"}}, "hf_upload.repo"),
    ],
    ids=["s3-space", "s3-slash", "azure-container", "hf-repo"],
)
def test_an_invalid_upload_block_is_a_400_before_the_prompt_runs(
    delivery_server: ApiServer, block: dict[str, Any], location: str
) -> None:
    response = post(delivery_server, solid(8, 8), **block)
    assert response.status_code == 400, response.text
    assert response.json()["location"] == location
    assert delivery_server.files_under("output") == []
