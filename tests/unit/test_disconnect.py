"""A sync request is cancelled when its client disconnects (api/disconnect.py), in process: the watcher over an ASGI
`receive`, and the whole path through Delivery and the runner over FakeComfy, where the janitor takes the prompt out
of ComfyUI's queue (or interrupts it) at once. The same against a real server and ComfyUI: tests/test_disconnect.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.requests import Request
from starlette.types import Message

from comfyui_api.api.disconnect import CLIENT_CLOSED_REQUEST, ClientDisconnected, deliver, unless_disconnected
from comfyui_api.pipeline.delivery import Delivery
from comfyui_api.storage.net import UrlGuard
from comfyui_api.storage.uploads import Uploader
from comfyui_api.webhooks.sender import WebhookSender
from tests.unit.fake_comfy import saved
from tests.unit.fake_pipeline import OUTPUT, REQUEST_ID, Pipeline, delivery_for, pipeline, request


class Client:
    """The ASGI `receive` of a request whose body has been read: it answers `http.disconnect` once the client is
    `gone`, after the `before` messages (which a server may send, and the watcher must skip)."""

    def __init__(self, *before: Message) -> None:
        self.gone = asyncio.Event()
        self.before = list(before)
        self.receiving = asyncio.Event()
        self.calls = 0
        # Set when a pending receive() is cancelled: the watcher stopped listening.
        self.stopped = asyncio.Event()

    async def receive(self) -> Message:
        self.calls += 1
        if self.before:
            return self.before.pop(0)
        self.receiving.set()
        try:
            await self.gone.wait()
        except asyncio.CancelledError:
            self.stopped.set()
            raise
        return {"type": "http.disconnect"}

    def http_request(self) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/prompt", "headers": []}, self.receive)


async def test_work_done_first_is_the_answer_and_the_watcher_stops() -> None:
    client = Client()
    finished = asyncio.Event()

    async def work() -> str:
        await client.receiving.wait()  # the watcher listens while the work runs
        finished.set()
        return "done"

    assert await unless_disconnected(client.receive, work()) == "done"
    async with asyncio.timeout(5):
        await client.stopped.wait()
    assert client.calls == 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_disconnect_cancels_the_work_and_raises_client_disconnected() -> None:
    # A server may hand over other messages before the disconnect (an empty body chunk): they do not count.
    client = Client({"type": "http.request", "body": b"", "more_body": False})
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.Event().wait()  # a prompt that would run for ever
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def leave() -> None:
        await client.receiving.wait()
        client.gone.set()

    leaving = asyncio.create_task(leave())
    with pytest.raises(ClientDisconnected):
        await unless_disconnected(client.receive, work())
    await leaving
    assert cancelled.is_set()
    assert client.calls == 2
    # The cancellation was this module's own and is spent: the task goes on as if never cancelled.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_work_that_absorbs_the_cancellation_keeps_its_result() -> None:
    client = Client()

    async def work() -> str:
        client.gone.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "finished anyway"
        return "never"

    assert await unless_disconnected(client.receive, work()) == "finished anyway"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    client = Client()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    watched = asyncio.create_task(unless_disconnected(client.receive, work()))
    await started.wait()
    watched.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watched
    async with asyncio.timeout(5):
        await client.stopped.wait()


# Through Delivery and the runner ----------------------------------------------------------------------------------


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, Delivery]]:
    async with pipeline(tmp_path) as p:
        delivery = delivery_for(p)  # a base64 answer needs neither uploads nor webhooks
        yield p, delivery


async def test_a_client_leaving_a_queued_prompt_takes_it_out_of_comfyuis_queue(
    parts: tuple[Pipeline, Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    p, delivery = parts
    client = Client()
    caplog.set_level(logging.INFO, logger="comfyui_api.api.disconnect")
    answering = asyncio.create_task(deliver(client.http_request(), delivery, request(), cancel_on_disconnect=True))
    await p.comfy.until(p.queued)
    (prompt_id,) = p.queued()
    assert p.comfy.pending == {prompt_id}

    client.gone.set()
    response = await answering

    assert response.status_code == CLIENT_CLOSED_REQUEST
    await p.comfy.until(lambda: [prompt_id] in p.comfy.named("delete_from_queue"))
    assert p.comfy.pending == set()
    assert p.comfy.named("interrupt") == []
    assert p.jobs.get(REQUEST_ID) is None
    [record] = [r for r in caplog.records if r.getMessage() == "client disconnected; request cancelled"]
    assert cast(Any, record).request_id == REQUEST_ID


async def test_a_client_leaving_a_running_prompt_interrupts_it_and_its_late_outputs_are_deleted(
    parts: tuple[Pipeline, Delivery],
) -> None:
    p, delivery = parts
    client = Client()
    answering = asyncio.create_task(deliver(client.http_request(), delivery, request(), cancel_on_disconnect=True))
    await p.comfy.until(p.queued)
    (prompt_id,) = p.queued()
    p.comfy.pending.discard(prompt_id)
    p.comfy.running.add(prompt_id)

    client.gone.set()
    assert (await answering).status_code == CLIENT_CLOSED_REQUEST
    await p.comfy.until(lambda: p.comfy.named("interrupt") == [prompt_id])

    # ComfyUI stops it, having saved an image all the same: the janitor deletes it with the history entry.
    p.comfy.end(prompt_id, saved(p.output_dir, OUTPUT))
    await p.comfy.until(lambda: prompt_id not in p.comfy.history_entries)
    assert list(p.output_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "cancel_on_disconnect"),
    [({}, False), ({"webhook_v2": "http://127.0.0.1:8999/hook"}, True)],
    ids=["CANCEL_ON_DISCONNECT=false", "async"],
)
async def test_without_cancel_on_disconnect_or_for_an_async_request_nothing_listens_for_the_client(
    tmp_path: Path, fields: dict[str, Any], cancel_on_disconnect: bool
) -> None:
    client = Client()
    async with pipeline(tmp_path) as p:
        sender = cast(WebhookSender, _NoWebhooks())
        delivery = Delivery(
            p.runner,
            cast(Uploader, None),
            sender,
            output_dir=p.output_dir,
            hf_endpoint="https://huggingface.co",
            azure_base=None,
            guard=UrlGuard(trusted_origins=["http://127.0.0.1:8999"]),
        )
        answering = asyncio.create_task(
            deliver(client.http_request(), delivery, request(**fields), cancel_on_disconnect=cancel_on_disconnect)
        )
        await p.comfy.until(p.queued)
        (prompt_id,) = p.queued()
        p.comfy.end(prompt_id, saved(p.output_dir, OUTPUT))
        response = await answering
        await delivery.aclose()

    assert response.status_code == (202 if fields else 200)
    assert client.calls == 0


class _NoWebhooks:
    """An async request's webhook, accepted and dropped (what it carries is tested in test_delivery_unit.py)."""

    async def send(self, url: str, payload: dict[str, Any], **_: Any) -> bool:
        return True
