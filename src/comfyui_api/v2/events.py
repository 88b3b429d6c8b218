"""Live events of each job, for the Server-Sent Events streams of GET /api/v2/jobs/{id}/events.

`JobEvents` is told of every change to a job's record (`on_record`, beside the record writer) and of ComfyUI's
preview images (`on_preview`, through `PreviewRouter`), and turns them into events:
- `status` when the status or the queue position changed;
- `progress` when the progress changed, at most one per `progress_interval_s`: the first at once, the latest of those
  that came in between once the interval has passed;
- `output` for each output newly listed in the record;
- `preview` likewise throttled, the latest image winning; only the latest is kept, and it is encoded (JPEG, base64)
  when a stream first sends it, never on the path of ComfyUI's messages.
When the record becomes terminal: the pending progress, the outputs not yet sent, then the terminal `status`; every
stream of the job ends after it.

Events are numbered per job from 1, and a job keeps its last `buffer_size` status, progress and output events, so
that a client that reconnects with `Last-Event-ID: n` is sent every event after n, in order, when the buffer still
holds them all; previews are not buffered, the latest one is sent when its id is after n. Otherwise (n older than
the buffer, or from before a restart) the stream starts with a snapshot: the latest status, progress and preview and
every output, each with the id it was first sent with, after n only. A client has seen every event that is still
the latest of its kind and numbered up to its n (in its stream's snapshot or live), so a resumed stream never sends
an id twice and only ever leaves out events that were superseded.

Memory is bounded: a finished job's events are kept for `linger_s`, for late resumers; `max_jobs` jobs at most (the
oldest finished dropped first); each stream waits on at most `queue_size` events, and one that falls that far behind
is ended (its client resumes with Last-Event-ID) instead of growing. `max_streams` streams at once at most.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

from ..comfy.previews import JPEG, Preview, as_jpeg, decode_preview
from ..errors import V2Error
from ..jobstore.records import TERMINAL, JobRecord, JobStatus

logger = logging.getLogger(__name__)

EventName = Literal["status", "progress", "preview", "output"]
Rewrite = Callable[[str, dict[str, Any]], dict[str, Any]]

# The contract's pace for progress and previews (about two a second).
PROGRESS_INTERVAL_S = 0.5
PREVIEW_INTERVAL_S = 0.5
BUFFER_SIZE = 256
# As deep as the buffer: a subscriber let go with a full queue could not have been caught up from the buffer anyway,
# and a job's last outputs all arrive at once.
QUEUE_SIZE = 256
MAX_STREAMS = 100
LINGER_S = 60.0
MAX_JOBS = 10_000
# Retry-After of a 429 too_many_streams: streams end with their jobs, so a slot frees up within seconds or so.
STREAMS_RETRY_AFTER_S = 5

KEEP_ALIVE_FRAME: Final = b": keep-alive\n\n"

_END_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})

T = TypeVar("T")


class PreviewImage:
    """A job's preview as ComfyUI sent it; made JPEG and base64 once, by the first stream that sends it."""

    def __init__(self, preview: Preview) -> None:
        self.preview = preview
        self._encoded: asyncio.Future[str] | None = None

    async def payload(self) -> dict[str, Any]:
        """The PreviewEvent: node_id, content_type (always JPEG), data_base64."""
        if self._encoded is None:
            self._encoded = asyncio.ensure_future(asyncio.to_thread(_jpeg_base64, self.preview))
        # Shielded: a stream that leaves while it waits does not cancel the encoding other streams await.
        encoded = await asyncio.shield(self._encoded)
        return {"node_id": self.preview.node_id or "", "content_type": JPEG, "data_base64": encoded}


def _jpeg_base64(preview: Preview) -> str:
    return base64.b64encode(as_jpeg(preview)).decode("ascii")


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a job: its id (per job, from 1), its name, and its data (a PreviewImage for a preview)."""

    id: int
    name: EventName
    data: dict[str, Any] | PreviewImage

    @property
    def ends(self) -> bool:
        """A terminal status: the last event of its job's streams."""
        return self.name == "status" and isinstance(self.data, dict) and self.data["status"] in TERMINAL


