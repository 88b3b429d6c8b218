"""Fleet mode on one replica: its broker connection and every part that uses it, started and stopped together.

The connection is retried with backoff until the broker answers (the replica is unready meanwhile); after that,
aio-pika's robust connection reconnects by itself. A monitor keeps `ServerState.fleet_ok` (read by /ready) true only
while the broker is connected and the job store answers: an orchestrator routes no request to a replica that would
fail it with 503, and a worker takes no job it could not record.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..config import Settings
from ..errors import BrokerError, FleetUnavailable, JobStoreError
from ..jobstore.postgres import PostgresJobStore
from ..jobstore.records import JobKind, JobRecord, JobStatus, now_ms
from ..jobstore.writer import RecordWriter
from ..pipeline.delivery import Answer, Delivery
from ..pipeline.request import PromptRequest
from ..pipeline.runner import PromptRunner, ends_attempt
from ..state import ServerState
from ..tasks import TaskOwner
from ..v2.events import JobEvents
from ..webhooks.body import JsonBody
from .broker import Broker, Topology
from .door import FleetDoor
from .messages import JobMessage
from .relay import Answers, Cancels, DeadLetters, EventsOut, Followers, send_answer
from .sealing import Sealer
from .worker import CANCELED_BEFORE_RUN, FleetWorker, RunJob

logger = logging.getLogger(__name__)

_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MONITOR_INTERVAL_S = 2.0
# Added to the longest a job may take (PROMPT_TIMEOUT_S) for the broker's acknowledgement timeout; without a
# PROMPT_TIMEOUT_S, a day.
_ACK_MARGIN_S = 600
_NO_DEADLINE_MS = 24 * 3600 * 1000


class QueuedV2(Protocol):
    async def run_queued(self, record: JobRecord, secrets: dict[str, Any]) -> None: ...


class Fleet:
    def __init__(
        self,
        settings: Settings,
        state: ServerState,
        records: RecordWriter,
        hub: JobEvents,
        delivery: Delivery,
        runner: PromptRunner,
    ) -> None:
        assert settings.broker_url is not None and settings.fleet_secret_key is not None
        self._settings = settings
        self._state = state
        self._records = records
        self._delivery = delivery
        self._runner = runner
        self.sealer = Sealer(settings.fleet_secret_key.get_secret_value())
        timeout_ms = (
            round((settings.prompt_timeout_s + _ACK_MARGIN_S) * 1000) if settings.prompt_timeout_s else _NO_DEADLINE_MS
        )
        self.broker = Broker(
            settings.broker_url.get_secret_value(),
            Topology(settings.fleet_queue_prefix, settings.fleet_priority_levels),
            max_attempts=settings.job_max_attempts,
            consumer_timeout_ms=timeout_ms,
            model_wait_ms=round(settings.fleet_model_wait_s * 1000),
        )
        self.events_out = EventsOut(self.broker, records)
        self.followers = Followers(self.broker, records, hub.on_record)
        self.cancels = Cancels(self.broker, runner.interrupt)
        self._dead = DeadLetters(self.broker, records)
        self._answers = Answers(self.broker)
        # The job store answered the monitor's last check (MONITOR_INTERVAL_S).
        self.store_ok = False
        # Job ends waiting for their record to be stored before this replica's streams hear of them.
        self._delivering: set[asyncio.Task[None]] = set()
        # What a worker runs each kind of job with; v2 jobs once `serve_v2` is called.
        self._runners: dict[JobKind, RunJob] = {JobKind.PROMPT: self._run_prompt}
        self.door = FleetDoor(
            self.broker,
            self.sealer,
            records,
            self._answers,
            delivery,
            levels=settings.fleet_priority_levels,
            sync_local=settings.fleet_sync_local,
            model_routing=settings.fleet_model_wait_s > 0,
            cancel=self.interrupt,
            withdraw=self.cancels.request,
        )
        self.worker = (
            FleetWorker(
                self.broker,
                self.sealer,
                records,
                self._runners,
                lookahead=settings.fleet_lookahead,
                max_attempts=settings.job_max_attempts,
                cancels=self.cancels,
                warm_models=settings.fleet_warm_models if settings.fleet_model_wait_s > 0 else 0,
            )
            if settings.fleet_role != "api"
            else None
        )
        state.fleet_ok = False

    def serve_v2(self, jobs: QueuedV2) -> None:
        """Run Comfy API v2 jobs taken from the queue with `jobs` (v2/jobs.py's V2Jobs)."""

        async def run(message: JobMessage, record: JobRecord) -> None:
            await jobs.run_queued(record, message.secrets)

        self._runners[JobKind.V2] = run

    def after_written(self, deliver: Callable[[JobRecord], None]) -> Callable[[JobRecord], None]:
        """`deliver` (this replica's event streams) with each job's end held until its record is in the store, as
        the other replicas hear it (EventsOut): a client told of the end here reads the same end from any replica."""

        async def written(record: JobRecord) -> None:
            try:
                await self._records.written(record)
            except JobStoreError as exc:
                logger.warning("a job's end is streamed before its record is stored", extra={"why": str(exc)})
            deliver(record)

        def on_record(record: JobRecord) -> None:
            if not record.terminal:
                deliver(record)
                return
            task = asyncio.ensure_future(written(record))
            self._delivering.add(task)
            task.add_done_callback(self._delivering.discard)

        return on_record

    def on_record(self, record: JobRecord) -> None:
        """A record changed here: its followers on other replicas hear of it."""
        self.events_out.on_record(record)

    async def start(self, tasks: TaskOwner) -> None:
        """Connect (retrying in the background until the broker answers), then serve."""
        tasks.spawn(self._connect(tasks), "fleet-connect")

    async def _connect(self, tasks: TaskOwner) -> None:
        for attempt in itertools.count():
            try:
                await self.broker.connect()
                break
            except BrokerError as exc:
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                logger.warning("the broker does not answer; retrying", extra={"reason": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
        tasks.spawn(self.events_out.run(), "fleet-events-out", critical=True)
        tasks.spawn(self.followers.recheck(), "fleet-followers", critical=True)
        await self.followers.start()
        await self.cancels.start()
        await self._dead.start()
        await self._answers.start()
        tasks.spawn(self._monitor(), "fleet-monitor", critical=True)
        if self.worker is not None:
            # Jobs are taken only once ComfyUI is up: a job taken before would wait for it, held from other workers.
            await self._state.comfy_up.wait()
            await self.worker.start()
        logger.info("fleet mode serving", extra={"role": self._settings.fleet_role, "broker": self.broker.where})

    async def _monitor(self) -> None:
        store = self._records.store
        while True:
            store_ok = True
            if isinstance(store, PostgresJobStore):
                try:
                    await store.ping()
                except JobStoreError as exc:
                    store_ok = False
                    if self._state.fleet_ok:
                        logger.warning("the job store does not answer", extra={"reason": str(exc)})
            if self.worker is not None and self._state.comfy_up.is_set():
                # The broker's own outage needs nothing here: its consumers come back with the connection.
                await (self.worker.resume() if store_ok else self.worker.pause())
            self.store_ok = store_ok
            ok = store_ok and self.broker.connected
            if ok != self._state.fleet_ok:
                logger.info("fleet connectivity changed", extra={"ok": ok, "broker_connected": self.broker.connected})
            self._state.fleet_ok = ok
            await asyncio.sleep(MONITOR_INTERVAL_S)

    async def _run_prompt(self, message: JobMessage, record: JobRecord) -> None:
        request = PromptRequest.model_validate({**message.request, **message.secrets})
        if not message.sync:
            await self._delivery.run_queued(request, record)
            return
        reply_to = message.reply_to
        try:
            answer = await self._delivery.answer(request, record, extra=message.extra, from_queue=True)
        except Exception as exc:
            if ends_attempt(exc) or reply_to is None:
                raise
            # Answered as the request would be here: the job's record holds that answer (its error and status code).
            error = dict(record.error or {"error": f"Internal error: {type(exc).__name__}", "status_code": 500})
            answer = Answer(int(error.pop("status_code", 500)), JsonBody(error))
        if reply_to is not None and self._answers.hand(message.id, reply_to, answer):
            return  # the request waiting on this replica sends it, then ends the job (`answer.sent`)
        try:
            if reply_to is not None:
                assert isinstance(answer.body, JsonBody)  # this server's pipeline answered it
                await send_answer(self.broker, reply_to, message.id, record.attempts, answer.status_code, answer.body)
        finally:
            if answer.sent is not None:
                await answer.sent()

    async def interrupt(self, job_id: str) -> bool:
        """Cancel a job wherever it is: here, queued in the broker (its record canceled, which the worker that takes
        it honours), or running on another worker (a control message). False when no such job is unfinished."""
        if await self._runner.interrupt(job_id):
            return True
        try:
            record = await self._records.store.get(job_id)
            if record is None or record.terminal:
                return False
            if record.status is JobStatus.QUEUED:
                record.status, record.completed_at = JobStatus.CANCELED, now_ms()
                record.error = {"error": CANCELED_BEFORE_RUN}
                if await self._records.store.save_if(record, {JobStatus.QUEUED}):
                    self.on_record(record)
        except JobStoreError as exc:
            raise FleetUnavailable(f"The job store does not answer: {exc}") from None
        await self.cancels.request(job_id)
        return True

    async def drain(self) -> None:
        if self.worker is not None:
            await self.worker.drain()

    async def aclose(self) -> None:
        if self.worker is not None:
            await self.worker.aclose()
        await self.broker.close()
