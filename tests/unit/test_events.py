"""The websocket reader's handling of one message: what ComfyUI (or a custom node) sends never kills it; JSON
messages go to the listeners as dicts, binary ones (previews) to the binary listeners as bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

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


def test_a_binary_message_goes_to_the_binary_listeners_and_counts_as_received() -> None:
    stream = EventStream("ws://127.0.0.1:9/ws")
    seen: list[bytes] = []
    json_seen: list[dict[str, Any]] = []
    stream.subscribe(json_seen.append)
    stream.subscribe_binary(seen.append)
    stream._handle_binary(b"\x00\x00\x00\x01frame")
    assert seen == [b"\x00\x00\x00\x01frame"]
    assert json_seen == []
    assert stream.received == 1


def test_a_failing_binary_listener_does_not_keep_the_others_from_the_message() -> None:
    stream = EventStream("ws://127.0.0.1:9/ws")
    seen: list[bytes] = []

    def broken(message: bytes) -> None:
        raise RuntimeError("listener bug")

    stream.subscribe_binary(broken)
    stream.subscribe_binary(seen.append)
    stream._handle_binary(b"frame")
    assert seen == [b"frame"]


async def test_the_reader_delivers_text_and_binary_messages_from_a_real_websocket() -> None:
    event = {"type": "executing", "data": {"node": "3", "prompt_id": "p"}}
    frame = struct.pack(">II", 1, 1) + b"\xff\xd8\xff jpeg"

    async def comfy(connection: ServerConnection) -> None:
        await connection.send(json.dumps(event))
        await connection.send(frame)
        await connection.wait_closed()

    async with serve(comfy, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stream = EventStream(f"ws://127.0.0.1:{port}/ws")
        texts: list[dict[str, Any]] = []
        frames: list[bytes] = []
        both = asyncio.Event()

        def on_binary(message: bytes) -> None:
            frames.append(message)
            both.set()

        stream.subscribe(texts.append)
        stream.subscribe_binary(on_binary)
        reader = asyncio.create_task(stream.run())
        try:
            await asyncio.wait_for(both.wait(), 5)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert texts == [event]
    assert frames == [frame]
    assert stream.received == 2


async def test_each_connection_is_numbered_so_messages_tell_which_one_they_came_on() -> None:
    async def comfy(connection: ServerConnection) -> None:
        await connection.send(json.dumps({"type": "status", "data": {}}))
        await connection.wait_closed()

    async with serve(comfy, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stream = EventStream(f"ws://127.0.0.1:{port}/ws")
        seen_on: list[int] = []
        message = asyncio.Event()

        def listener(_: dict[str, Any]) -> None:
            seen_on.append(stream.connections)
            message.set()

        stream.subscribe(listener)
        assert stream.connections == 0
        reader = asyncio.create_task(stream.run())
        try:
            await asyncio.wait_for(message.wait(), 5)
            message.clear()
            stream.reconnect()
            await asyncio.wait_for(message.wait(), 5)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert seen_on == [1, 2]
