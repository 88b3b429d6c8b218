"""Delivery's decisions: a sync answer and when its job ends, an async request's 202 and its webhook (complete or
failed; with both `webhook` and `webhook_v2`, where each goes), an upload's failure as a 502, and the checks that
refuse a request before any work starts.

The runner is real, over FakeComfy (tests/unit/fake_pipeline.py). The uploader and the webhook sender are stand-ins
that record what they are given, so that what Delivery hands them is checked here, in process; the real uploads
(S3, Azure, Hugging Face, HTTP servers) and the real webhooks (signed, retried, streamed) are tested in
tests/test_storage.py, tests/test_delivery.py, test_webhooks.py and test_webhook_bodies.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.errors import BadRequest, UploadError, UploadFailed
from comfyui_api.pipeline.delivery import Answer, Delivery
from comfyui_api.storage.net import UrlGuard
from comfyui_api.webhooks.body import JsonBody
from tests.unit.fake_comfy import failed, saved
from tests.unit.fake_pipeline import OUTPUT, REQUEST_ID, Pipeline, delivery_for, pipeline, request

# A receiver on loopback, trusted by the guard as an operator's origin would be (nothing listens: nothing is sent).
HOOK_ORIGIN = "http://127.0.0.1:8999"
HOOK = f"{HOOK_ORIGIN}/hook"
LEGACY_HOOK = f"{HOOK_ORIGIN}/legacy"
EXECUTION_ERROR = {"node_id": "9", "node_type": "SaveImage", "exception_type": "ValueError", "exception_message": "bad"}


@dataclass(frozen=True)
class Sent:
    url: str
    body: dict[str, Any]
    message_id: str | None
    signed: bool


class Webhooks:
    """Stands in for WebhookSender: records each webhook as the receiver would read it (its files are read now, as
    the real sender reads them while they exist)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send(
        self, url: str, payload: dict[str, Any], *, message_id: str | None = None, signed: bool = True
    ) -> bool:
        self.sent.append(Sent(url, json.loads(JsonBody(payload).encode()), message_id, signed))
        return True


class Uploads:
    """Stands in for Uploader: records the (file, URL) pairs, each file's content read as it is uploaded, and fails
    with `failure` when set."""

    def __init__(self) -> None:
        self.uploaded: list[tuple[Path, str, bytes]] = []
        self.failure: UploadError | None = None

    async def upload_all(self, files: list[tuple[Path, str]]) -> list[str]:
        if self.failure is not None:
            raise self.failure
        self.uploaded += [(path, url, path.read_bytes()) for path, url in files]
        return [url for _, url in files]


@dataclass
class Parts:
    p: Pipeline
    delivery: Delivery
    webhooks: Webhooks
    uploads: Uploads


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    async with pipeline(tmp_path) as p:
        webhooks, uploads = Webhooks(), Uploads()
        delivery = delivery_for(p, uploader=uploads, webhooks=webhooks, guard=UrlGuard(trusted_origins=[HOOK_ORIGIN]))
        yield Parts(p, delivery, webhooks, uploads)
        await delivery.aclose()


def body_of(answer: Answer) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(answer.body.encode())
    return result


def base64_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


async def answered(parts: Parts, handling: asyncio.Task[Answer], end: Callable[[str], dict[str, Any]]) -> Answer:
    """Play ComfyUI for a sync request: once its prompt is queued, end it with the entry `end(prompt_id)` gives."""
    p = parts.p
    await p.comfy.until(p.queued)
    (prompt_id,) = p.queued()
    p.comfy.end(prompt_id, end(prompt_id))
    return await handling


async def test_a_sync_request_answers_200_with_its_images_and_ends_its_job_once_sent(parts: Parts) -> None:
    p = parts.p
    handling = asyncio.create_task(parts.delivery.handle(request(), extra={"input": {"seed": 7}}))

    answer = await answered(parts, handling, lambda _: saved(p.output_dir, OUTPUT))

    assert answer.status_code == 200
    body = body_of(answer)
    assert body["id"] == REQUEST_ID
    assert body["input"] == {"seed": 7}
    assert body["prompt"]["9"]["inputs"]["filename_prefix"] == f"{REQUEST_ID}_out"
    assert body["images"] == [base64_of(p.output_dir / OUTPUT)]
    assert body["filenames"] == [OUTPUT]
    assert {"comfy_execution", "preprocess_time", "upload_time", "total_time"} <= set(body["stats"])
    assert "credentials" not in body
    # The body reads the files when it is written: the job ends only once it has been sent.
    assert p.jobs.get(REQUEST_ID) is not None
    assert answer.sent is not None
    await answer.sent()
    assert p.jobs.get(REQUEST_ID) is None
    assert not (p.output_dir / OUTPUT).exists()
    assert parts.webhooks.sent == []


