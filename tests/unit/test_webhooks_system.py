"""System webhooks: selection, prompt-id rewriting, ordering, overflow and never blocking the websocket reader."""

from __future__ import annotations

import base64
import copy
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from comfyui_api.config import SYSTEM_EVENT_NAMES
from comfyui_api.storage.net import UrlGuard
from comfyui_api.webhooks.sender import WebhookSender
from comfyui_api.webhooks.system import SystemWebhooks
from tests.support.receiver import Received, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
META = {"salad_machine_id": "m-1", "region": "eu"}
ALL = SYSTEM_EVENT_NAMES
REQUEST_IDS = {"comfy-1": "req-1", "comfy-2": "req-2"}


def count(n: int) -> Callable[[list[Received]], bool]:
    return lambda requests: len(requests) >= n


def executing(prompt_id: str, node: str | None = "3") -> dict[str, Any]:
    return {"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": prompt_id}}


def progress(prompt_id: str, value: int) -> dict[str, Any]:
    return {"type": "progress", "data": {"value": value, "max": 20, "prompt_id": prompt_id, "node": "3"}}


def progress_state(prompt_id: str) -> dict[str, Any]:
    node = {"value": 2, "max": 20, "state": "running", "node_id": "3", "prompt_id": prompt_id, "display_node_id": "3"}
    return {"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": {"3": node, "4": dict(node)}}}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as hook:
        yield hook


@pytest.fixture
async def make_system() -> AsyncIterator[Callable[..., SystemWebhooks]]:
    """System webhooks over a fast sender; stopped and closed at the end."""
    made: list[tuple[SystemWebhooks, WebhookSender]] = []

    def factory(
        url: str, events: tuple[str, ...] = ALL, *, retries: int = 3, start: bool = True, **kwargs: Any
    ) -> SystemWebhooks:
        sender = WebhookSender(
            SECRET,
            retries,
            guard=UrlGuard(block_private=False),  # the receiver listens on loopback
            timeout_s=5.0,
            backoff_base_s=0.01,
            backoff_max_s=0.05,
        )
        system = SystemWebhooks(url, events, META, sender, REQUEST_IDS.get, **kwargs)
        if start:
            system.start()
        made.append((system, sender))
        return system

    yield factory
    for system, sender in made:
        await system.stop(timeout_s=2.0)
        await sender.aclose()


