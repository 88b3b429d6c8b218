"""One job per request, and the registry that routes ComfyUI's events to it in O(1)."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ApiError, Conflict
from ..storage.manager import Download
from .outputs import OutputFile

logger = logging.getLogger(__name__)

# The prompt's end, as ComfyUI's executor reports it (its history entry is written a moment later).
_END_EVENTS = {"execution_success", "execution_error", "execution_interrupted"}


def now_ms() -> int:
    return int(time.time() * 1000)


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
    node_starts: dict[str, int] = field(default_factory=dict)
    # Output nodes in the order ComfyUI executed them (its history does not keep that order).
    executed_nodes: dict[str, None] = field(default_factory=dict)
    input_files: list[Path] = field(default_factory=list)
    input_dirs: list[Path] = field(default_factory=list)
    # Cache files this job links to: pinned against eviction until it ends.
    downloads: list[Download] = field(default_factory=list)
    # Event-loop time after which the job fails with 504 (PROMPT_TIMEOUT_S); None: no deadline.
    deadline: float | None = None
    graph: dict[str, Any] = field(default_factory=dict)
    preprocessed_at: int = 0
    outputs: list[OutputFile] = field(default_factory=list)
    # Output files on disk, originals and converted copies, deleted when the job closes.
    files_to_delete: list[Path] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def fail(self, error: ApiError) -> None:
        if self.failure is None:
            self.failure = error
        self.wake.set()

    def on_event(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "execution_start":
            self.exec_start = now_ms()
        elif event_type == "executing":
            node = data.get("node")
            if node is None:
                # ComfyUI sends this after every prompt, whatever its outcome, once it has written the history
                # entry; the end events come before that entry exists, so they only mark the time.
                self.wake.set()
            else:
                self.node_starts.setdefault(str(node), now_ms())
        elif event_type == "executed":
            self.executed_nodes.setdefault(str(data.get("node")), None)
        elif event_type in _END_EVENTS:
            self.exec_end = now_ms()


class JobRegistry:
    def __init__(self) -> None:
        self._by_prompt: dict[str, Job] = {}
        self._by_id: dict[str, Job] = {}
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

    def rekey(self, job: Job, prompt_id: str) -> None:
        """Route ComfyUI's events for `prompt_id` to `job` (the id ComfyUI echoed differs from the one sent)."""
        self._by_prompt.pop(job.prompt_id, None)
        job.prompt_id = prompt_id
        self._by_prompt[prompt_id] = job

    def remove(self, job: Job) -> None:
        self._by_id.pop(job.id, None)
        self._by_prompt.pop(job.prompt_id, None)
        if not self._by_id:
            self._idle.set()

    def get(self, job_id: str) -> Job | None:
        return self._by_id.get(job_id)

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
            job.on_event(str(event.get("type")), data)

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
