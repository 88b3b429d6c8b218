"""The interface every job store implements: what the rest of the server may ask of one.

A record is saved whole (created or replaced by its id): the writer coalesces a job's changes into its latest
record, so a partial update would only add a second way to write the same row. Expired records (`expires_at` in the
past) are invisible to `get` and `list_jobs` whether or not the sweeper has deleted them yet.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import JobStoreError
from .records import JobKind, JobRecord, JobStatus

__all__ = ["MAX_LIST_LIMIT", "JobQuery", "JobStore", "JobStoreError"]


# The most records one `list_jobs` call returns.
MAX_LIST_LIMIT = 1000


@dataclass(frozen=True)
class JobQuery:
    """Which records `list_jobs` returns: newest first (`created_at`, then `id`, descending), at most `limit`.

    `before` is the (`created_at`, `id`) of the last record of the previous page: the next page starts after it."""

    kind: JobKind | None = None
    statuses: Collection[JobStatus] | None = None
    created_after: int | None = None  # ms since the epoch, inclusive
    created_before: int | None = None  # ms since the epoch, exclusive
    before: tuple[int, str] | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {self.limit}")


class JobStore(Protocol):
    # Every method but `open` raises JobStoreError when the store fails.

    async def open(self) -> None:
        """Connect and create the schema if it is missing; raises ConfigError when the store cannot be used."""

    async def save(self, records: Sequence[JobRecord]) -> None:
        """Create or replace each record (by id), all in one transaction."""

    async def create(self, record: JobRecord) -> bool:
        """Write a new job's record unless an unfinished, unexpired job has its id: whether it was written."""

    async def insert_new(self, record: JobRecord) -> None:
        """Write the record of a job whose id this server made up, unless a record of that id is there already: no
        other job can hold the id, so one there is the job's own, written by its worker first."""

    async def save_if(self, record: JobRecord, statuses: Collection[JobStatus]) -> bool:
        """Replace the stored record only while its status is one of `statuses`: whether it was."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The record with this id, unless there is none or it has expired."""

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        """The unexpired records that match `query`."""

    async def delete_expired(self) -> int:
        """Delete every record (and idempotency key) whose `expires_at` has passed; how many records were deleted."""

    async def claim_key(self, key: str, expires_at: int) -> bool:
        """Claim an idempotency key until `expires_at`: True if it was free (never claimed, released, or expired)."""

    async def release_key(self, key: str) -> None:
        """Free a claimed key (its request was refused without creating a job)."""

    async def close(self) -> None:
        """Release the connections."""