class KeepAlive:
    """Sent after `keepalive_s` without events, as a comment frame: proxies close connections that stay silent."""


KEEP_ALIVE: Final = KeepAlive()
Frame = Event | KeepAlive


async def render(frame: Frame, *, rewrite: Rewrite | None = None) -> bytes:
    """The frame in SSE: `id`, `event` and `data` (compact JSON) lines, or a comment for a keep-alive.

    `rewrite(name, data)` returns the data to send instead (such as output URLs made absolute); it must not change
    the dict it is given, which every stream of the job shares. A preview whose image does not decode is sent as a
    comment, so the stream goes on."""
    if isinstance(frame, KeepAlive):
        return KEEP_ALIVE_FRAME
    if isinstance(frame.data, PreviewImage):
        try:
            data = await frame.data.payload()
        except Exception as exc:  # whatever Pillow raises for an image it cannot read: a preview is never worth more
            logger.warning("dropped a preview that does not decode", extra={"reason": f"{type(exc).__name__}: {exc}"})
            return KEEP_ALIVE_FRAME
    else:
        data = frame.data
    if rewrite is not None:
        data = rewrite(frame.name, data)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {frame.id}\nevent: {frame.name}\ndata: {text}\n\n".encode()


async def render_all(stream: JobStream, *, rewrite: Rewrite | None = None) -> AsyncIterator[bytes]:
    """`render` of each frame: the body of a streaming response. Frames that are there at once (a job's last
    outputs and its terminal status) go in one chunk: every chunk is a socket write (bench/v2.py)."""
    async for frame in stream:
        yield b"".join([await render(each, rewrite=rewrite) for each in (frame, *stream.ready())])


