"""Synchronous answers on the replica that waits for them (fleet/relay.py's Answers), on the session's real broker: a
job run by this replica's own worker has its answer handed over in process, and only to the request that waits for
that job here; one run by another replica's worker comes through the broker in chunks, in order, until the wait
ends; what came when it ends is acknowledged, or, handed over, ended, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from comfyui_api.fleet.broker import Broker, Topology
from comfyui_api.fleet.relay import CHUNK_BYTES, Answers, send_answer
from comfyui_api.pipeline.delivery import Answer
from comfyui_api.webhooks.body import JsonBody

DEADLINE_S = 60


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    connected = Broker(
        broker_url, Topology(f"answers-{uuid.uuid4().hex[:8]}", 1), max_attempts=3, consumer_timeout_ms=60_000
    )
    await connected.connect()
    yield connected
    await connected.close()


@pytest.fixture
async def answers(broker: Broker) -> Answers:
    started = Answers(broker)
    await started.start()
    return started


class Ended:
    """An answer's `sent`: counts the times it was awaited."""

    def __init__(self) -> None:
        self.times = 0

    async def __call__(self) -> None:
        self.times += 1


async def test_an_answer_of_this_replicas_worker_is_handed_to_the_request_waiting_for_it(answers: Answers) -> None:
    chunks = answers.expect("job-1")
    assert chunks is not None
    ended = Ended()
    answer = Answer(200, JsonBody({"images": ["…"]}), sent=ended)

    assert answers.hand("job-1", answers.queue_name, answer)

    assert await asyncio.wait_for(chunks.get(), DEADLINE_S) is answer
    assert ended.times == 0
    # Its body sent, the request ends the wait with what it took: the job ends, once however often it is said.
    await answers.done("job-1", answer)
    await answers.done("job-1", answer)
    assert ended.times == 1


async def test_an_answer_is_handed_over_only_to_a_request_of_this_replica_that_waits_for_its_job(
    answers: Answers,
) -> None:
    answer = Answer(200, JsonBody({}))
    assert answers.expect("job-2") is not None

    assert not answers.hand("job-2", "fleet.replica.other.answers", answer), "another replica waits for it"
    assert not answers.hand("job-3", answers.queue_name, answer), "nothing waits for it here"
    assert answers.expect("job-2") is None, "a second request for a job waited for already"


async def test_an_answer_handed_over_but_never_read_is_ended_once(answers: Answers) -> None:
    assert answers.expect("job-4") is not None
    ended = Ended()
    assert answers.hand("job-4", answers.queue_name, Answer(200, JsonBody({}), sent=ended))

    await answers.done("job-4")
    await answers.done("job-4")

    assert ended.times == 1
    assert not answers.hand("job-4", answers.queue_name, Answer(200, JsonBody({})))


async def test_an_answer_of_another_replicas_worker_comes_through_the_broker_in_chunks_in_order(
    broker: Broker, answers: Answers
) -> None:
    chunks = answers.expect("job-5")
    assert chunks is not None
    body = JsonBody({"images": ["x" * (6 * CHUNK_BYTES)]})
    assert not body.is_small()
    expected = body.encode()

    await send_answer(broker, answers.queue_name, "job-5", 1, 200, body)

    received = b""
    while len(received) < len(expected):
        chunk = await asyncio.wait_for(chunks.get(), DEADLINE_S)
        assert not isinstance(chunk, Answer)
        headers = chunk.headers or {}
        if not received:
            assert headers["status"] == 200 and headers["length"] == len(expected)
        received += chunk.body
        if received == chunk.body:
            first = chunk  # acknowledged when the wait ends, as the front door does once the body is sent
        else:
            await chunk.ack()
        assert bool(headers.get("last")) == (len(received) == len(expected))
    assert received == expected
    await answers.done("job-5", first)
    await answers.done("job-5", first)

    # Acknowledged once (a second acknowledgement of a message closes its channel): answers still come.
    later = answers.expect("job-6")
    assert later is not None
    await send_answer(broker, answers.queue_name, "job-6", 1, 200, JsonBody({"ok": True}))
    arrived = await asyncio.wait_for(later.get(), DEADLINE_S)
    assert not isinstance(arrived, Answer) and arrived.body == b'{"ok":true}'
    await answers.done("job-6", arrived)
