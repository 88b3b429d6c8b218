"""What travels between replicas besides the jobs: each job's record changes (its events), cancel requests, the
bodies of synchronous answers, and the dead-letter queue's notices.

Events: every record change a worker makes is published on the events exchange under `job.<id>` (progress at most
every PROGRESS_INTERVAL_S, everything else at once). A replica that streams a job's events or waits for its answer
follows that key and feeds what arrives into its own event hub (v2/events.py), as if the job ran here. Events are
not persisted: a waiter also re-reads the job's record from the store every RECHECK_INTERVAL_S, so a lost event
delays it by that much at most and never hangs it.

Answers: a worker running a synchronous /prompt streams its body to the replica holding the connection, in chunks
of CHUNK_BYTES, on that replica's own queue (`reply_to`); the first says the status code and the body's length. The
replica acknowledges a chunk once it is handed to the HTTP response, so at most REPLY_PREFETCH chunks are in its
memory, however large the body. A job run by the worker of the replica that holds the connection skips the broker:
its answer is handed over in process (`Answers.hand`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..errors import BrokerError, FleetUnavailable, JobStoreError
from ..jobstore.records import JobRecord, JobStatus, now_ms, record_row, row_record
from ..jobstore.writer import RecordWriter
from ..pipeline.delivery import Answer
from ..webhooks.body import JsonBody
from .broker import Broker, converted

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
GATHER_S = 0.05
RECHECK_INTERVAL_S = 2.0
CHUNK_BYTES = 256 * 1024
REPLY_PREFETCH = 64
# Cancel requests remembered for a job that may arrive at a worker after them.
_CANCELS_KEPT = 4096
_DEAD = "It went to the dead-letter queue: its attempts (JOB_MAX_ATTEMPTS) are spent"


class EventsOut:
    """Publishes this worker's record changes; never waits (publishing runs in one task, latest record per job). A
    job's end is published once its record is in the store: a follower that reads the store on hearing it reads the
    same end."""

    def __init__(self, broker: Broker, records: RecordWriter) -> None:
        self._broker = broker
        self._records = records
        self._pending: dict[str, JobRecord] = {}
        self._last_progress: dict[str, float] = {}
        self._wake = asyncio.Event()

    def on_record(self, record: JobRecord) -> None:
        # The job's own record, as the record writer holds it: what is published is its state when it is sent.
        self._pending[record.id] = record
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            # A moment for a job's changes to gather: a short job's few states cost one or two messages, not one
            # each (bench/fleet.py: the worker's CPU per job).
            await asyncio.sleep(GATHER_S)
            self._wake.clear()
            pending, self._pending = self._pending, {}
            due = {}
            for job_id, record in pending.items():
                if record.status is JobStatus.RUNNING and not self._due(job_id):
                    self._pending.setdefault(job_id, record)  # a progress step: sent with the next due one
                else:
                    due[job_id] = record
            await self._ends_written([record for record in due.values() if record.terminal])
            for job_id, record in due.items():
                if record.terminal:
                    self._last_progress.pop(job_id, None)
                try:
                    await self._broker.publish_event(job_id, json.dumps(record_row(record)).encode())
                except BrokerError as exc:
                    # Followers re-read the store: a lost event delays them, never hangs them.
                    logger.debug("a job event was not published", extra={"request_id": job_id, "reason": str(exc)})
            if self._pending:
                await asyncio.sleep(PROGRESS_INTERVAL_S)
                self._wake.set()

    async def _ends_written(self, ended: list[JobRecord]) -> None:
        """Wait until these ended jobs' records are in the store (one transaction for all)."""
        results = await asyncio.gather(*(self._records.written(record) for record in ended), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            logger.warning("jobs' ends are published before their records", extra={"why": str(failures[0])})

    def _due(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self._last_progress.get(job_id, 0.0) < PROGRESS_INTERVAL_S:
            return False
        self._last_progress[job_id] = now
        return True


class Followers:
    """The jobs this replica follows, until each ends: their events from the broker, and their records re-read from
    the store."""

    def __init__(self, broker: Broker, records: RecordWriter, on_record: Callable[[JobRecord], None]) -> None:
        self._broker = broker
        self._records = records
        self._on_record = on_record
        self._followed: set[str] = set()

    async def start(self) -> None:
        await self._broker.consume_events(self._received)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        try:
            record = row_record(json.loads(message.body))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("an unreadable job event was dropped", extra={"reason": f"{type(exc).__name__}: {exc}"})
            return
        await self._seen(record)

    async def _seen(self, record: JobRecord) -> None:
        if record.id not in self._followed:
            return
        self._on_record(record)
        if record.terminal:
            await self.unfollow(record.id)

    async def follow(self, job_id: str) -> None:
        if job_id not in self._followed:
            self._followed.add(job_id)
            await self._broker.follow(job_id)

    async def unfollow(self, job_id: str) -> None:
        if job_id in self._followed:
            self._followed.discard(job_id)
            with contextlib.suppress(BrokerError):
                await self._broker.unfollow(job_id)

    async def recheck(self) -> None:
        """Every RECHECK_INTERVAL_S, the followed jobs' records as the store has them (an ended job's end)."""
        while True:
            await asyncio.sleep(RECHECK_INTERVAL_S)
            for job_id in list(self._followed):
                try:
                    record = await self._records.store.get(job_id)
                except JobStoreError as exc:
                    logger.warning("a followed job's record could not be read", extra={"reason": str(exc)})
                    break
                if record is not None and record.terminal:
                    await self._seen(record)


class Cancels:
    """Cancel requests for jobs that run elsewhere: sent to every worker, which interrupts the job if it has it,
    and remembers the id for a job that reaches it later."""

    def __init__(self, broker: Broker, interrupt: Callable[[str], Awaitable[bool]]) -> None:
        self._broker = broker
        self._interrupt = interrupt
        self._recent: dict[str, None] = {}
        # Since when (ms since the epoch) every cancel request reaches this replica; None before.
        self.since: int | None = None

    async def start(self) -> None:
        await self._broker.consume_control(self._received)
        self.since = now_ms()

    async def request(self, job_id: str) -> None:
        try:
            await self._broker.publish_control(json.dumps({"cancel": job_id}).encode())
        except BrokerError as exc:
            raise FleetUnavailable(f"The cancel could not reach the workers: {exc}") from None

    def canceled(self, job_id: str) -> bool:
        return job_id in self._recent

    async def _received(self, message: AbstractIncomingMessage) -> None:
        try:
            job_id = str(json.loads(message.body)["cancel"])
        except (ValueError, KeyError, TypeError):
            logger.warning("an unreadable control message was dropped")
            return
        self._recent[job_id] = None
        while len(self._recent) > _CANCELS_KEPT:
            del self._recent[next(iter(self._recent))]
        await self._interrupt(job_id)


class DeadLetters:
    """The dead-letter queue's notices: a job that went there (its worker died on each attempt) is failed in the
    store, with every attempt's error its record kept."""

    def __init__(self, broker: Broker, records: RecordWriter) -> None:
        self._broker = broker
        self._records = records

    async def start(self) -> None:
        await self._broker.consume_dead(self._received)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        job_id = message.message_id or message.correlation_id
        try:
            record = await self._records.store.get(job_id) if job_id else None
            if record is not None and not record.terminal:
                attempts = _delivery_count(message)
                record.attempt_errors = [
                    *record.attempt_errors,
                    {"attempt": attempts, "error": "The worker running it stopped before it ended", "at": now_ms()},
                ]
                record.attempts = max(record.attempts, attempts)
                record.status, record.completed_at, record.queue_position = JobStatus.FAILED, now_ms(), None
                record.error = {"error": _DEAD, "status_code": 503}
                self._records.changed(record)
                await self._records.saved(record)
                logger.warning("a job went to the dead-letter queue", extra={"request_id": job_id})
        except JobStoreError as exc:
            logger.warning("a dead-letter notice waits for the job store", extra={"reason": str(exc)})
            await message.nack(requeue=True)
            return
        await message.ack()


def _delivery_count(message: AbstractIncomingMessage) -> int:
    deaths = (message.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return int(deaths[0].get("count") or 1)
    return int((message.headers or {}).get("x-delivery-count") or 1)


class RelayedBody:
    """A synchronous answer's body as a worker streams it here (api/answers.py's body interface). One that came in
    one message is small: answered at once, without a stream."""

    def __init__(self, length: int, first: bytes, rest: AsyncIterator[bytes] | None) -> None:
        self._length = length
        self._first = first
        self._rest = rest

    def is_small(self) -> bool:
        return self._rest is None

    def encode(self) -> bytes:
        return self._first

    def size(self) -> int:
        return self._length

    async def stream(self) -> AsyncIterator[bytes]:
        yield self._first
        if self._rest is not None:
            async for chunk in self._rest:
                yield chunk


class Answers:
    """The synchronous answers this replica's requests wait for, by job id: streamed by the worker that ran the job,
    or, when that worker is this replica's own, handed over in process (`hand`)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._waiting: dict[str, asyncio.Queue[AbstractIncomingMessage | Answer]] = {}
        self.queue_name = ""

    async def start(self) -> None:
        self.queue_name = await self._broker.consume_replies(self._received, REPLY_PREFETCH)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        waiting = self._waiting.get(message.correlation_id or "")
        if waiting is None:
            await message.ack()  # its client left: nobody reads it
            return
        waiting.put_nowait(message)

    def expect(self, job_id: str) -> asyncio.Queue[AbstractIncomingMessage | Answer] | None:
        """Wait for the answer of `job_id` (until `done`): what comes for it, in order. None while a request of this
        replica waits for that job already."""
        if job_id in self._waiting:
            return None
        chunks: asyncio.Queue[AbstractIncomingMessage | Answer] = asyncio.Queue()
        self._waiting[job_id] = chunks
        return chunks

    async def done(self, job_id: str, *taken: AbstractIncomingMessage | Answer) -> None:
        """Stop waiting for the answer of `job_id`, and end what came for it, `taken` from its queue or still in it: a
        message is acknowledged, an answer handed over ended (its job closed). Done again, it does nothing."""
        chunks = self._waiting.pop(job_id, None)
        if chunks is None:
            return
        left = list(taken)
        while not chunks.empty():
            left.append(chunks.get_nowait())
        for item in left:
            if isinstance(item, Answer):
                if item.sent is not None:
                    await item.sent()
                continue
            try:
                with converted("cannot acknowledge an answer"):
                    await item.ack()
            except BrokerError as exc:
                # Its channel is gone, and with it the message (its queue is this replica's, not durable).
                logger.debug("an answer was not acknowledged", extra={"request_id": job_id, "why": str(exc)})

    def hand(self, job_id: str, reply_to: str, answer: Answer) -> bool:
        """Give `answer` to the request of this replica that waits for it, when `reply_to` is this replica's: whether
        one took it. It then owns the answer: it sends the body and awaits its `sent`, as a standalone server does,
        with no trip through the broker."""
        waiting = self._waiting.get(job_id) if reply_to == self.queue_name else None
        if waiting is None:
            return False
        waiting.put_nowait(answer)
        return True


async def send_answer(
    broker: Broker, reply_to: str, job_id: str, attempt: int, status_code: int, body: JsonBody
) -> None:
    """Stream an answer's body to `reply_to`: a small one in one message, encoded here; a large one in chunks of
    CHUNK_BYTES at most, read in a thread (it reads the output files)."""
    if body.is_small():
        data = body.encode()
        headers = {"seq": 0, "attempt": attempt, "last": True, "status": status_code, "length": len(data)}
        await broker.publish_reply(reply_to, data, job_id=job_id, headers=headers)
        return
    length = await asyncio.to_thread(body.size)
    iterator = body.chunks()
    seq = 0
    pending = b""

    async def send(data: bytes, last: bool) -> None:
        nonlocal seq
        headers: dict[str, Any] = {"seq": seq, "attempt": attempt, "last": last}
        if seq == 0:
            headers |= {"status": status_code, "length": length}
        await broker.publish_reply(reply_to, data, job_id=job_id, headers=headers)
        seq += 1

    while True:
        chunk = await asyncio.to_thread(next, iterator, None)
        if chunk is None:
            break
        pending += chunk
        while len(pending) >= CHUNK_BYTES:
            await send(pending[:CHUNK_BYTES], False)
            pending = pending[CHUNK_BYTES:]
    await send(pending, True)
