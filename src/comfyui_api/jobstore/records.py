"""What is kept of a job: its record, and the states it goes through.

Times are milliseconds since the Unix epoch (UTC), as everywhere else in this server. The fields that hold JSON
(`progress`, `outputs`, `error`, `delivery`) are replaced when they change, never mutated in place: a row the writer
took for a transaction then stays as it was while the job moves on.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


class JobStatus(enum.StrEnum):
    """The job's state, as Comfy API v2 names them: queued → running → succeeded | failed; a cancel moves
    queued or running → canceling → canceled."""

    QUEUED = "queued"  # received: preprocessing, or waiting in ComfyUI's queue
    RUNNING = "running"  # ComfyUI is executing it
    SUCCEEDED = "succeeded"
    CANCELING = "canceling"  # an interrupt was asked for; the job has not ended yet
    CANCELED = "canceled"
    FAILED = "failed"
    EXPIRED = "expired"  # v2's end for a job that waited past its deadline (no job reaches it yet)


class JobKind(enum.StrEnum):
    """Which front door took the job: the reference-compatible routes, or Comfy API v2 (whose routes see only its
    own jobs)."""

    PROMPT = "prompt"
    V2 = "v2"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.CANCELED, JobStatus.FAILED, JobStatus.EXPIRED})


@dataclass(eq=False)
class JobRecord:
    id: str
    created_at: int
    status: JobStatus = JobStatus.QUEUED
    started_at: int | None = None
    completed_at: int | None = None
    # Set from JOB_RETENTION_S by the writer whenever the record changes: retention counts from the job's end (from
    # its creation while it runs).
    expires_at: int = 0
    # How many of this server's prompts were ahead of it in ComfyUI's queue when it was last counted; None unless it
    # waits in that queue.
    queue_position: int | None = None
    # The latest progress snapshot: value (0..1), nodes_done, nodes_total, current_node, current_node_class, step,
    # steps.
    progress: dict[str, Any] | None = None
    # One entry per output file: node_id, name, size_bytes, and url once uploaded. Contents are not kept.
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # Why it failed or was canceled: the error body the request got (`error`, `location`, `node_id`, …) and its
    # `status_code`.
    error: dict[str, Any] | None = None
    attempts: int = 1
    # Why each earlier attempt ended (ComfyUI exited or was restarted under it): attempt, error, at.
    attempt_errors: list[dict[str, Any]] = field(default_factory=list)
    # The request's delivery options (its echo: webhooks, upload blocks, convert_output); never credentials.
    delivery: dict[str, Any] = field(default_factory=dict)
    kind: JobKind = JobKind.PROMPT
    # What it takes to run the job again after a server restart (its graph and delivery options, never credentials
    # or extra_data); None for a job no one could receive the outcome of then (a sync request's client is gone).
    # `needs_memory` set in it: the request held what is kept in memory only, so it cannot be run again.
    request: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def record_row(record: JobRecord) -> dict[str, Any]:
    """The record as plain JSON values, one per field (a row of the store, an event on the fleet's broker)."""
    return {
        "id": record.id,
        "status": record.status.value,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "expires_at": record.expires_at,
        "queue_position": record.queue_position,
        "attempts": record.attempts,
        "progress": record.progress,
        "outputs": record.outputs,
        "error": record.error,
        "delivery": record.delivery,
        "kind": record.kind.value,
        "request": record.request,
        "attempt_errors": record.attempt_errors,
    }


def row_record(row: Mapping[str, Any]) -> JobRecord:
    """The record `record_row` made `row` from."""
    return JobRecord(
        id=row["id"],
        created_at=row["created_at"],
        status=JobStatus(row["status"]),
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
        queue_position=row["queue_position"],
        progress=row["progress"],
        outputs=row["outputs"],
        error=row["error"],
        attempts=row["attempts"],
        delivery=row["delivery"],
        kind=JobKind(row["kind"]),
        request=row["request"],
        attempt_errors=row["attempt_errors"],
    )