class _Throttle(Generic[T]):
    """At most one value per interval passed on, the latest winning: the first at once, then the latest of those
    offered in between when the interval has passed."""

    def __init__(self, interval_s: float, emit: Callable[[T], None]) -> None:
        self._interval_s = interval_s
        self._emit = emit
        self._pending: T | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = -math.inf

    def offer(self, value: T) -> None:
        self._pending = value
        if self._timer is not None:
            return  # passed on when the timer fires
        loop = asyncio.get_running_loop()
        wait = self._last + self._interval_s - loop.time()
        if wait <= 0:
            self.flush()
        else:
            self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Pass the pending value on now, if there is one."""
        value = self._pending
        self.cancel()
        if value is not None:
            self._last = asyncio.get_running_loop().time()
            self._emit(value)

    def cancel(self) -> None:
        """Forget the pending value."""
        self._pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Subscriber:
    """The events one live stream has yet to send."""

    def __init__(self, limit: int) -> None:
        self._events: collections.deque[Event] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._ended = False

    def put(self, event: Event) -> bool:
        """Queue the event; False, and the stream ends once it has sent what it holds, when it is too far behind."""
        if len(self._events) >= self._limit:
            self.end()
            return False
        self._events.append(event)
        self._ready.set()
        return True

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    def take(self) -> Event | None:
        """The next event if there is one now."""
        return self._events.popleft() if self._events else None

    async def next(self, keepalive_s: float | None) -> Frame | None:
        """The next event; KEEP_ALIVE after `keepalive_s` without one; None once ended and drained."""
        while not self._events:
            if self._ended:
                return None
            self._ready.clear()
            try:
                async with asyncio.timeout(keepalive_s):
                    await self._ready.wait()
            except TimeoutError:
                return KEEP_ALIVE
        return self._events.popleft()


def _status_data(status: JobStatus, queue_position: int | None) -> dict[str, Any]:
    return {"status": status, "queue_position": queue_position}


class _JobLog:
    """One job's events: the latest of each kind, the buffer for resumers, and its live subscribers."""

    def __init__(
        self, job_id: str, *, after: int, buffer_size: int, progress_interval_s: float, preview_interval_s: float
    ) -> None:
        """Ids start after `after`: the last id of an earlier job with the same id, whose resumers then get this
        job's events from its start."""
        self.job_id = job_id
        self.last_id = after
        # Ids up to this one are not in the buffer (pushed out, or an earlier job's): resuming after an earlier id
        # would miss events.
        self.evicted_through = after
        self._ring: collections.deque[Event] = collections.deque(maxlen=buffer_size)
        # Held weakly: the subscriber of a stream dropped unread goes with it.
        self.subscribers: weakref.WeakSet[_Subscriber] = weakref.WeakSet()
        self.terminal = False
        self.expiry: asyncio.TimerHandle | None = None
        self._status: tuple[JobStatus, int | None] | None = None
        self._progress_seen: dict[str, Any] | None = None
        self._outputs_seen = 0
        self._status_event: Event | None = None
        self._progress_event: Event | None = None
        self._preview_event: Event | None = None
        self._output_events: list[Event] = []
        self._progress = _Throttle(progress_interval_s, self._emit_progress)
        self._preview = _Throttle(preview_interval_s, self._emit_preview)

    # Changes ---------------------------------------------------------------------------------------------------
    def record(self, record: JobRecord) -> None:
        """The record changed: status first while the job runs, last when it ends (after its progress and
        outputs)."""
        if not record.terminal:
            self._record_status(record)
        self._record_progress(record.progress)
        self._record_outputs(record.outputs)
        if record.terminal:
            self._progress.flush()
            self._preview.cancel()
            self._preview_event = None  # an unfinished image is no part of a finished job
            self._record_status(record)
            self.terminal = True
            self.close()

    def _record_status(self, record: JobRecord) -> None:
        status = (record.status, record.queue_position)
        if status != self._status:
            self._status = status
            self._status_event = self._emit("status", _status_data(*status))

    def _record_progress(self, progress: dict[str, Any] | None) -> None:
        if progress == self._progress_seen:
            return
        # Copied: the caller may change the record's progress in place.
        self._progress_seen = None if progress is None else dict(progress)
        if self._progress_seen is None:
            # Started over (a new attempt): the earlier attempt's progress is no one's latest any more.
            self._progress.cancel()
            self._progress_event = None
        else:
            self._progress.offer(self._progress_seen)

    def _record_outputs(self, outputs: list[dict[str, Any]]) -> None:
        self._outputs_seen = min(self._outputs_seen, len(outputs))
        for output in outputs[self._outputs_seen :]:
            self._output_events.append(self._emit("output", dict(output)))
        self._outputs_seen = len(outputs)

    def preview(self, image: PreviewImage) -> None:
        if not self.terminal:
            self._preview.offer(image)

    def _emit_progress(self, progress: dict[str, Any]) -> None:
        self._progress_event = self._emit("progress", progress)

    def _emit_preview(self, image: PreviewImage) -> None:
        self._preview_event = self._emit("preview", image, buffered=False)

    def _emit(self, name: EventName, data: dict[str, Any] | PreviewImage, *, buffered: bool = True) -> Event:
        self.last_id += 1
        event = Event(self.last_id, name, data)
        if buffered:
            if len(self._ring) == self._ring.maxlen:
                self.evicted_through = self._ring[0].id
            self._ring.append(event)
        for subscriber in tuple(self.subscribers):
            if not subscriber.put(event):
                self.subscribers.discard(subscriber)
                logger.info(
                    "ended an event stream that fell behind; its client resumes with Last-Event-ID",
                    extra={"job_id": self.job_id, "event_id": event.id},
                )
        return event

    # Streams ---------------------------------------------------------------------------------------------------
    def subscribe(self, queue_size: int) -> _Subscriber:
        subscriber = _Subscriber(queue_size)
        self.subscribers.add(subscriber)
        return subscriber

    def catch_up(self, last_event_id: int | None) -> list[Event]:
        """What a stream starts with: every event after `last_event_id` while the buffer holds them all, else the
        snapshot (after `last_event_id` when it is one of this job's ids)."""
        if last_event_id is not None and self.evicted_through <= last_event_id <= self.last_id:
            events = [event for event in self._ring if event.id > last_event_id]
            preview = self._preview_event
            if preview is not None and preview.id > last_event_id:
                events.append(preview)
                events.sort(key=_by_id)
            return events
        after = last_event_id if last_event_id is not None and last_event_id <= self.last_id else 0
        return self.snapshot(after)

    def snapshot(self, after: int) -> list[Event]:
        """The latest status, progress and preview, and every output, numbered after `after`, in id order."""
        latest = (self._status_event, self._progress_event, self._preview_event, *self._output_events)
        return sorted((event for event in latest if event is not None and event.id > after), key=_by_id)

    def close(self) -> None:
        """End every live stream of the job once it has sent what it holds, and stop its timers."""
        for subscriber in self.subscribers:
            subscriber.end()
        self.subscribers.clear()
        self._progress.cancel()
        self._preview.cancel()
        if self.expiry is not None:
            self.expiry.cancel()