async def test_envelope_rewrites_prompt_id_and_carries_metadata(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url)
    event = executing("comfy-1")
    original = copy.deepcopy(event)
    system.on_comfy_event(event)
    assert event == original  # the object shared with the job registry is left alone
    (got,) = await receiver.async_wait_for(count(1))
    assert got.verified is True
    assert got.json() == {
        "event": "comfy.executing",
        "data": {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": "req-1"}},
        "metadata": META,
    }


async def test_unknown_prompt_id_is_left_raw(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url)
    system.on_comfy_event(executing("not-ours"))
    system.on_comfy_event({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"}})
    got = await receiver.async_wait_for(count(2))
    assert got[0].json()["data"]["data"]["prompt_id"] == "not-ours"
    assert got[1].json()["data"] == {
        "type": "status",
        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"},
    }


async def test_progress_state_nodes_are_rewritten(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url)
    event = progress_state("comfy-2")
    original = copy.deepcopy(event)
    system.on_comfy_event(event)
    assert event == original
    (got,) = await receiver.async_wait_for(count(1))
    body = got.json()
    assert body["event"] == "comfy.progress_state"
    assert body["data"]["data"]["prompt_id"] == "req-2"
    assert {node["prompt_id"] for node in body["data"]["data"]["nodes"].values()} == {"req-2"}
    assert body["data"]["data"]["nodes"]["3"]["value"] == 2


async def test_only_selected_events_are_sent(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url, ("executing", "file_deleted"))
    system.on_comfy_event(progress("comfy-1", 1))
    system.on_comfy_event({"type": "crystools.monitor", "data": {"cpu": 3}})
    system.on_comfy_event({"type": "execution_success", "data": {"prompt_id": "comfy-1"}})
    system.on_storage_event("file_downloaded", {"url": "https://x/y"})
    system.on_storage_event("file_deleted", {"url": "https://x/z", "local_path": "/c/z", "size": 3})
    system.on_comfy_event(executing("comfy-1", None))  # last: everything before it has been decided by then
    got = await receiver.async_wait_for(count(2))
    assert [r.json()["event"] for r in got] == ["storage.file_deleted", "comfy.executing"]


async def test_storage_events_are_labelled_storage(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url)
    data = {"url": "s3://bucket/model.safetensors", "local_path": "/models/checkpoints/abc.safetensors", "size": 7}
    for name in ("file_downloaded", "file_uploaded", "file_deleted"):
        system.on_storage_event(name, {**data, "duration": 0.5} if name != "file_deleted" else data)
    system.on_storage_event("file_exploded", data)  # not a storage event: ignored
    got = await receiver.async_wait_for(count(3))
    bodies = [r.json() for r in got]
    assert [b["event"] for b in bodies] == ["storage.file_downloaded", "storage.file_uploaded", "storage.file_deleted"]
    assert bodies[2] == {"event": "storage.file_deleted", "data": data, "metadata": META}
    assert all(r.verified for r in got)
    # A ComfyUI event can never pose as a storage event.
    system.on_comfy_event({"type": "file_deleted", "data": {}})
    system.on_comfy_event(executing("comfy-1"))
    got = await receiver.async_wait_for(count(4))
    assert got[3].json()["event"] == "comfy.executing"


async def test_order_is_preserved_with_random_message_ids(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url)
    receiver.fail_next(2)  # retries of the first event must not let later ones overtake it
    for value in range(60):
        system.on_comfy_event(progress("comfy-1", value))
    got = await receiver.async_wait_for(lambda reqs: sum(r.status == 200 for r in reqs) >= 60)
    delivered = [r.json()["data"]["data"]["value"] for r in got if r.status == 200]
    assert delivered == list(range(60))
    ids = [r.headers["webhook-id"] for r in got if r.status == 200]
    assert len(set(ids)) == 60
    assert system.dropped == {}


async def test_overflow_drops_progress_first_and_counts(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks], caplog: pytest.LogCaptureFixture
) -> None:
    system = make_system(receiver.url, queue_size=3, start=False)
    system.on_comfy_event(progress("comfy-1", 1))
    system.on_comfy_event(executing("comfy-1", "e1"))
    system.on_comfy_event(progress("comfy-1", 2))
    assert system.queued == 3 and system.dropped == {}
    system.on_comfy_event(executing("comfy-1", "e2"))  # full: the oldest progress (1) goes
    system.on_comfy_event({"type": "executed", "data": {"node": "x1", "prompt_id": "comfy-1"}})  # progress 2 goes
    system.on_comfy_event(progress("comfy-1", 3))  # no progress queued: the new progress goes
    system.on_comfy_event(executing("comfy-1", "e3"))  # only state events queued: the oldest (e1) goes
    assert system.queued == 3
    assert system.dropped == {"comfy.progress": 3, "comfy.executing": 1}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "dropped" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line for the burst
    system.start()
    got = await receiver.async_wait_for(count(3))
    assert [(r.json()["event"], r.json()["data"]["data"]["node"]) for r in got] == [
        ("comfy.executing", "e2"),
        ("comfy.executed", "x1"),
        ("comfy.executing", "e3"),
    ]
    await system.stop()
    # The drops not yet reported are reported at stop.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "dropped" in r.getMessage()]
    assert sum(sum(r.dropped.values()) for r in warnings) == 4  # type: ignore[attr-defined]


async def test_progress_flood_keeps_memory_bounded(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url, queue_size=10, start=False)
    system.on_comfy_event(executing("comfy-1", "first"))
    for value in range(20_000):
        system.on_comfy_event(progress("comfy-1", value))
    system.on_comfy_event(executing("comfy-1", "last"))
    assert system.queued == 10
    assert len(system._queue) <= 2 * 10 + 1  # dead entries are compacted away
    assert system.dropped == {"comfy.progress": 20_000 - 8}
    system.start()
    got = await receiver.async_wait_for(count(10))
    bodies = [r.json()["data"] for r in got]
    assert bodies[0]["data"]["node"] == "first"
    assert [b["data"]["value"] for b in bodies[1:-1]] == list(range(20_000 - 8, 20_000))
    assert bodies[-1]["data"]["node"] == "last"


async def test_never_blocks_with_the_receiver_down(make_system: Callable[..., SystemWebhooks]) -> None:
    dead = WebhookReceiver().start()
    dead.stop()
    system = make_system(dead.url, queue_size=100, retries=3)
    started = time.monotonic()
    for value in range(20_000):
        system.on_comfy_event(progress("comfy-1", value))
        system.on_comfy_event(executing("comfy-1"))
    elapsed = time.monotonic() - started
    # 40 000 events; generous: O(1) each is well under 50 µs.
    assert elapsed < 2.0
    assert system.queued <= 100
    assert sum(system.dropped.values()) >= 40_000 - 100 - 1
    started = time.monotonic()
    await system.stop(timeout_s=0.5)
    assert time.monotonic() - started < 3.0


async def test_stop_drains_the_queue_and_ignores_later_events(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    system = make_system(receiver.url, start=False)
    for value in range(5):
        system.on_comfy_event(progress("comfy-1", value))
    system.start()
    await system.stop(timeout_s=10.0)
    assert [r.json()["data"]["data"]["value"] for r in receiver.requests] == list(range(5))
    system.on_comfy_event(progress("comfy-1", 99))
    assert system.queued == 0


async def test_a_listener_on_the_real_event_stream_shape(
    receiver: WebhookReceiver, make_system: Callable[..., SystemWebhooks]
) -> None:
    """Events without a dict `data` (never sent by EventStream, but cheap to survive) pass through as they are."""
    system = make_system(receiver.url)
    system.on_comfy_event({"type": "status", "data": None})
    (got,) = await receiver.async_wait_for(count(1))
    assert got.json()["data"] == {"type": "status", "data": None}
