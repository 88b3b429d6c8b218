"""A fleet worker: takes jobs from the broker for its own ComfyUI, runs each through its front door's pipeline, and
acknowledges it only once the job's outputs are delivered and its record is terminal and written.

It holds at most 1 + FLEET_LOOKAHEAD jobs per priority queue (the broker's prefetch) and runs at most 1 +
FLEET_LOOKAHEAD at once, the most urgent first, FIFO within a level: the look-ahead job waits in ComfyUI's own queue,
so ComfyUI never idles between jobs.

At-least-once: a job whose worker dies or loses the broker mid-job is delivered again (quorum queues count the
deliveries, `x-delivery-count`); its record shows the attempt and why the one before ended. A job ComfyUI fails under
is handed back (nack, requeue) for any worker; on its last attempt (JOB_MAX_ATTEMPTS) it is rejected to the
dead-letter queue with its record failed. A redelivered job whose record is terminal already is acknowledged without
running again. On drain the worker stops consuming and hands back the jobs it holds but has not started.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage

from ..errors import ApiError, BrokerError, JobStoreError, SealError, ShuttingDown
from ..jobstore.records import JobKind, JobRecord, JobStatus, now_ms, row_record
from ..jobstore.writer import RecordWriter
from .broker import Broker, converted
from .messages import JobMessage
from .sealing import Sealer

logger = logging.getLogger(__name__)

# Runs one job to its end (outputs delivered, record ended) from its message and its record as the store has it.
RunJob = Callable[[JobMessage, JobRecord], Awaitable[None]]

_LOST = "The worker running it stopped or lost the broker before it ended"
_HANDED_BACK = "The worker holding it was stopping: it was handed back to the queue"
CANCELED_BEFORE_RUN = "Canceled before it ran"
_STORE_RETRY_S = 2.0


class CancelLog(Protocol):
    """The cancel requests this replica heard (relay.py's Cancels)."""

    since: int | None

    def canceled(self, job_id: str) -> bool: ...


@dataclass(order=True)
class _Held:
    # heapq pops the smallest: the most urgent level first, then the first received.
    rank: tuple[int, int]
    message: AbstractIncomingMessage = field(compare=False)
    job: JobMessage = field(compare=False)


class FleetWorker:
    def __init__(
        self,
        broker: Broker,
        sealer: Sealer,
        records: RecordWriter,
        runners: Mapping[JobKind, RunJob],
        *,
        lookahead: int,
        max_attempts: int,
        cancels: CancelLog,
    ) -> None:
        self._broker = broker
        self._sealer = sealer
        self._records = records
        self._runners = runners
        self._slots = 1 + lookahead
        self._max_attempts = max_attempts
        self._cancels = cancels
        self._held: list[_Held] = []
        self._order = itertools.count()
        self._running: set[asyncio.Task[None]] = set()
        # Job id → the task running it here.
        self._active: dict[str, asyncio.Task[None]] = {}
        self._tags: list[str] = []
        self._stopping = False
        # The job store does not answer: no job is taken until it does.
        self._paused = False

    async def start(self) -> None:
        if self._paused:
            return  # `resume()` starts it
        self._tags = await self._broker.consume_jobs(self._received, self._slots)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        try:
            job = JobMessage.decode(message.body, self._sealer)
        except (BrokerError, SealError) as exc:
            # Never runnable here, nor on any worker with this key: straight to the dead-letter queue.
            logger.error("a job message cannot be read; dead-lettered", extra={"reason": str(exc)})
            with converted("cannot reject the message"):
                await message.reject(requeue=False)
            return
        job.reply_to = message.reply_to
        if self._stopping or self._paused:
            await self._hand_back(message)
            return
        heapq.heappush(self._held, _Held((-job.priority, next(self._order)), message, job))
        self._schedule()

    def _schedule(self) -> None:
        while self._held and len(self._running) < self._slots and not (self._stopping or self._paused):
            held = heapq.heappop(self._held)
            task = asyncio.create_task(self._run(held), name=f"fleet-job-{held.job.id}")
            self._running.add(task)
            task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a fleet job's task failed", exc_info=task.exception())
        self._schedule()

    async def _run(self, held: _Held) -> None:
        message, job = held.message, held.job
        earlier = self._active.get(job.id)
        if earlier is not None:
            # Delivered again while it still runs here: its message went back with a broken connection. The run
            # under way decides; this delivery is acknowledged once it has ended, or handed back if it did not.
            await asyncio.wait({earlier})
        task = asyncio.current_task()
        assert task is not None
        self._active[job.id] = task
        try:
            await self._attempt(message, job)
        finally:
            if self._active.get(job.id) is task:
                del self._active[job.id]

    async def _attempt(self, message: AbstractIncomingMessage, job: JobMessage) -> None:
        attempt = int((message.headers or {}).get("x-delivery-count") or 0) + 1
        try:
            record = self._as_created(message, job, attempt) or await self._records.get(job.id)
        except JobStoreError as exc:
            logger.warning("a job went back: its record cannot be read", extra={"request_id": job.id, "why": str(exc)})
            await self._hand_back(message)
            return
        if record is None or record.terminal:
            # Ended already (a redelivery after the job's end, or a cancel), or expired: nothing to run.
            await _ack(message)
            return
        if self._cancels.canceled(job.id):
            record.status, record.completed_at = JobStatus.CANCELED, now_ms()
            record.error = {"error": CANCELED_BEFORE_RUN}
            await self._written(record)
            await _ack(message)
            return
        told = any(entry.get("attempt") == record.attempts for entry in record.attempt_errors)
        if attempt > record.attempts and not told:
            # The attempt before ended without a word from its worker.
            record.attempt_errors = [
                *record.attempt_errors,
                {"attempt": record.attempts, "error": _LOST, "at": now_ms()},
            ]
        record.attempts = attempt
        try:
            await self._runners[job.kind](job, record)
        except asyncio.CancelledError:
            await self._end_attempt(message, record, _HANDED_BACK, last=False)
            raise
        except ShuttingDown:
            await self._end_attempt(message, record, _HANDED_BACK, last=False)
            return
        except Exception as exc:
            if not record.terminal:
                # Handed back by the pipeline (ComfyUI failed under the job), or cut short before it could end.
                why = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
                await self._end_attempt(message, record, why, last=attempt >= self._max_attempts)
                return
            # It ended, failed, and its record says why.
        await self._written(record)
        try:
            await _ack(message)
        except BrokerError as exc:
            # The connection broke during the job: the broker delivers it again, and that delivery, finding the
            # record ended, is acknowledged without running it again.
            logger.info("a job ended after its message went back", extra={"request_id": job.id, "why": str(exc)})

    def _as_created(self, message: AbstractIncomingMessage, job: JobMessage, attempt: int) -> JobRecord | None:
        """The job's record as its message carries it, when that is the record still: at its first delivery, when
        the job was queued after this replica began to hear every cancel (a cancel since would be known here). It
        spares the store a read per job (bench/fleet.py)."""
        since = self._cancels.since
        fresh = attempt == 1 and not message.redelivered and since is not None and job.published_at > since
        return row_record(job.record) if fresh and job.record is not None else None

    async def _end_attempt(self, message: AbstractIncomingMessage, record: JobRecord, why: str, *, last: bool) -> None:
        record.attempt_errors = [*record.attempt_errors, {"attempt": record.attempts, "error": why, "at": now_ms()}]
        if last:
            record.status, record.completed_at = JobStatus.FAILED, now_ms()
            record.error = {
                "error": f"{why}; its {self._max_attempts} attempts (JOB_MAX_ATTEMPTS) are spent",
                "status_code": 503,
            }
            record.queue_position = None
        await self._written(record)
        logger.warning(
            "job attempt ended without an outcome",
            extra={"request_id": record.id, "attempt": record.attempts, "reason": why, "dead_lettered": last},
        )
        try:
            with converted("cannot hand the job back"):
                if last:
                    await message.reject(requeue=False)
                else:
                    await message.nack(requeue=True)
        except BrokerError as exc:
            # Its channel is gone, and with it the message went back to the queue.
            logger.info("a job went back with its channel", extra={"request_id": record.id, "why": str(exc)})

    async def _written(self, record: JobRecord) -> None:
        """Wait until the record is in the store, however long it is down: a job is acknowledged only then."""
        while True:
            try:
                await self._records.saved(record)
                return
            except JobStoreError as exc:
                logger.warning(
                    "a job's record waits for the job store", extra={"request_id": record.id, "why": str(exc)}
                )
                await asyncio.sleep(_STORE_RETRY_S)

    async def _hand_back(self, message: AbstractIncomingMessage) -> None:
        with converted("cannot hand the job back"):
            await message.nack(requeue=True)

    async def pause(self) -> None:
        """The job store does not answer: take no more jobs, and hand back the ones held, until `resume()`."""
        if self._paused or self._stopping:
            return
        self._paused = True
        logger.warning("the job store does not answer: taking no jobs until it does")
        await self._release()

    async def resume(self) -> None:
        if not self._paused or self._stopping:
            return
        self._paused = False
        logger.info("the job store answers again: taking jobs")
        await self.start()

    async def drain(self) -> None:
        """Take no more jobs and hand back the ones held but not started; the running ones run on."""
        self._stopping = True
        await self._release()

    async def _release(self) -> None:
        try:
            await self._broker.stop_consuming_jobs(self._tags)
        except BrokerError as exc:
            logger.warning("could not stop consuming jobs", extra={"reason": str(exc)})
        held, self._held = self._held, []
        for entry in held:
            try:
                await self._hand_back(entry.message)
            except BrokerError as exc:
                # The channel is gone: the broker has the message back already.
                logger.info(
                    "a held job went back with the channel", extra={"request_id": entry.job.id, "why": str(exc)}
                )

    async def aclose(self) -> None:
        """Hand back the jobs still running (their tasks are cancelled: each nacks its message)."""
        await self.drain()
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


async def _ack(message: AbstractIncomingMessage) -> None:
    with converted("cannot acknowledge the job"):
        await message.ack()