def _by_id(event: Event) -> int:
    return event.id


class _Frames:
    """What one stream sends: the events it starts with, then (following a live job) its subscriber's, until the
    terminal status."""

    def __init__(
        self,
        events: list[Event],
        following: tuple[_JobLog, _Subscriber] | None = None,
        keepalive_s: float | None = None,
    ) -> None:
        self._events = collections.deque(events)
        self._following = following
        self._keepalive_s = keepalive_s
        self._ended = False

    async def next(self) -> Frame | None:
        """The next frame, waiting for it; None once the stream has ended."""
        if self._ended:
            return None
        frame = self._take()
        if frame is None and self._following is not None:
            frame = await self._following[1].next(self._keepalive_s)
        if frame is None:
            self.close()
            return None
        return self._sent(frame)

    def ready(self) -> list[Frame]:
        """The frames there are to send now without waiting, up to the stream's end."""
        frames: list[Frame] = []
        while not self._ended and (frame := self._take()) is not None:
            frames.append(self._sent(frame))
        return frames

    def _take(self) -> Event | None:
        """The next event there is now: one the stream started with, else one its subscriber holds."""
        if self._events:
            return self._events.popleft()
        return None if self._following is None else self._following[1].take()

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (its last frame handed out)."""
        return self._ended

    def _sent(self, frame: Frame) -> Frame:
        if isinstance(frame, Event) and frame.ends:
            self.close()
        return frame

    def close(self) -> None:
        self._ended = True
        if self._following is not None:
            log, subscriber = self._following
            log.subscribers.discard(subscriber)
            self._following = None


class JobStream:
    """One client's frames, an async iterator. It holds one of the hub's stream slots until it ends, is closed,
    or is dropped unread (the hub counts streams by weak reference: a response that never started leaks none)."""

    def __init__(self, frames: _Frames, done: Callable[[JobStream], None]) -> None:
        self._frames = frames
        self._done = done

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> Frame:
        try:
            frame = await self._frames.next()
        except BaseException:
            # A cancellation or a failure ends the stream too.
            self.close()
            raise
        if frame is None:
            self.close()
            raise StopAsyncIteration
        return frame

    def ready(self) -> list[Frame]:
        """The frames there are to send now, without waiting (sent together, they take one write)."""
        return self._frames.ready()

    @property
    def ended(self) -> bool:
        """Whether the last frame was handed out."""
        return self._frames.ended

    def close(self) -> None:
        self._frames.close()
        self._done(self)

    async def aclose(self) -> None:
        self.close()


class Remote(Protocol):
    async def follow(self, job_id: str) -> None:
        """Feed the job's record changes made on another replica to `JobEvents.on_record`, until it ends."""


