"""One job per request, and the registry that routes ComfyUI's events to it in O(1).

Each job keeps its record (jobstore/records.py) current as it goes, and passes every change to the registry's
`on_record` (the write-behind RecordWriter in the server): created when the registry takes the job, queued with its
position once ComfyUI accepted it, running at ComfyUI's `execution_start` (progress from its node and step events),
then succeeded, failed or canceled; the first end recorded stands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    ApiError,
    Conflict,
    DownloadError,
    InputError,
    InvalidInlineData,
    InvalidName,
    InvalidUrl,
    PromptInterrupted,
)
from ..jobstore.records import JobKind, JobRecord, JobStatus, now_ms
from ..storage.manager import Download
from .outputs import OutputFile

logger = logging.getLogger(__name__)

# The prompt's end, as ComfyUI's executor reports it (its history entry is written a moment later).
_END_EVENTS = {"execution_success", "execution_error", "execution_interrupted"}

# Errors in what a client sent, which api/handlers.py answers with 400 and their message; any other ServerError is
# answered 500 without it (it may name server paths). A job's record says what its request was answered.
_CLIENT_INPUT = (InvalidUrl, InvalidName, InvalidInlineData, InputError, DownloadError)
_ABANDONED = "The request ended before its outcome was known: its client left or the server stopped it"


def _unrecorded(_: JobRecord) -> None:
    """Where the record of a job outside a registry goes: nowhere."""


class JobState(enum.Enum):
    PREPROCESSING = "preprocessing"
    SUBMITTING = "submitting"
    QUEUED = "queued"  # accepted by ComfyUI: pending or running
    COLLECTING = "collecting"


@dataclass
class Job:
    id: str
    # ComfyUI 0.25 and later take a client-chosen prompt id only as a lowercase UUID (str(uuid4()) is one).
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    received_at: int = field(default_factory=now_ms)
    state: JobState = JobState.PREPROCESSING
    interrupt_requested: bool = False
    # A failure decided outside the job's own task (ComfyUI exited, interrupted before queueing).
    failure: ApiError | None = None
    # Set when /history should be read: the prompt's end, a failure or a reconcile hint.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The reconciler saw the prompt in neither ComfyUI's queue nor (yet) its history.
    missing_from_queue: bool = False
    exec_start: int | None = None
    exec_end: int | None = None
    # The websocket connection (EventStream.connections) that carried the prompt's execution_start.
    started_on: int | None = None
    # The outputs ComfyUI's `executed` messages reported, by node, and at execution_success on the connection that
    # saw the start (so no message of the run was missed) the run as a history entry: the job needs no /history read.
    reported_outputs: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] | None = None
    # ComfyUI sent the prompt's closing `executing` message: its history entry exists (see janitor.forget).
    history_written: bool = False
    node_starts: dict[str, int] = field(default_factory=dict)
    # Output nodes in the order ComfyUI executed them (its history does not keep that order).
    executed_nodes: dict[str, None] = field(default_factory=dict)
    input_files: list[Path] = field(default_factory=list)
    input_dirs: list[Path] = field(default_factory=list)
    # Cache files this job links to: pinned against eviction until it ends.
    downloads: list[Download] = field(default_factory=list)
    # Event-loop time after which the job fails with 504 (PROMPT_TIMEOUT_S); None: no deadline.
    deadline: float | None = None
    # The setting the deadline comes from, for the error at expiry: "PROMPT_TIMEOUT_S=60s" or "timeout_s=10s".
    deadline_rule: str = ""
    # ComfyUI's per-prompt extra_data (a partner-node API key): sent with each attempt, held in memory only.
    extra_data: dict[str, Any] | None = field(default=None, repr=False)
    graph: dict[str, Any] = field(default_factory=dict)
    # Taken by a workflow endpoint (its `input` validated into a graph), not /prompt.
    from_workflow: bool = False
    # Phases timed as (start, end) in ms since the epoch beside the ones above: `conversion`, `upload` (tracing.py).
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Its trace's root span, once tracing wrote it (tracing.py): the parent of its webhooks' spans.
    trace: Any = None
    preprocessed_at: int = 0
    outputs: list[OutputFile] = field(default_factory=list)
    # Output files on disk, originals and converted copies, deleted when the job closes.
    files_to_delete: list[Path] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    # A fleet worker took it from the broker (PromptRunner.start's `from_queue`); and its attempt ended without an
    # outcome, for a worker to run it again.
    from_queue: bool = False
    handed_back: bool = False
    # What the job store and GET /prompt/{id} keep of this job; each change is passed to `record_changed`.
    record: JobRecord = field(init=False)
    record_changed: Callable[[JobRecord], None] = field(default=_unrecorded, repr=False)
    # Progress: the nodes ComfyUI took from its cache, and the node running now with its sampler steps.
    cached_nodes: set[str] = field(default_factory=set)
    current_node: str | None = None
    step: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        self.record = JobRecord(id=self.id, created_at=self.received_at)

    def fail(self, error: ApiError) -> None:
        if self.failure is None:
            self.failure = error
        self.wake.set()

    def on_event(self, event_type: str, data: dict[str, Any], connection: int = 0) -> None:
        """One of ComfyUI's websocket messages about this job's prompt, read on the `connection`th connection."""
        if event_type == "execution_start":
            self.exec_start = now_ms()
            self.started_on = connection
            record = self.record
            if record.status is JobStatus.QUEUED:  # a job being canceled stays canceling
                record.status = JobStatus.RUNNING
            record.started_at = self.exec_start
            record.queue_position = None
            self._progressed()
        elif event_type == "executing":
            node = data.get("node")
            if node is None:
                # ComfyUI sends this after every prompt, whatever its outcome, once it has written the history
                # entry; the end events come before that entry exists (execution_success can stand in for it).
                self.history_written = True
                self.wake.set()
                self.current_node = None
            else:
                self.node_starts.setdefault(str(node), now_ms())
                self.current_node = str(node)
            self.step = self.steps = None
            self._progressed()
        elif event_type == "progress":
            value, maximum = data.get("value"), data.get("max")
            # Whole steps: some nodes report fractions.
            counted = isinstance(value, int | float) and isinstance(maximum, int | float)
            self.step, self.steps = (int(value), int(maximum)) if counted else (None, None)
            self._progressed()
        elif event_type == "execution_cached":
            self.cached_nodes.update(str(node) for node in data.get("nodes") or ())
            self._progressed()
        elif event_type == "executed":
            node = str(data.get("node"))
            self.executed_nodes.setdefault(node, None)
            if isinstance(data.get("output"), dict):
                self.reported_outputs[node] = data["output"]
        elif event_type in _END_EVENTS:
            self.exec_end = now_ms()
            if event_type == "execution_success" and self.started_on == connection:
                # What the history entry will say, known a history read earlier (bench/v2.py measures it): the outputs
                # as `executed` reported them, a success. Failures are read from the history, with their messages.
                self.reported = {
                    "outputs": self.reported_outputs,
                    "status": {"status_str": "success", "completed": True, "messages": [[event_type, data]]},
                }
                self.wake.set()

    def requeue(self, error: ApiError) -> None:
        """ComfyUI exited or was restarted under this attempt: the next one starts from a clean slate, under a new
        prompt id, and the record keeps why this one ended."""
        record = self.record
        record.attempt_errors = [
            *record.attempt_errors,
            {"attempt": record.attempts, "error": error.message, "at": now_ms()},
        ]
        record.attempts += 1
        _queued_again(record)
        self.state = JobState.PREPROCESSING  # nothing of it is in ComfyUI
        self.failure = None
        self.missing_from_queue = False
        self.exec_start = self.exec_end = self.started_on = self.reported = None
        self.reported_outputs = {}
        self.history_written = False
        self.node_starts = {}
        self.executed_nodes = {}
        self.cached_nodes = set()
        self.current_node = self.step = self.steps = None
        self.wake.clear()
        self.record_changed(record)

    # The record -------------------------------------------------------------------------------------
    def mark_queued(self, position: int) -> None:
        """ComfyUI accepted the prompt, with `position` of this server's prompts ahead of it."""
        if self.record.status is JobStatus.QUEUED:
            self.record.queue_position = position
            self.record_changed(self.record)

    def mark_canceling(self) -> None:
        """An interrupt was asked for."""
        if self.record.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            self.record.status = JobStatus.CANCELING
            self.record_changed(self.record)

    @property
    def entry(self) -> str:
        """The front door that took the job, as metrics name it: prompt, workflow or v2."""
        if self.record.kind is JobKind.V2:
            return "v2"
        return "workflow" if self.from_workflow else "prompt"

    def phases(self, now: int) -> dict[str, float]:
        """Seconds the job spent in each phase it went through (metrics.py's PHASES)."""
        phases = {"total": (now - self.received_at) / 1000}
        if self.preprocessed_at:
            phases["preprocess"] = (self.preprocessed_at - self.received_at) / 1000
            if self.exec_start is not None:
                phases["queue_wait"] = max(self.exec_start - self.preprocessed_at, 0) / 1000
        if self.exec_start is not None and self.exec_end is not None:
            phases["execution"] = (self.exec_end - self.exec_start) / 1000
        if "upload_time" in self.stats:
            phases["upload"] = self.stats["upload_time"] / 1000
        return phases

    def node_times(self) -> list[tuple[str, float]]:
        """(class, seconds) of each node ComfyUI executed: ComfyUI runs one node at a time, so a node ran from its
        start to the next one's (the last one to the run's end)."""
        starts = sorted(self.node_starts.items(), key=lambda item: item[1])
        ends = [at for _, at in starts[1:]] + [self.exec_end] if starts else []
        return [
            (str(self.graph.get(node, {}).get("class_type", "unknown")), (end - start) / 1000)
            for (node, start), end in zip(starts, ends, strict=True)
            if end is not None
        ]

    def mark_succeeded(self, urls: Sequence[str] = (), *, outputs: list[dict[str, Any]] | None = None) -> None:
        """The outputs are collected (and uploaded, to `urls` in output order): their names and sizes are recorded,
        not their contents; or `outputs` as the front door describes them (v2: the assets they became)."""
        record = self.record
        if record.terminal:
            return
        if outputs is None:
            outputs = []
            for index, output in enumerate(self.outputs):
                entry = {"node_id": output.node_id, "name": output.name, "size_bytes": output.path.stat().st_size}
                if index < len(urls):
                    entry["url"] = urls[index]
                outputs.append(entry)
        record.outputs = outputs
        total = len(self.graph)
        record.progress = {
            "value": 1.0,
            "nodes_done": total,
            "nodes_total": total,
            "current_node": None,
            "current_node_class": None,
            "step": None,
            "steps": None,
        }
        self._end(JobStatus.SUCCEEDED, None)

    def mark_ended(self, exc: BaseException) -> None:
        """The job ended with `exc`: failed with the error its request was answered, or canceled (interrupted, or
        abandoned when its client left or the server stopped); a job handed back has no end here."""
        if self.record.terminal or self.handed_back:
            return
        if isinstance(exc, ApiError):
            status = JobStatus.CANCELED if isinstance(exc, PromptInterrupted) else JobStatus.FAILED
            self._end(status, {**exc.body(), "status_code": exc.status_code})
        elif isinstance(exc, _CLIENT_INPUT):
            located = {"location": exc.location} if exc.location is not None else {}
            self._end(JobStatus.FAILED, {"error": str(exc), **located, "status_code": 400})
        elif isinstance(exc, Exception):
            # As api/handlers.py answers an unexpected error: its type only.
            self._end(JobStatus.FAILED, {"error": f"Internal error: {type(exc).__name__}", "status_code": 500})
        else:
            self.mark_abandoned()

    def suspend(self) -> None:
        """The server stops under the job: its record says queued again, for the next start to run it anew."""
        if self.record.terminal:
            return
        _queued_again(self.record)
        self.record_changed(self.record)

    def hand_back(self) -> None:
        """The attempt ended without an outcome and the job goes back to the fleet's queue: its record says queued
        again, and nothing ends it here."""
        self.handed_back = True
        self.suspend()

    def mark_abandoned(self) -> None:
        """The job ends without an outcome of its own (cancelled with its caller): canceled, unless it has one."""
        if not self.record.terminal:
            self._end(JobStatus.CANCELED, {"error": _ABANDONED})

    def _end(self, status: JobStatus, error: dict[str, Any] | None) -> None:
        record = self.record
        record.status = status
        record.error = error
        record.completed_at = now_ms()
        record.started_at = record.started_at or self.exec_start
        record.queue_position = None
        self.record_changed(record)

    def _progressed(self) -> None:
        self.record.progress = self._progress()
        self.record_changed(self.record)

    def _progress(self) -> dict[str, Any]:
        """Node- and step-weighted: each node of the graph counts one, the running one by its sampler steps."""
        total = len(self.graph)
        running = self.current_node
        done = len(self.cached_nodes) + len(self.node_starts) - (1 if running is not None else 0)
        fraction = self.step / self.steps if running is not None and self.step and self.steps else 0.0
        node = self.graph.get(running) if running is not None else None
        return {
            "value": min(1.0, (done + fraction) / total) if total else 0.0,
            "nodes_done": done,
            "nodes_total": total,
            "current_node": running,
            "current_node_class": node.get("class_type") if isinstance(node, dict) else None,
            "step": self.step,
            "steps": self.steps,
        }


