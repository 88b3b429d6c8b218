"""The fleet's RabbitMQ: its objects, and every AMQP operation the server performs (the one place aio-pika's
errors are converted, into BrokerError).

Objects, named from FLEET_QUEUE_PREFIX (`p` below):
- `p.jobs.p0` … `p.jobs.pN` (N = FLEET_PRIORITY_LEVELS - 1, the most urgent): one durable quorum queue per priority
  level. Quorum queues replicate, count deliveries and dead-letter a message past their delivery limit; they take
  priorities only from RabbitMQ 4.0, so levels are queues, FIFO each, and a worker takes the most urgent it holds
  (worker.py). `x-delivery-limit` is JOB_MAX_ATTEMPTS - 1 redeliveries: JOB_MAX_ATTEMPTS deliveries in all.
  `x-consumer-timeout` lets a job run as long as PROMPT_TIMEOUT_S allows (RabbitMQ 3.12 and later; older brokers
  need `consumer_timeout` in rabbitmq.conf, see the README).
- `p.jobs.route` (direct): where jobs of a model key are published, with the key (fleet/routing.py) as routing key
  and their level as the `level` header; a job of no key goes straight to its level's queue. A key some worker is
  warm for has a model queue bound; any other job goes on to the exchange's alternate exchange, `p.jobs.levels`
  (headers), which routes it by `level` to `p.jobs.p<level>`.
- `p.jobs.model.<key>`: a model queue, declared by the workers warm for that key (worker.py). A job waits there at
  most FLEET_MODEL_WAIT_S (`x-message-ttl`) for one of them, then is dead-lettered (at-least-once) to
  `p.jobs.levels`, into its priority queue, for any worker. So does a job past the model queue's delivery limit
  (workers that died under it): its last attempts are in the priority queue, where the dead-letter queue awaits it.
  A model queue no worker consumed for an hour (`x-expires`, long after its jobs' TTL) is deleted with its binding.
- `p.dead`: the fanout exchange the priority queues dead-letter to, bound to `p.jobs.dead` (kept for operators) and to
  `p.jobs.dead.notify` (read by the replicas, which fail the job's record).
- `p.events` (topic): each job's events, routing key `job.<id>`; a replica binds the ids it streams or waits for.
- `p.control` (fanout): cancel requests, to every worker.
- Per replica, exclusive queues `p.replica.<id>.events`, `.control` and `.answers` (the bodies of synchronous
  answers that workers stream back to it).

Priorities hold in the priority queues; a model queue is FIFO, and a worker runs the jobs it holds the most urgent
first, a job of a model it is warm for before others of its level.

The connection is aio-pika's robust one: after a broker restart it reconnects (every RECONNECT_INTERVAL_S) and
declares again the queues, bindings and consumers it had. Publishing waits for the broker's confirm, so a job the API
accepted is on disk in a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
    ExchangeType,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from ..errors import BrokerError
from ..urls import redact_url

logger = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 2.0
# Seconds an AMQP call may take before the broker counts as unreachable: submissions fail fast with 503.
CALL_TIMEOUT_S = 10.0
# How long a model queue outlives its last consumer: far longer than its jobs wait in it (FLEET_MODEL_WAIT_S), since
# a queue that expires takes the messages still in it along.
MODEL_QUEUE_EXPIRY_MS = 3600 * 1000
LEVEL_HEADER = "level"

Consumer = Callable[[AbstractIncomingMessage], Awaitable[None]]


@dataclass(frozen=True)
class Topology:
    prefix: str
    levels: int

    def job_queue(self, level: int) -> str:
        return f"{self.prefix}.jobs.p{level}"

    @property
    def job_queues(self) -> list[str]:
        return [self.job_queue(level) for level in range(self.levels)]

    @property
    def route_exchange(self) -> str:
        return f"{self.prefix}.jobs.route"

    @property
    def levels_exchange(self) -> str:
        return f"{self.prefix}.jobs.levels"

    def model_queue(self, key: str) -> str:
        return f"{self.prefix}.jobs.model.{key}"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.jobs.dead"

    @property
    def dead_notify_queue(self) -> str:
        return f"{self.prefix}.jobs.dead.notify"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def control_exchange(self) -> str:
        return f"{self.prefix}.control"


def event_key(job_id: str) -> str:
    return f"job.{job_id}"


@contextlib.contextmanager
def converted(what: str) -> Iterator[None]:
    """aio-pika's, aiormq's and the socket's errors, and a call that timed out, as BrokerError."""
    try:
        yield
    except (AMQPError, aiormq.exceptions.AMQPError, ChannelInvalidStateError, OSError, TimeoutError) as exc:
        raise BrokerError(f"{what}: {type(exc).__name__}: {exc}") from exc


