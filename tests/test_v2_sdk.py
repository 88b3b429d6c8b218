"""The official Comfy API v2 client (comfy-sdk 0.5.0), unchanged, against this server in front of a real ComfyUI:
assets, jobs, live events with previews, downloads, cancel, idempotency, listing and auth; sync and async clients."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from comfy_sdk import AsyncComfy, Comfy
from comfy_sdk.events import OutputReady, Preview, Progress, StatusChange
from comfy_sdk.exceptions import ComfyError, IdempotencyKeyReuse
from PIL import Image

from tests.support.graphs import img2img, png_bytes, slow, solid, txt2img
from tests.support.server import ApiServer, wait_until

KEY = "v2-test-key"
ServerFactory = Callable[..., ApiServer]


@pytest.fixture(scope="module")
def v2_server(make_server: ServerFactory) -> ApiServer:
    return make_server("v2", API_KEYS=KEY).start()


@pytest.fixture
def base_url(v2_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The client reads its deployment from the environment, as its users configure it.
    monkeypatch.setenv("COMFY_BASE_URL", v2_server.url)
    yield v2_server.url


def _events_of(events: Any) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"progress": [], "preview": [], "output": [], "status": []}
    for event in events:
        kind = {Progress: "progress", Preview: "preview", OutputReady: "output", StatusChange: "status"}[type(event)]
        seen[kind].append(event)
    return seen


def test_upload_submit_stream_and_download_with_the_sync_client(base_url: str, v2_server: ApiServer) -> None:
    with Comfy(api_key=KEY, timeout=120) as client:
        asset = client.assets.from_bytes(png_bytes(48, 48), filename="photo.png", content_type="image/png")
        workflow = client.workflows.from_json(img2img("placeholder.png", steps=3))
        workflow.set_input("8", "image", asset)
        job = client.submit(workflow)
        assert job.status in ("queued", "running")

        seen = _events_of(job.events())
        assert seen["status"][-1].status == "succeeded"
        assert seen["progress"] and seen["progress"][-1].value <= 1.0
        assert seen["preview"], "a txt2img sampler sends previews"
        assert Image.open(io.BytesIO(seen["preview"][0].data)).format == "JPEG"
        assert [ready.output.node_id for ready in seen["output"]] == ["7"]

        job = job.refresh()
        (output,) = job.get_outputs("7")
        data = output.to_bytes()
        assert len(data) == output.size_bytes
        assert Image.open(io.BytesIO(data)).size == (64, 64)
        assert output.to_bytes(range=(0, 7)) == data[:8]
        # The staged input and ComfyUI's own files are gone; the output lives on as an asset.
        wait_until(v2_server.comfy_left_clean, 60, "ComfyUI's queue and history to be clean")
        assert v2_server.files_under("output") == []


async def test_submit_stream_and_download_with_the_async_client(base_url: str) -> None:
    async with AsyncComfy(api_key=KEY, timeout=120) as client:
        job = await client.submit(client.workflows.from_json(txt2img(steps=2, seed=7)))
        statuses = []
        outputs = []
        async for event in job.events():
            if isinstance(event, StatusChange):
                statuses.append(event.status)
            elif isinstance(event, OutputReady):
                outputs.append(event.output)
        assert statuses[-1] == "succeeded"
        job = await job.refresh()
        (output,) = job.get_outputs("7")
        assert Image.open(io.BytesIO(await output.to_bytes())).format == "PNG"
        assert [item.id for item in outputs] == [output.id]


def test_cancel_a_running_job_and_a_queued_one(base_url: str, v2_server: ApiServer) -> None:
    with Comfy(api_key=KEY, timeout=120) as client:
        running = client.submit(client.workflows.from_json(slow()))
        v2_server.wait_comfy_running()
        queued = client.submit(client.workflows.from_json(solid(8, 8)))
        v2_server.wait_comfy_pending(1)

        assert queued.cancel().status in ("canceling", "canceled")
        assert running.cancel().status in ("canceling", "canceled")
        for job in (queued, running):
            wait_until(lambda job=job: job.refresh().status == "canceled", 120, f"job {job.id} to be canceled")
        # Canceling again is a no-op answering the terminal state.
        assert queued.cancel().status == "canceled"
        wait_until(lambda: v2_server.comfy_queue() == ([], []), 60, "ComfyUI's queue to empty")


def test_a_reused_idempotency_key_is_rejected(base_url: str) -> None:
    with Comfy(api_key=KEY, timeout=120) as client:
        key = str(uuid.uuid4())
        first = client.submit(client.workflows.from_json(solid(8, 8)), idempotency_key=key)
        with pytest.raises(IdempotencyKeyReuse):
            client.submit(client.workflows.from_json(solid(8, 8)), idempotency_key=key)
        assert first.result().status == "succeeded"


def test_jobs_are_listed_newest_first(base_url: str) -> None:
    with Comfy(api_key=KEY, timeout=120) as client:
        ids = [client.submit(client.workflows.from_json(solid(8, 8)), metadata={"run": "list"}).id for _ in range(2)]
        listed = [summary.id for summary in client.list_jobs(metadata={"run": "list"})]
        assert listed[:2] == ids[::-1]


def test_a_wrong_key_is_refused_with_401(base_url: str) -> None:
    with Comfy(api_key="not-the-key", timeout=30) as client, pytest.raises(ComfyError) as refused:
        client.jobs.get(str(uuid.uuid4()))
    assert refused.value.code == "unauthorized"
