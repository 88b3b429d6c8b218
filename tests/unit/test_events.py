"""The websocket reader's handling of one message: what ComfyUI (or a custom node) sends never kills it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from comfyui_api.comfy.events import EventStream


@pytest.mark.parametrize(
    "data",
    [
        {"status": None},
        {"status": {"exec_info": None}},
        {"status": {"exec_info": {"queue_remaining": None}}},
        {"status": "busy"},
        {},
    ],
    ids=["null-status", "null-exec-info", "null-queue", "string-status", "no-status"],
)
def test_a_status_message_of_any_shape_is_survived_and_passed_on(data: dict[str, Any]) -> None:
    stream = EventStream("ws://127.0.0.1:9/ws")
    stream.queue_remaining = 3
    seen: list[dict[str, Any]] = []
    stream.subscribe(seen.append)
    stream._handle(json.dumps({"type": "status", "data": data}))
    assert stream.queue_remaining == 3  # unknown: left as it was
    assert seen == [{"type": "status", "data": data}]


def test_the_queue_length_is_read_from_a_status_message() -> None:
    stream = EventStream("ws://127.0.0.1:9/ws")
    stream._handle(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 7}}}}))
    assert stream.queue_remaining == 7