class Broker:
    def __init__(
        self, url: str, topology: Topology, *, max_attempts: int, consumer_timeout_ms: int, model_wait_ms: int = 0
    ) -> None:
        """`model_wait_ms`: how long a job waits in a model queue for a worker warm for its models."""
        self._url = url
        self._model_wait_ms = model_wait_ms
        self.where = redact_url(url)
        self.topology = topology
        self._max_attempts = max_attempts
        self._consumer_timeout_ms = consumer_timeout_ms
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._events_queue: AbstractQueue | None = None
        self._bound: set[str] = set()
        self._job_channel: AbstractChannel | None = None
        self._job_consumers: list[AbstractQueue] = []
        # Model key → its queue, consumed on the job channel while this worker is warm for the key and has room.
        self._model_consumers: dict[str, tuple[AbstractQueue, str]] = {}
        # This replica's name in its own queues' names.
        self.replica = uuid.uuid4().hex[:12]

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.transport is not None

    async def connect(self) -> None:
        """Connect and declare the fleet's objects; BrokerError when the broker does not answer or refuses."""
        with converted(f"cannot connect to the broker {self.where}"):
            self._connection = await asyncio.wait_for(
                aio_pika.connect_robust(self._url, reconnect_interval=RECONNECT_INTERVAL_S), CALL_TIMEOUT_S
            )
            self._publisher = await self._connection.channel(publisher_confirms=True)
            await self._declare(self._publisher)
            # Events and answers are transient (a follower re-reads the store; an answer's queue dies with its
            # replica): published on a channel of their own without confirms, they do not wait for the broker.
            transient = await self._connection.channel(publisher_confirms=False)
            self._exchanges["transient events"] = await transient.get_exchange(self.topology.events_exchange)
            self._exchanges["transient default"] = transient.default_exchange
            self._connection.reconnect_callbacks.add(self._reconnected)
        logger.info("connected to the broker", extra={"broker": self.where})

    async def _declare(self, channel: AbstractChannel) -> None:
        names = self.topology
        dead = await channel.declare_exchange(names.dead_exchange, ExchangeType.FANOUT, durable=True)
        for name in (names.dead_queue, names.dead_notify_queue):
            queue = await self._dead_queue(channel, name)
            await queue.bind(dead)
        levels = await channel.declare_exchange(names.levels_exchange, ExchangeType.HEADERS, durable=True)
        for level, name in enumerate(names.job_queues):
            queue = await self._job_queue(channel, name)
            await queue.bind(levels, arguments={"x-match": "all", LEVEL_HEADER: level})
        route = await channel.declare_exchange(
            names.route_exchange,
            ExchangeType.DIRECT,
            durable=True,
            arguments={"alternate-exchange": names.levels_exchange},
        )
        self._exchanges = {
            "route": route,
            # A job of no model key goes straight to its level's queue: a headers exchange, reached through the
            # route exchange's alternate, is two routing steps more for the broker (a confirmed publish took 0.85 ms
            # that way, 0.68 straight, on the machine of bench/fleet.py's figures in the README).
            "queues": channel.default_exchange,
            "dead": dead,
            "events": await channel.declare_exchange(names.events_exchange, ExchangeType.TOPIC, durable=True),
            "control": await channel.declare_exchange(names.control_exchange, ExchangeType.FANOUT, durable=True),
        }

    async def _job_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        # Declared (idempotently) on each channel that uses it: a robust channel declares again, after a reconnect,
        # the queues declared on it, and then restores their consumers.
        return await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self._max_attempts - 1,
                "x-dead-letter-exchange": self.topology.dead_exchange,
                "x-consumer-timeout": self._consumer_timeout_ms,
            },
        )

    async def _model_queue(self, channel: AbstractChannel, key: str) -> AbstractQueue:
        queue = await channel.declare_queue(
            self.topology.model_queue(key),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": self._model_wait_ms,
                "x-expires": MODEL_QUEUE_EXPIRY_MS,
                "x-delivery-limit": self._max_attempts - 1,
                "x-dead-letter-exchange": self.topology.levels_exchange,
                # Re-published with the broker's own confirms: a job never falls between the two queues.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-consumer-timeout": self._consumer_timeout_ms,
            },
        )
        await queue.bind(self.topology.route_exchange, key)
        return queue

    @staticmethod
    async def _dead_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
        return await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})

    def _reconnected(self, *_: Any) -> None:
        logger.info("reconnected to the broker", extra={"broker": self.where})

    # Publishing -------------------------------------------------------------------------------------------
    async def publish_job(
        self,
        body: bytes,
        level: int,
        *,
        job_id: str,
        reply_to: str | None = None,
        model_key: str | None = None,
    ) -> None:
        """Put a job in the queue of its model key, when workers are warm for it, else in the queue of its priority
        level; returns once the broker confirmed it (on disk)."""
        message = aio_pika.Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=job_id,
            correlation_id=job_id,
            reply_to=reply_to,
            content_type="application/json",
            headers={LEVEL_HEADER: level},
        )
        if model_key is None:
            await self._publish("queues", message, self.topology.job_queue(level), what="cannot queue the job")
        else:
            await self._publish("route", message, model_key, what="cannot queue the job")

    async def publish_dead(self, message: AbstractIncomingMessage, why: str) -> None:
        """Put a job in the dead-letter queues as the broker dead-letters one (for a job from a model queue, whose
        dead-letter exchange leads to the priority queues instead)."""
        dead = aio_pika.Message(
            message.body,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            headers={**(message.headers or {}), "x-first-death-reason": why},
        )
        await self._publish("dead", dead, "", what="cannot dead-letter the job")

    async def publish_event(self, job_id: str, body: bytes) -> None:
        """A job's event, for the replicas that follow the job (not persisted: terminal states are in the store)."""
        message = aio_pika.Message(body, content_type="application/json", delivery_mode=DeliveryMode.NOT_PERSISTENT)
        await self._publish(
            "transient events", message, event_key(job_id), what="cannot publish the job's event", mandatory=False
        )

    async def publish_control(self, body: bytes) -> None:
        message = aio_pika.Message(body, content_type="application/json")
        await self._publish("control", message, "", what="cannot send the control message", mandatory=False)

    async def publish_reply(self, reply_to: str, body: bytes, *, job_id: str, headers: dict[str, Any]) -> None:
        """A chunk of a synchronous answer, to the replica that waits for it."""
        message = aio_pika.Message(body, correlation_id=job_id, headers=headers)
        await self._publish("transient default", message, reply_to, what="cannot send the answer", mandatory=False)

    async def _publish(
        self, exchange: str, message: aio_pika.Message, routing_key: str, *, what: str, mandatory: bool = True
    ) -> None:
        if not self.connected or exchange not in self._exchanges:
            raise BrokerError(f"{what}: the broker {self.where} is not connected")
        with converted(what):
            confirmation = await self._exchanges[exchange].publish(
                message, routing_key, mandatory=mandatory, timeout=CALL_TIMEOUT_S
            )
        if isinstance(confirmation, aiormq.abc.DeliveredMessage):  # returned: no queue took it
            raise BrokerError(f"{what}: no queue {routing_key!r} took it")
        if confirmation is not None and not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerError(f"{what}: the broker did not confirm it ({type(confirmation).__name__})")

    # Consuming -------------------------------------------------------------------------------------------
    async def consume_jobs(self, callback: Consumer, prefetch: int) -> list[str]:
        """Consume every job queue on a channel of their own, at most `prefetch` unacknowledged jobs per queue; the
        consumer tags. Called again after `stop_consuming_jobs`, it consumes on the same channel: the jobs still
        running are acknowledged on the channel they came on."""
        if self._job_channel is None:
            self._job_channel = await self._channel(prefetch)
        tags = []
        self._job_consumers = []
        with converted("cannot consume the job queues"):
            for name in self.topology.job_queues:
                queue = await self._job_queue(self._job_channel, name)
                self._job_consumers.append(queue)
                tags.append(await queue.consume(callback))
        return tags

    async def stop_consuming_jobs(self, tags: list[str]) -> None:
        """Take no more jobs; the ones held stay held until each is acknowledged or handed back."""
        with converted("cannot stop consuming"):
            for queue, tag in zip(self._job_consumers, tags, strict=True):
                await queue.cancel(tag)
            for key in list(self._model_consumers):
                await self.stop_consuming_model(key)

    @property
    def model_keys(self) -> set[str]:
        """The model keys whose queues this replica consumes."""
        return set(self._model_consumers)

    async def consume_model(self, key: str, callback: Consumer) -> None:
        """Take jobs from the model queue of `key` too (on the job channel: `consume_jobs` first)."""
        if key in self._model_consumers or self._job_channel is None:
            return
        with converted("cannot consume the model queue"):
            queue = await self._model_queue(self._job_channel, key)
            self._model_consumers[key] = (queue, await queue.consume(callback))

    async def stop_consuming_model(self, key: str) -> None:
        found = self._model_consumers.pop(key, None)
        if found is not None:
            queue, tag = found
            with converted("cannot stop consuming the model queue"):
                await queue.cancel(tag)

    async def consume_dead(self, callback: Consumer) -> None:
        channel = await self._channel(16)
        with converted("cannot consume the dead-letter notices"):
            queue = await self._dead_queue(channel, self.topology.dead_notify_queue)
            await queue.consume(callback)

    async def consume_control(self, callback: Consumer) -> None:
        channel = await self._channel(64)
        with converted("cannot consume control messages"):
            queue = await channel.declare_queue(self._own("control"), exclusive=True, auto_delete=True)
            await queue.bind(self.topology.control_exchange)
            await queue.consume(callback, no_ack=True)

    async def consume_events(self, callback: Consumer) -> None:
        """This replica's queue of job events, bound to no job yet (`follow`)."""
        channel = await self._channel(256)
        with converted("cannot consume job events"):
            self._events_queue = await channel.declare_queue(self._own("events"), exclusive=True, auto_delete=True)
            await self._events_queue.consume(callback, no_ack=True)

    async def follow(self, job_id: str) -> None:
        """Receive the job's events (on the queue of `consume_events`)."""
        key = event_key(job_id)
        if self._events_queue is None or key in self._bound:
            return
        self._bound.add(key)
        with converted("cannot follow the job's events"):
            await self._events_queue.bind(self.topology.events_exchange, key)

    async def unfollow(self, job_id: str) -> None:
        key = event_key(job_id)
        if self._events_queue is None or key not in self._bound:
            return
        self._bound.discard(key)
        with converted("cannot unfollow the job's events"):
            await self._events_queue.unbind(self.topology.events_exchange, key)

    async def consume_replies(self, callback: Consumer, prefetch: int) -> str:
        """This replica's queue for synchronous answers; its name (a job's `reply_to`)."""
        channel = await self._channel(prefetch)
        with converted("cannot consume answers"):
            queue = await channel.declare_queue(self._own("answers"), exclusive=True, auto_delete=True)
            await queue.consume(callback)
        return queue.name

    def _own(self, what: str) -> str:
        # Named, not server-named: a robust channel declares a queue again by its name after a reconnect, and the
        # broker refuses a client's declaration of the `amq.gen-` names it makes up.
        return f"{self.topology.prefix}.replica.{self.replica}.{what}"

    async def _channel(self, prefetch: int) -> AbstractChannel:
        if self._connection is None:
            raise BrokerError(f"the broker {self.where} is not connected")
        with converted("cannot open a channel"):
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
