"""resume_unfinished over a real SQLite job store: at a start, each job the server stopped under is run again by its
front door, with the restart counted as an attempt, or failed with the reason it cannot be."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfyui_api.errors import MissingAsset
from comfyui_api.jobstore.records import JobKind, JobRecord, JobStatus, now_ms
from comfyui_api.jobstore.sqlite import SQLiteJobStore
from comfyui_api.pipeline.recovery import resume_unfinished


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteJobStore]:
    opened = SQLiteJobStore(tmp_path / "jobs.db")
    await opened.open()
    yield opened
    await opened.close()


def stored(job_id: str, status: JobStatus, *, offset: int, **fields: object) -> JobRecord:
    created = now_ms() - 10_000 + offset
    record = JobRecord(id=job_id, created_at=created, status=status, expires_at=created + 3_600_000)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


async def test_unfinished_jobs_run_again_or_fail_with_their_reason(store: SQLiteJobStore) -> None:
    await store.save(
        [
            stored("v2-running", JobStatus.RUNNING, offset=1, kind=JobKind.V2, request={"workflow": {}}),
            stored("async-queued", JobStatus.QUEUED, offset=2, request={"prompt": {}}),
            stored("sync", JobStatus.RUNNING, offset=3),
            stored(
                "secret", JobStatus.QUEUED, offset=4, kind=JobKind.V2, request={"workflow": {}, "needs_memory": True}
            ),
            stored("spent", JobStatus.QUEUED, offset=5, kind=JobKind.V2, request={"workflow": {}}, attempts=2),
            stored("gone", JobStatus.QUEUED, offset=6, kind=JobKind.V2, request={"workflow": {"x": 1}}),
            stored("done", JobStatus.SUCCEEDED, offset=7, kind=JobKind.V2, request={"workflow": {}}),
        ]
    )
    resumed: list[tuple[str, int]] = []
    failed: dict[str, JobRecord] = {}

    async def resume(record: JobRecord) -> None:
        if record.request == {"workflow": {"x": 1}}:
            raise MissingAsset("No asset 'a1' (unknown, deleted or expired)", location="prompt.1.inputs.image")
        resumed.append((record.id, record.attempts))

    await resume_unfinished(
        store,
        lambda record: failed.__setitem__(record.id, record),
        {JobKind.V2: resume, JobKind.PROMPT: resume},
        max_attempts=2,
    )

    assert resumed == [("v2-running", 2), ("async-queued", 2)]  # oldest first, the restart counted
    assert set(failed) == {"sync", "secret", "spent", "gone"}
    assert all(record.status is JobStatus.FAILED for record in failed.values())
    assert "synchronous request" in failed["sync"].error["error"]
    assert "held in memory only" in failed["secret"].error["error"]
    assert "2 attempts (JOB_MAX_ATTEMPTS) are spent" in failed["spent"].error["error"]
    assert failed["gone"].error["error"] == "No asset 'a1' (unknown, deleted or expired)"
    assert failed["gone"].attempt_errors[0]["error"] == "The server restarted while the job was queued or running"
