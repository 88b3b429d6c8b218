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

Model-aware routing (FLEET_MODEL_WAIT_S > 0): a worker is warm for the models of the last FLEET_WARM_MODELS model
sets it took jobs of (routing.py's keys). While it has a free slot it consumes their model queues (broker.py), so
a job of those models that waits there is its first; with every slot busy it stops, and the job falls through to any
worker once its wait is over.
"""

from __future__ import annotations

import asyncio
import collections
import functools
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
    # heapq pops the smallest: the most urgent level first, then a job of a model this worker is warm for, then the
    # first received.
    rank: tuple[int, int, int]
    message: AbstractIncomingMessage = field(compare=False)
    job: JobMessage = field(compare=False)
    # Taken from a model queue, whose dead-letter exchange leads back to the priority queues.
    from_model: bool = field(default=False, compare=False)


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
        warm_models: int = 0,
    ) -> None:
        """`warm_models`: how many model sets this worker follows the model queues of (0: none, no routing)."""
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
        self._warm_limit = warm_models
        # The model keys this worker is warm for, the most recently used last.
        self._warm: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._models_changed = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._paused:
            return  # `resume()` starts it
        self._tags = await self._broker.consume_jobs(self._received, self._slots)
        if self._warm_limit and self._follower is None:
            self._follower = asyncio.create_task(self._follow_models(), name="fleet-model-queues")
        self._models_changed.set()

    async def _received(self, message: AbstractIncomingMessage, *, from_model: bool = False) -> None:
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
        rank = (-job.priority, 0 if from_model else 1, next(self._order))
        heapq.heappush(self._held, _Held(rank, message, job, from_model))
        self._schedule()

    def _schedule(self) -> None:
        while self._held and len(self._running) < self._slots and not (self._stopping or self._paused):
            held = heapq.heappop(self._held)
            task = asyncio.create_task(self._run(held), name=f"fleet-job-{held.job.id}")
            self._running.add(task)
            task.add_done_callback(self._ran)
        self._models_changed.set()

    async def _follow_models(self) -> None:
        """Consume the model queues of the keys this worker is warm for while it has a free slot, and only then: a
        job held here waits for this worker alone, while in its queue any warm worker, and after its wait any
        worker, may take it."""
        while True:
            await self._models_changed.wait()
            self._models_changed.clear()
            room = len(self._running) < self._slots and not (self._stopping or self._paused)
            wanted = set(self._warm) if room else set()
            try:
                for key in self._broker.model_keys - wanted:
                    await self._broker.stop_consuming_model(key)
                for key in wanted - self._broker.model_keys:
                    await self._broker.consume_model(key, functools.partial(self._received, from_model=True))
            except BrokerError as exc:
                # The connection is gone: its consumers with it. The next change, or the reconnect, tries again.
                logger.info("model queues not followed", extra={"why": str(exc)})

    def _warmed(self, key: str) -> None:
        """A job of the models of `key` runs here: this worker is warm for them, and forgets the least recent."""
        self._warm[key] = None
        self._warm.move_to_end(key)
        while len(self._warm) > self._warm_limit:
            self._warm.popitem(last=False)
        self._models_changed.set()

    def _ran(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a fleet job's task failed", exc_info=task.exception())
        self._schedule()

    async def _run(self, held: _Held) -> None:
        job = held.job
        earlier = self._active.get(job.id)
        if earlier is not None:
            # Delivered again while it still runs here: its message went back with a broken connection. The run
            # under way decides; this delivery is acknowledged once it has ended, or handed back if it did not.
            await asyncio.wait({earlier})
        task = asyncio.current_task()
        assert task is not None
        self._active[job.id] = task
        try:
            await self._attempt(held)
        finally:
            if self._active.get(job.id) is task:
                del self._active[job.id]

    async def _attempt(self, held: _Held) -> None:
        message, job = held.message, held.job
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
        if (message.headers or {}).get("x-death"):
            # From a model queue: the priority queue counts its deliveries from 1 again, the record counts on.
            begun = told or record.started_at is not None or record.status is not JobStatus.QUEUED
            attempt = max(attempt, record.attempts + 1 if begun else record.attempts)
        if attempt > record.attempts and not told:
            # The attempt before ended without a word from its worker.
            record.attempt_errors = [
                *record.attempt_errors,
                {"attempt": record.attempts, "error": _LOST, "at": now_ms()},
            ]
        if attempt > self._max_attempts:
            # Its workers died under each attempt: the delivery limits of a model queue and a priority queue add up.
            await self._end_attempt(held, record, _LOST, last=True, ran=False)
            return
        record.attempts = attempt
        if job.model_key is not None and self._warm_limit:
            self._warmed(job.model_key)  # its ComfyUI loads the models now
        try:
            await self._runners[job.kind](job, record)
        except asyncio.CancelledError:
            await self._end_attempt(held, record, _HANDED_BACK, last=False)
            raise
        except ShuttingDown:
            await self._end_attempt(held, record, _HANDED_BACK, last=False)
            return
        except Exception as exc:
            if not record.terminal:
                # Handed back by the pipeline (ComfyUI failed under the job), or cut short before it could end.
                why = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
                await self._end_attempt(held, record, why, last=attempt >= self._max_attempts)
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
        fresh = (
            attempt == 1
            and not message.redelivered
            and not (message.headers or {}).get("x-death")  # dead-lettered from a model queue: delivered before
            and since is not None
            and job.published_at > since
        )
        return row_record(job.record) if fresh and job.record is not None else None

    async def _end_attempt(self, held: _Held, record: JobRecord, why: str, *, last: bool, ran: bool = True) -> None:
        """End an attempt without an outcome: the job goes back to the queue, or on its `last` attempt to the
        dead-letter queue with its record failed (`ran`: the attempt's error is recorded)."""
        message = held.message
        if ran:
            record.attempt_errors = [
                *record.attempt_errors,
                {"attempt": record.attempts, "error": why, "at": now_ms()},
            ]
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
            if last and held.from_model:
                await self._broker.publish_dead(message, "delivery_limit")
                await _ack(message)
                return
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
        self._models_changed.set()
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
        self._models_changed.set()
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
        if self._follower is not None:
            self._follower.cancel()
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


async def _ack(message: AbstractIncomingMessage) -> None:
    with converted("cannot acknowledge the job"):
        await message.ack()