async def test_an_async_request_answers_202_then_sends_prompt_complete(parts: Parts) -> None:
    p = parts.p
    answer = await parts.delivery.handle(request(webhook_v2=HOOK))

    assert answer.status_code == 202
    assert answer.sent is None
    accepted = body_of(answer)
    assert (accepted["status"], accepted["id"], accepted["webhook_v2"]) == ("ok", REQUEST_ID, HOOK)
    (prompt_id,) = p.queued()  # queued before the 202
    output = p.output_dir / OUTPUT
    p.comfy.end(prompt_id, saved(p.output_dir, OUTPUT))
    await parts.delivery.aclose()

    (sent,) = parts.webhooks.sent
    assert (sent.url, sent.message_id, sent.signed) == (HOOK, REQUEST_ID, True)
    assert sent.body["type"] == "prompt.complete"
    assert sent.body["id"] == REQUEST_ID
    assert sent.body["images"] == [base64.b64encode(f"image {OUTPUT}".encode()).decode()]
    assert sent.body["filenames"] == [OUTPUT]
    assert p.jobs.get(REQUEST_ID) is None
    assert not output.exists()


async def test_an_async_request_that_fails_sends_prompt_failed_and_logs_it(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    p = parts.p
    await parts.delivery.handle(request(webhook_v2=HOOK))
    (prompt_id,) = p.queued()
    p.comfy.end(prompt_id, failed(saved(p.output_dir, OUTPUT), "execution_error", **EXECUTION_ERROR))
    await parts.delivery.aclose()

    (sent,) = parts.webhooks.sent
    assert (sent.url, sent.message_id) == (HOOK, REQUEST_ID)
    assert sent.body["type"] == "prompt.failed"
    assert sent.body["error"] == "Prompt execution failed at node 9 (SaveImage): ValueError: bad"
    assert {key: sent.body[key] for key in EXECUTION_ERROR} == EXECUTION_ERROR
    assert "images" not in sent.body
    (logged,) = [record for record in caplog.records if record.getMessage() == "async request failed"]
    assert logged.levelno == logging.ERROR
    assert (logged.request_id, logged.status) == (REQUEST_ID, 500)  # type: ignore[attr-defined]
    assert not (p.output_dir / OUTPUT).exists()


async def test_a_legacy_webhook_gets_one_unsigned_output_complete_per_output(parts: Parts) -> None:
    p = parts.p
    # An upload block beside the legacy webhook is ignored (the reference server's precedence).
    answer = await parts.delivery.handle(request(webhook=HOOK, s3={"bucket": "bucket", "prefix": "runs"}))
    assert answer.status_code == 202
    (prompt_id,) = p.queued()
    p.comfy.end(prompt_id, saved(p.output_dir, OUTPUT))
    await parts.delivery.aclose()

    (sent,) = parts.webhooks.sent
    assert (sent.url, sent.signed) == (HOOK, False)
    assert sent.body["event"] == "output.complete"
    assert (sent.body["id"], sent.body["filename"]) == (REQUEST_ID, OUTPUT)
    assert sent.body["image"] == base64.b64encode(f"image {OUTPUT}".encode()).decode()
    assert parts.uploads.uploaded == []


async def test_with_both_webhooks_success_goes_to_both(parts: Parts) -> None:
    p = parts.p
    await parts.delivery.handle(request(webhook=LEGACY_HOOK, webhook_v2=HOOK))
    (prompt_id,) = p.queued()
    p.comfy.end(prompt_id, saved(p.output_dir, OUTPUT))
    await parts.delivery.aclose()

    legacy, signed = parts.webhooks.sent
    assert (legacy.url, legacy.signed, legacy.body["event"]) == (LEGACY_HOOK, False, "output.complete")
    assert (signed.url, signed.signed, signed.body["type"]) == (HOOK, True, "prompt.complete")


async def test_with_both_webhooks_a_failure_goes_to_webhook_v2_only(parts: Parts) -> None:
    """The reference server sends a failure to `webhook_v2`, else (`else if`) to the legacy `webhook`."""
    p = parts.p
    await parts.delivery.handle(request(webhook=LEGACY_HOOK, webhook_v2=HOOK))
    (prompt_id,) = p.queued()
    p.comfy.end(prompt_id, failed(saved(p.output_dir, OUTPUT), "execution_error", **EXECUTION_ERROR))
    await parts.delivery.aclose()

    (sent,) = parts.webhooks.sent
    assert (sent.url, sent.message_id, sent.signed) == (HOOK, REQUEST_ID, True)
    assert sent.body["type"] == "prompt.failed"
    assert {key: sent.body[key] for key in EXECUTION_ERROR} == EXECUTION_ERROR


async def test_a_legacy_webhook_alone_gets_the_unsigned_legacy_failure(parts: Parts) -> None:
    p = parts.p
    await parts.delivery.handle(request(webhook=LEGACY_HOOK))
    (prompt_id,) = p.queued()
    p.comfy.end(prompt_id, failed(saved(p.output_dir, OUTPUT), "execution_error", **EXECUTION_ERROR))
    await parts.delivery.aclose()

    (sent,) = parts.webhooks.sent
    assert (sent.url, sent.signed) == (LEGACY_HOOK, False)
    # The reference's legacy failure body: no `type`, `timestamp` or node details.
    assert set(sent.body) == {"event", "id", "prompt", "error"}
    assert (sent.body["event"], sent.body["id"]) == ("prompt.failed", REQUEST_ID)
    assert sent.body["error"] == "Prompt execution failed at node 9 (SaveImage): ValueError: bad"
    assert not (p.output_dir / OUTPUT).exists()


async def test_uploads_answer_with_their_urls(parts: Parts) -> None:
    p = parts.p
    handling = asyncio.create_task(parts.delivery.handle(request(s3={"bucket": "bucket", "prefix": "runs/42-"})))

    answer = await answered(parts, handling, lambda _: saved(p.output_dir, OUTPUT))

    url = f"s3://bucket/runs/42-{OUTPUT}"  # the prefix and the name as given, as the reference server joins them
    assert body_of(answer)["images"] == [url]
    assert parts.uploads.uploaded == [((p.output_dir / OUTPUT).resolve(), url, f"image {OUTPUT}".encode())]
    assert answer.sent is not None
    await answer.sent()


async def test_an_upload_that_fails_is_a_502_and_ends_the_job(parts: Parts) -> None:
    p = parts.p
    parts.uploads.failure = UploadError("S3 answered 403: AccessDenied")
    handling = asyncio.create_task(parts.delivery.handle(request(s3={"bucket": "bucket", "prefix": "runs"})))

    with pytest.raises(UploadFailed) as failure:
        await answered(parts, handling, lambda _: saved(p.output_dir, OUTPUT))

    assert failure.value.status_code == 502
    assert failure.value.message == "Upload failed: S3 answered 403: AccessDenied"
    assert p.jobs.get(REQUEST_ID) is None
    assert not (p.output_dir / OUTPUT).exists()


async def test_an_azure_upload_without_azure_configured_is_a_400_before_any_work(parts: Parts) -> None:
    with pytest.raises(BadRequest) as refused:
        await parts.delivery.handle(request(azure_blob_upload={"container": "outputs"}))

    assert refused.value.status_code == 400
    assert refused.value.location == "azure_blob_upload"
    assert parts.p.queued() == []
    assert len(parts.p.jobs) == 0


async def test_a_webhook_to_an_untrusted_private_address_is_a_400_before_any_work(parts: Parts) -> None:
    with pytest.raises(BadRequest) as refused:
        await parts.delivery.handle(request(webhook_v2="http://127.0.0.1:8998/hook"))

    assert refused.value.location == "webhook_v2"
    assert parts.p.queued() == []
    assert len(parts.p.jobs) == 0
