"""The fleet's front door for /prompt, workflow and Comfy API v2 requests: each is checked as a standalone server
checks it, recorded in the shared store, and queued in the broker; any worker runs it.

An async request is answered 202 once its record is written and the broker confirmed its message. A synchronous one
waits for its answer, which the worker streams to this replica (relay.py), or hands over in process when it is this
replica's own; or, with FLEET_SYNC_LOCAL=true, runs here. When the store or the broker does not answer, the request
fails fast with 503 and nothing is left half-queued.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..errors import ApiError, BadRequest, BrokerError, Conflict, FleetUnavailable, JobStoreError
from ..jobstore.records import JobKind, JobRecord, JobStatus, now_ms, record_row
from ..jobstore.writer import RecordWriter
from ..pipeline.delivery import Answer, Delivery
from ..pipeline.preprocess import require_saving_node
from ..pipeline.request import PromptRequest
from ..webhooks.body import JsonBody
from .broker import Broker
from .messages import JobMessage, revealed
from .relay import RECHECK_INTERVAL_S, Answers, RelayedBody
from .routing import model_key
from .sealing import Sealer

logger = logging.getLogger(__name__)


class FleetDoor:
    def __init__(
        self,
        broker: Broker,
        sealer: Sealer,
        records: RecordWriter,
        answers: Answers,
        delivery: Delivery,
        *,
        levels: int,
        sync_local: bool,
        model_routing: bool,
        cancel: Callable[[str], Awaitable[bool]],
        withdraw: Callable[[str], Awaitable[None]],
    ) -> None:
        """`model_routing`: jobs go first to the workers warm for their models (FLEET_MODEL_WAIT_S > 0). `cancel`
        cancels a job wherever it is; `withdraw` tells every worker to drop a job (relay.py's Cancels.request)."""
        self._model_routing = model_routing
        self._broker = broker
        self._sealer = sealer
        self._records = records
        self._answers = answers
        self._delivery = delivery
        self._levels = levels
        self._sync_local = sync_local
        self._cancel = cancel
        self._withdraw_request = withdraw

    async def handle(self, request: PromptRequest, *, extra: dict[str, Any] | None = None) -> Answer:
        if not request.is_async and self._sync_local:
            return await self._delivery.handle(request, extra=extra)
        priority = self._level(request.priority or 0, "priority")
        await self._delivery.check(request)
        graph = request.graph()
        require_saving_node(graph)
        replay = request.replay()
        replay.pop("needs_memory", None)  # its credentials travel sealed with the job
        record = JobRecord(id=request.id, created_at=now_ms(), request=replay, delivery=request.echo())
        message = JobMessage(
            id=request.id,
            kind=JobKind.PROMPT,
            request=replay,
            priority=priority,
            sync=not request.is_async,
            extra=extra or {},
            secrets=revealed(request, "credentials"),
        )
        # No request named the id: this server made it up, and no other job can hold it.
        fresh = "id" not in request.model_fields_set
        if request.is_async:
            await self._queue(record, message, fresh=fresh)
            accepted = {**request.echo(), "status": "ok", "id": request.id, "prompt": graph, **(extra or {})}
            return Answer(202, JsonBody(accepted))
        # Waited for from before it is queued (its answer may come at once), until its body is sent (`sent`).
        chunks = self._answers.expect(request.id)
        if chunks is None:
            raise _in_progress(request.id)
        # Carried to its end even if the client leaves meanwhile: the job is then queued with its record, or not.
        queueing = asyncio.ensure_future(self._queue(record, message, reply_to=self._answers.queue_name, fresh=fresh))
        try:
            await asyncio.shield(queueing)
            return await self._answer(request.id, chunks)
        except asyncio.CancelledError:
            await asyncio.shield(self._abandoned(request.id, queueing))
            raise
        except BaseException:
            await self._answers.done(request.id)
            raise

    async def _abandoned(self, job_id: str, queueing: asyncio.Future[None]) -> None:
        """Its client left (CANCEL_ON_DISCONNECT): the job, once queued, is canceled wherever it runs, as here it would
        be."""
        await self._answers.done(job_id)
        await asyncio.wait({queueing})
        if not queueing.cancelled() and queueing.exception() is None:
            await self._cancel_quietly(job_id)

    async def queue_v2(self, record: JobRecord, *, priority: int, secrets: dict[str, Any]) -> None:
        """Record a v2 job (checked already, v2/jobs.py) and queue it; `secrets` (its extra_data) travel sealed."""
        message = JobMessage(
            id=record.id,
            kind=JobKind.V2,
            request=record.request or {},
            priority=self._level(priority, "metadata.priority"),
            secrets=secrets,
        )
        await self._queue(record, message, fresh=True)  # its id is this server's (v2/jobs.py)

    def _level(self, priority: int, location: str) -> int:
        if priority >= self._levels:
            raise BadRequest(
                f"{location}: {priority} is above the highest level, {self._levels - 1} (FLEET_PRIORITY_LEVELS)",
                location=location,
            )
        return priority

    async def _cancel_quietly(self, job_id: str) -> None:
        try:
            await self._cancel(job_id)
        except ApiError as exc:
            logger.warning("an abandoned job could not be canceled", extra={"request_id": job_id, "why": exc.message})

    async def _queue(
        self, record: JobRecord, message: JobMessage, *, reply_to: str | None = None, fresh: bool = False
    ) -> None:
        """Record the job in the store and queue it in the broker. An id a request named may be an unfinished job's,
        which only the store can tell: the record is written first. One this server made up (`fresh`) is no other
        job's: the record is written while the job is queued, a round trip less (bench/fleet.py). Should the store
        fail then, the job, queued already, is withdrawn."""
        self._records.set_expiry(record)
        message.record, message.published_at = record_row(record), now_ms()
        if self._model_routing:
            request = record.request or {}
            message.model_key = model_key(request.get("prompt") or request.get("workflow") or {})
        if not fresh:
            await self._create(record)
            await self._publish(record, message, reply_to)
            return
        recorded, queued = await asyncio.gather(
            self._records.insert_new(record), self._publish(record, message, reply_to), return_exceptions=True
        )
        if isinstance(queued, BaseException):
            raise queued
        if isinstance(recorded, JobStoreError):
            await self._withdraw(record.id)
            raise FleetUnavailable(f"The job store does not answer: {recorded}")
        if isinstance(recorded, BaseException):
            raise recorded

    async def _create(self, record: JobRecord) -> None:
        try:
            created = await self._records.create(record)
        except JobStoreError as exc:
            raise FleetUnavailable(f"The job store does not answer: {exc}") from None
        if not created:
            raise _in_progress(record.id)

    async def _publish(self, record: JobRecord, message: JobMessage, reply_to: str | None) -> None:
        try:
            await self._broker.publish_job(
                message.encode(self._sealer),
                message.priority,
                job_id=record.id,
                reply_to=reply_to,
                model_key=message.model_key,
            )
        except BrokerError as exc:
            # Not queued: its record must not say it waits.
            record.status, record.completed_at = JobStatus.FAILED, now_ms()
            record.error = {"error": f"The job could not be queued: {exc}", "status_code": 503}
            self._records.changed(record)
            raise FleetUnavailable(f"The broker does not answer: {exc}") from None

    async def _withdraw(self, job_id: str) -> None:
        """Every worker is told to drop a job queued without its record; the one that takes it records it canceled."""
        try:
            await self._withdraw_request(job_id)
        except FleetUnavailable as exc:
            logger.error(
                "a job queued without its record could not be withdrawn: it may run",
                extra={"request_id": job_id, "why": exc.message},
            )
            return
        logger.warning("a job queued without its record was withdrawn", extra={"request_id": job_id})

    async def _answer(self, job_id: str, chunks: asyncio.Queue[AbstractIncomingMessage | Answer]) -> Answer:
        """Wait for the job's answer, handed over by this replica's worker or the first chunk of one another streams,
        or for the job to end without one (its record says how, re-read every RECHECK_INTERVAL_S). The answer's
        `sent` ends the wait (Answers.done)."""
        while True:
            try:
                first = await asyncio.wait_for(chunks.get(), timeout=RECHECK_INTERVAL_S)
                break
            except TimeoutError:
                try:
                    record = await self._records.store.get(job_id)
                except JobStoreError as exc:
                    logger.warning("a waiting job's record could not be read", extra={"reason": str(exc)})
                    continue
                if record is not None and record.terminal and chunks.empty():
                    await self._answers.done(job_id)
                    return _from_record(record)
        # The wait ends once the body is sent (or its client left): the first message is acknowledged then, off the
        # answer's way, or the job of an answer handed over ended, as a standalone server ends it.
        sent = functools.partial(self._answers.done, job_id, first)
        if isinstance(first, Answer):
            return Answer(first.status_code, first.body, sent=sent)
        headers = first.headers or {}
        rest = None if headers.get("last") else self._rest(job_id, first, chunks)
        body = RelayedBody(int(headers.get("length") or len(first.body)), first.body, rest)
        return Answer(int(headers.get("status") or 200), body, sent=sent)

    async def _rest(
        self, job_id: str, first: AbstractIncomingMessage, chunks: asyncio.Queue[AbstractIncomingMessage | Answer]
    ) -> AsyncIterator[bytes]:
        attempt = (first.headers or {}).get("attempt")
        while True:
            chunk = await chunks.get()
            if isinstance(chunk, Answer) or (chunk.headers or {}).get("attempt") != attempt:
                # Another attempt's answer: the worker that streamed this one died mid-way. What was sent stands.
                await self._answers.done(job_id, first, chunk)
                raise ApiError("The worker answering the request stopped mid-way", status_code=502)
            await chunk.ack()
            yield chunk.body
            if (chunk.headers or {}).get("last"):
                return


def _in_progress(job_id: str) -> Conflict:
    return Conflict(f"A request with id {job_id!r} is already in progress", location="id")


def _from_record(record: JobRecord) -> Answer:
    """The answer of a job that ended without a streamed one: its error, or 502 for an answer lost on the way."""
    error = dict(record.error or {})
    status = int(error.pop("status_code", 502))
    if record.status is JobStatus.SUCCEEDED or not error:
        status, error = 502, {"error": "The job ended, but its answer was lost on the way"}
    return Answer(status, JsonBody(error))