class JobEvents:
    """The live events of this server's jobs (see the module's docstring); one per server, used in its event loop."""

    def __init__(
        self,
        *,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        preview_interval_s: float = PREVIEW_INTERVAL_S,
        buffer_size: int = BUFFER_SIZE,
        queue_size: int = QUEUE_SIZE,
        max_streams: int = MAX_STREAMS,
        max_jobs: int = MAX_JOBS,
        linger_s: float = LINGER_S,
    ) -> None:
        self._progress_interval_s = progress_interval_s
        self._preview_interval_s = preview_interval_s
        self._buffer_size = buffer_size
        self._queue_size = queue_size
        self._max_streams = max_streams
        self._max_jobs = max_jobs
        self._linger_s = linger_s
        self._jobs: dict[str, _JobLog] = {}
        # Finished jobs in the order they finished: the first to go when there are too many jobs.
        self._finished: dict[str, _JobLog] = {}
        self._streams: weakref.WeakSet[JobStream] = weakref.WeakSet()
        # Fleet mode: where the events of a job running on another replica come from (fleet/relay.py's Followers).
        self.remote: Remote | None = None

    @property
    def streams(self) -> int:
        """Streams open now."""
        return len(self._streams)

    # What happens to jobs ------------------------------------------------------------------------------------
    def on_record(self, record: JobRecord) -> None:
        """A job's record changed (the registry's `on_record`): O(1), never waits."""
        log = self._jobs.get(record.id)
        if log is not None and log.terminal:
            if record.terminal:
                return  # the first end recorded stands
            # A new job under the id of one that finished: numbered on from it.
            self._drop(log)
            log = self._start(record.id, after=log.last_id)
        elif log is None:
            log = self._start(record.id, after=0)
        log.record(record)
        if log.terminal:
            self._finished[log.job_id] = log
            log.expiry = asyncio.get_running_loop().call_later(self._linger_s, self._expire, log)

    def on_preview(self, job_id: str, node_id: str | None, content_type: str, data: bytes) -> None:
        """ComfyUI sent a preview image (JPEG or PNG, as `content_type` says) of the node `node_id` of a job."""
        log = self._jobs.get(job_id)
        if log is not None:
            log.preview(PreviewImage(Preview(content_type, data, node_id=node_id)))

    def _start(self, job_id: str, *, after: int) -> _JobLog:
        while len(self._jobs) >= self._max_jobs:
            oldest = next(iter(self._finished.values()), None)
            if oldest is None:
                oldest = next(iter(self._jobs.values()))
                logger.warning(
                    "too many jobs in flight to follow them all; dropped the oldest", extra={"job_id": oldest.job_id}
                )
            self._drop(oldest)
        log = _JobLog(
            job_id,
            after=after,
            buffer_size=self._buffer_size,
            progress_interval_s=self._progress_interval_s,
            preview_interval_s=self._preview_interval_s,
        )
        self._jobs[job_id] = log
        return log

    def _expire(self, log: _JobLog) -> None:
        log.expiry = None
        self._drop(log)

    def _drop(self, log: _JobLog) -> None:
        if self._jobs.get(log.job_id) is log:
            del self._jobs[log.job_id]
        if self._finished.get(log.job_id) is log:
            del self._finished[log.job_id]
        log.close()

    # Streams -------------------------------------------------------------------------------------------------
    async def stream(
        self,
        job_id: str,
        *,
        last_event_id: int | None = None,
        snapshot: Callable[[], Awaitable[JobRecord | None]],
        keepalive_s: float | None = None,
    ) -> JobStream | None:
        """A stream of the job's events (see the module's docstring), or None when no job has this id.

        A job followed here streams live until its terminal status; any other is read with `snapshot()` (its stored
        record, None when unknown): its status, progress and outputs, then the stream ends. `keepalive_s`: a
        KEEP_ALIVE frame after that long without an event. Raises V2Error 429 `too_many_streams` when
        `max_streams` are open."""
        frames = await self._frames(job_id, last_event_id, snapshot, keepalive_s)
        if frames is None:
            return None
        if len(self._streams) >= self._max_streams:
            raise V2Error(
                "too_many_streams",
                f"{self._max_streams} event streams are open, the most this server serves at once; retry later, "
                "or poll GET /api/v2/jobs/{id}",
                status_code=429,
                retry_after_s=STREAMS_RETRY_AFTER_S,
            )
        stream = JobStream(frames, self._streams.discard)
        self._streams.add(stream)
        return stream

    async def _frames(
        self,
        job_id: str,
        last_event_id: int | None,
        snapshot: Callable[[], Awaitable[JobRecord | None]],
        keepalive_s: float | None,
    ) -> _Frames | None:
        log = self._jobs.get(job_id)
        if log is None:
            record = await snapshot()
            if record is None:
                return None
            log = self._jobs.get(job_id)  # it may have started while the store answered
            if log is None and self.remote is not None and not record.terminal:
                # It runs on another replica: its events come from there, from this snapshot on.
                await self.remote.follow(job_id)
                log = self._jobs.get(job_id)
                if log is None:
                    self.on_record(record)
                    log = self._jobs[job_id]
            if log is None:
                return _Frames(_stored_events(record, last_event_id))
        # Caught up and subscribed in one step, with no await between: no event is missed or sent twice. From here
        # on the stream holds what happens, whenever it is first read.
        events = log.catch_up(last_event_id)
        if log.terminal:
            return _Frames(events)
        return _Frames(events, (log, log.subscribe(self._queue_size)), keepalive_s)


