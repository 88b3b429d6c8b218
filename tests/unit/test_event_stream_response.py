"""The SSE response of a job's events: the chunk with the terminal status also ends the response body, so that the
server can write both at once; a stream that ends without one still ends the body."""

from __future__ import annotations

import asyncio
from typing import Any

from comfyui_api.api.event_streams import event_stream
from comfyui_api.jobstore.records import JobRecord, JobStatus
from comfyui_api.v2.events import JobEvents

TIMEOUT_S = 30.0


async def _served(response: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET", "headers": []}
    async with asyncio.timeout(TIMEOUT_S):
        await response(scope, receive, send)
    return sent


async def _unknown() -> JobRecord | None:
    return None


async def test_the_terminal_status_ends_the_response_body_in_the_same_message() -> None:
    hub = JobEvents()
    record = JobRecord(id="job", created_at=0)
    hub.on_record(record)
    response = await event_stream(hub, "job", None, _unknown)
    serving = asyncio.create_task(_served(response))
    record.outputs = [{"node_id": "9", "name": "a.png"}]
    record.status = JobStatus.SUCCEEDED
    hub.on_record(record)

    sent = await serving

    bodies = [message for message in sent if message["type"] == "http.response.body"]
    # No empty end-of-body message after the last events: they end the body.
    assert [message["more_body"] for message in bodies] == [True] * (len(bodies) - 1) + [False]
    assert b"event: output" in bodies[-1]["body"]
    assert bodies[-1]["body"].endswith(b'data: {"status":"succeeded","queue_position":null}\n\n')


async def test_a_stored_job_is_sent_and_ends_the_body() -> None:
    hub = JobEvents()

    async def stored() -> JobRecord | None:
        return JobRecord(id="old", created_at=0, status=JobStatus.FAILED)

    sent = await _served(await event_stream(hub, "old", None, stored))

    bodies = [message for message in sent if message["type"] == "http.response.body"]
    assert bodies[-1]["more_body"] is False
    assert b"event: status" in b"".join(message["body"] for message in bodies)