def _queued_again(record: JobRecord) -> None:
    """The record of a job waiting to be queued in ComfyUI anew: nothing of an earlier attempt's run is left."""
    record.status = JobStatus.QUEUED
    record.started_at = None
    record.queue_position = None
    record.progress = None


class JobRegistry:
    def __init__(
        self, on_record: Callable[[JobRecord], None] = _unrecorded, connection: Callable[[], int] = lambda: 0
    ) -> None:
        """`on_record(record)` is told of every change to a job's record, from the moment the job is added;
        `connection()` is the number of the websocket connection the events dispatched now were read on."""
        self._on_record = on_record
        self._connection = connection
        self._by_prompt: dict[str, Job] = {}
        self._by_id: dict[str, Job] = {}
        # Jobs ComfyUI accepted that have not started executing, in the order it accepted them.
        self._waiting: dict[str, Job] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, job: Job) -> None:
        if job.id in self._by_id:
            raise Conflict(f"A request with id {job.id!r} is already in progress", location="id")
        self._by_id[job.id] = job
        self._by_prompt[job.prompt_id] = job
        self._idle.clear()
        job.record_changed = self._on_record
        self._on_record(job.record)

    def queued(self, job: Job) -> None:
        """ComfyUI accepted the job's prompt: it waits behind the ones it accepted before."""
        self._waiting[job.id] = job
        job.mark_queued(len(self._waiting) - 1)

    def rekey(self, job: Job, prompt_id: str) -> None:
        """Route ComfyUI's events for `prompt_id` to `job` (the id ComfyUI echoed differs from the one sent)."""
        self._by_prompt.pop(job.prompt_id, None)
        job.prompt_id = prompt_id
        self._by_prompt[prompt_id] = job

    def requeued(self, job: Job, error: ApiError) -> None:
        """The job's attempt ended with ComfyUI: it leaves the queue order and gets a new prompt id for the next."""
        self._waiting.pop(job.id, None)
        job.requeue(error)
        self.rekey(job, str(uuid.uuid4()))

    def remove(self, job: Job) -> None:
        self._by_id.pop(job.id, None)
        self._by_prompt.pop(job.prompt_id, None)
        self._waiting.pop(job.id, None)
        if not self._by_id:
            self._idle.set()

    def get(self, job_id: str) -> Job | None:
        return self._by_id.get(job_id)

    def record(self, job_id: str) -> JobRecord | None:
        """A copy of the record of the job in flight with this id, its queue position counted now."""
        job = self._by_id.get(job_id)
        if job is None:
            return None
        position = next((index for index, waiting in enumerate(self._waiting) if waiting == job_id), None)
        return dataclasses.replace(job.record, queue_position=position)

    def by_prompt_id(self, prompt_id: str) -> Job | None:
        return self._by_prompt.get(prompt_id)

    def in_state(self, *states: JobState) -> list[Job]:
        return [job for job in self._by_id.values() if job.state in states]

    def count(self, state: JobState) -> int:
        return sum(1 for job in self._by_id.values() if job.state is state)

    def dispatch(self, event: dict[str, Any]) -> None:
        data = event["data"]
        job = self._by_prompt.get(str(data.get("prompt_id")))
        if job is not None:
            event_type = str(event.get("type"))
            job.on_event(event_type, data, self._connection())
            if event_type == "execution_start":
                self._waiting.pop(job.id, None)

    def fail_in_comfy(self, error: ApiError) -> None:
        """Fail every job ComfyUI has accepted or is accepting (it exited and forgot them)."""
        for job in self.in_state(JobState.SUBMITTING, JobState.QUEUED):
            job.fail(error)

    async def wait_idle(self, timeout_s: float) -> bool:
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