def _stored_events(record: JobRecord, last_event_id: int | None) -> list[Event]:
    """The events of a job known only from its stored record: numbered after `last_event_id`, so that the ids a
    client sees only grow, whatever it was sent before (by this server before a restart, or in an earlier try)."""
    status = ("status", _status_data(record.status, record.queue_position))
    payloads: list[tuple[EventName, dict[str, Any]]] = []
    if not record.terminal:
        payloads.append(status)
    if record.progress is not None:
        payloads.append(("progress", dict(record.progress)))
    payloads.extend(("output", dict(output)) for output in record.outputs)
    if record.terminal:
        payloads.append(status)
    first = (last_event_id or 0) + 1
    return [Event(first + index, name, data) for index, (name, data) in enumerate(payloads)]


class PreviewRouter:
    """Routes ComfyUI's preview messages to the job of their prompt. A message with metadata names its prompt and
    node; any other belongs to the prompt ComfyUI runs now (it runs one at a time) and its node running now, which
    its JSON events tell. Both listeners do O(1) work, as EventStream asks."""

    def __init__(self, hub: JobEvents, job_for_prompt: Callable[[str], str | None]) -> None:
        """`job_for_prompt(prompt_id)`: the id of the job that queued the prompt, None for a prompt of no job."""
        self._hub = hub
        self._job_for_prompt = job_for_prompt
        self._prompt: str | None = None
        self._node: str | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        """For EventStream.subscribe."""
        kind = event.get("type")
        data = event["data"]
        prompt_id = data.get("prompt_id")
        if kind in _END_EVENTS or (kind == "executing" and data.get("node") is None):
            # `executing` with no node: ComfyUI is done with the prompt, whatever its end.
            if prompt_id is not None and str(prompt_id) == self._prompt:
                self._prompt = self._node = None
        elif kind in ("execution_start", "executing", "progress") and prompt_id is not None:
            node = data.get("node")
            self._prompt = str(prompt_id)
            self._node = None if node is None else str(node)

    def on_binary(self, message: bytes) -> None:
        """For EventStream.subscribe_binary."""
        preview = decode_preview(message)
        if preview is None:
            return
        described = preview.prompt_id is not None
        prompt_id = preview.prompt_id if described else self._prompt
        if prompt_id is None:
            return
        job_id = self._job_for_prompt(prompt_id)
        if job_id is not None:
            node_id = preview.node_id if described else self._node
            self._hub.on_preview(job_id, node_id, preview.content_type, preview.data)
