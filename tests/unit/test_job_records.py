"""What the pipeline records of each request, in process: the runner and delivery mark a job's record as it goes
(created queued, its place in ComfyUI's queue, running with progress, then succeeded with its outputs, failed with
the error its request got, or canceled), and every change reaches the write-behind writer and the SQLite file.

The parts are wired as app.py wires them (a JobRegistry telling a RecordWriter over a real SQLiteJobStore), over
FakeComfy, with stand-ins for the uploader and the webhook sender; the real server is driven end to end in
tests/test_job_status.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from comfyui_api.api import handlers
from comfyui_api.comfy.client import ComfyClient
from comfyui_api.comfy.events import EventStream
from comfyui_api.config import Settings
from comfyui_api.errors import DownloadError, ExecutionFailed, PromptInterrupted, PromptRejected
from comfyui_api.jobstore.records import JobRecord, JobStatus
from comfyui_api.jobstore.sqlite import SQLiteJobStore
from comfyui_api.jobstore.writer import RecordWriter
from comfyui_api.pipeline import jobs
from comfyui_api.pipeline.delivery import Delivery
from comfyui_api.pipeline.janitor import Janitor
from comfyui_api.pipeline.jobs import Job, JobRegistry
from comfyui_api.pipeline.runner import PromptRunner
from comfyui_api.state import ServerState
from comfyui_api.storage.manager import StorageManager
from comfyui_api.storage.net import UrlGuard
from comfyui_api.storage.uploads import Uploader
from comfyui_api.webhooks.sender import WebhookSender
from tests.unit.fake_comfy import FakeComfy, failed, saved
from tests.unit.fake_pipeline import OUTPUT, REQUEST_ID, request

HOOK_ORIGIN = "http://127.0.0.1:8999"
HOOK = f"{HOOK_ORIGIN}/hook"
EXECUTION_ERROR = {"node_id": "9", "node_type": "SaveImage", "exception_type": "ValueError", "exception_message": "bad"}
CREDENTIALS = [{"url_pattern": "https://example.com/*", "auth": {"type": "bearer", "token": "tok-never-kept"}}]


class Webhooks:
    """Stands in for WebhookSender: the status of the job's record when each webhook went out."""

    def __init__(self, records: RecordWriter) -> None:
        self.records = records
        self.statuses: list[JobStatus | None] = []

    async def send(self, url: str, payload: dict[str, Any], **_: Any) -> bool:
        record = await self.records.get(REQUEST_ID)
        self.statuses.append(record.status if record is not None else None)
        return True


class Uploads:
    """Stands in for Uploader: every file 'uploaded' to its URL."""

    async def upload_all(self, files: list[tuple[Path, str]]) -> list[str]:
        return [url for _, url in files]


@dataclass
class Parts:
    comfy: FakeComfy
    jobs: JobRegistry
    runner: PromptRunner
    delivery: Delivery
    records: RecordWriter
    webhooks: Webhooks
    output_dir: Path
    # Every record change, as (id, status, queue position) at the time it was told.
    changes: list[tuple[str, JobStatus, int | None]]

    async def stored(self, job_id: str = REQUEST_ID) -> JobRecord:
        """The job's record as the SQLite file holds it, once what is pending has been written."""
        await self.records.flush()
        record = await self.records.store.get(job_id)
        assert record is not None
        return record

    def statuses(self, job_id: str = REQUEST_ID) -> list[JobStatus]:
        """The statuses the job's record went through, each once."""
        seen = [status for changed, status, _ in self.changes if changed == job_id]
        return list(dict.fromkeys(seen))

    def queued(self) -> list[str]:
        return [call["prompt_id"] for call in self.comfy.named("queue_prompt")]

    def end(self, prompt_id: str, entry: dict[str, Any]) -> None:
        """ComfyUI runs the prompt's two nodes and ends it with `entry`."""
        self.comfy.emit("execution_start", {"prompt_id": prompt_id})
        self.comfy.emit("executing", {"node": "1", "prompt_id": prompt_id})
        self.comfy.emit("executing", {"node": "9", "prompt_id": prompt_id})
        self.comfy.emit("executed", {"node": "9", "prompt_id": prompt_id})
        self.comfy.end(prompt_id, entry)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    for folder in ("input", "output", "models"):
        (tmp_path / folder).mkdir()
    settings = Settings(
        comfy_home=tmp_path / "comfy",
        cache_dir=tmp_path / "cache",
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "models",
        state_dir=tmp_path / "state",
    )
    records = RecordWriter(SQLiteJobStore(tmp_path / "jobs.db"), retention_s=settings.job_retention_s)
    await records.open()
    changes: list[tuple[str, JobStatus, int | None]] = []

    def changed(record: JobRecord) -> None:
        changes.append((record.id, record.status, record.queue_position))
        records.changed(record)

    state = ServerState()
    state.comfy_up.set()
    comfy = FakeComfy()
    registry = JobRegistry(changed)
    comfy.subscribe(registry.dispatch)
    client = cast(ComfyClient, comfy)
    janitor = Janitor(client, settings.outputs_path)
    storage = StorageManager(settings, UrlGuard())
    runner = PromptRunner(settings, client, EventStream("ws://127.0.0.1:9/ws"), registry, state, storage, janitor)
    webhooks = Webhooks(records)
    delivery = Delivery(
        runner,
        cast(Uploader, Uploads()),
        cast(WebhookSender, webhooks),
        output_dir=settings.outputs_path,
        hf_endpoint="https://huggingface.co",
        azure_base=None,
        guard=UrlGuard(trusted_origins=[HOOK_ORIGIN]),
    )
    janitor_task = asyncio.create_task(janitor.run())
    try:
        yield Parts(comfy, registry, runner, delivery, records, webhooks, settings.outputs_path, changes)
    finally:
        await delivery.aclose()
        janitor_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await janitor_task
        await runner.aclose()
        await storage.aclose()
        await records.aclose()


async def test_a_sync_request_is_recorded_from_queued_to_succeeded_with_its_outputs(parts: Parts) -> None:
    handling = asyncio.create_task(parts.delivery.handle(request(credentials=CREDENTIALS)))
    await parts.comfy.until(parts.queued)
    (prompt_id,) = parts.queued()
    assert parts.changes[:2] == [(REQUEST_ID, JobStatus.QUEUED, None), (REQUEST_ID, JobStatus.QUEUED, 0)]
    parts.end(prompt_id, saved(parts.output_dir, OUTPUT))
    answer = await handling
    assert parts.statuses() == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert answer.sent is not None
    await answer.sent()

    record = await parts.stored()
    assert record.status is JobStatus.SUCCEEDED
    assert record.outputs == [{"node_id": "9", "name": OUTPUT, "size_bytes": len(f"image {OUTPUT}")}]
    assert record.created_at <= record.started_at <= record.completed_at  # type: ignore[operator]
    assert record.queue_position is None and record.error is None and record.attempts == 1
    assert record.progress is not None and (record.progress["value"], record.progress["nodes_done"]) == (1.0, 2)
    # The delivery options are kept, credentials never.
    assert record.delivery == {"id": REQUEST_ID}
    database = parts.records.store.path
    written = b"".join(path.read_bytes() for path in database.parent.glob(f"{database.name}*"))  # with the WAL
    assert b'"id": "req-1"' in written or b'"id":"req-1"' in written
    assert b"tok-never-kept" not in written


async def test_progress_follows_nodes_and_sampler_steps(parts: Parts) -> None:
    job = await parts.runner.start(request())
    emit = parts.comfy.emit
    emit("execution_start", {"prompt_id": job.prompt_id})
    assert job.record.progress == {
        "value": 0.0,
        "nodes_done": 0,
        "nodes_total": 2,
        "current_node": None,
        "current_node_class": None,
        "step": None,
        "steps": None,
    }
    emit("executing", {"node": "1", "prompt_id": job.prompt_id})
    emit("progress", {"value": 3, "max": 4, "node": "1", "prompt_id": job.prompt_id})
    assert job.record.progress is not None
    assert (job.record.progress["value"], job.record.progress["current_node_class"]) == (0.375, "EmptyImage")
    assert (job.record.progress["step"], job.record.progress["steps"]) == (3, 4)
    emit("executing", {"node": "9", "prompt_id": job.prompt_id})
    assert job.record.progress["value"] == 0.5 and job.record.progress["step"] is None
    await parts.runner.close(job)


async def test_cached_nodes_count_as_done(parts: Parts) -> None:
    job = await parts.runner.start(request())
    parts.comfy.emit("execution_start", {"prompt_id": job.prompt_id})
    parts.comfy.emit("execution_cached", {"nodes": ["1"], "prompt_id": job.prompt_id})
    assert job.record.progress is not None and job.record.progress["nodes_done"] == 1
    await parts.runner.close(job)


async def test_queue_positions_count_the_prompts_ahead_and_move_up(parts: Parts) -> None:
    first = await parts.runner.start(request(id="first"))
    second = await parts.runner.start(request(id="second"))
    assert [(job_id, position) for job_id, _, position in parts.changes if position is not None] == [
        ("first", 0),
        ("second", 1),
    ]
    live = parts.jobs.record("second")
    assert live is not None and live.queue_position == 1

    parts.comfy.emit("execution_start", {"prompt_id": first.prompt_id})
    live = parts.jobs.record("second")
    assert live is not None and live.queue_position == 0
    running = parts.jobs.record("first")
    assert running is not None and (running.status, running.queue_position) == (JobStatus.RUNNING, None)
    assert parts.jobs.record("unknown") is None
    await parts.runner.close(first)
    await parts.runner.close(second)


async def test_an_execution_error_is_recorded_as_failed_with_the_error_the_request_got(parts: Parts) -> None:
    handling = asyncio.create_task(parts.delivery.handle(request()))
    await parts.comfy.until(parts.queued)
    (prompt_id,) = parts.queued()
    parts.end(prompt_id, failed(saved(parts.output_dir, OUTPUT), "execution_error", **EXECUTION_ERROR))
    with pytest.raises(ExecutionFailed) as raised:
        await handling

    record = await parts.stored()
    assert record.status is JobStatus.FAILED
    assert record.error == {**raised.value.body(), "status_code": 500}
    assert {key: record.error[key] for key in EXECUTION_ERROR} == EXECUTION_ERROR
    assert record.outputs == [] and record.completed_at is not None


async def test_a_prompt_comfyui_rejects_is_recorded_as_failed_with_its_node_errors(parts: Parts) -> None:
    node_errors = {"9": {"errors": [{"type": "required_input_missing"}]}}
    parts.comfy.rejection = PromptRejected("Prompt outputs failed validation", node_errors=node_errors)
    with pytest.raises(PromptRejected):
        await parts.delivery.handle(request())

    record = await parts.stored()
    assert record.status is JobStatus.FAILED
    assert record.error == {
        "error": "Prompt outputs failed validation",
        "location": "prompt",
        "node_errors": node_errors,
        "status_code": 400,
    }
    assert record.started_at is None


async def test_an_interrupt_is_recorded_as_canceling_then_canceled(parts: Parts) -> None:
    handling = asyncio.create_task(parts.delivery.handle(request()))
    await parts.comfy.until(parts.queued)

    assert await parts.runner.interrupt(REQUEST_ID)
    with pytest.raises(PromptInterrupted):
        await handling

    assert parts.statuses() == [JobStatus.QUEUED, JobStatus.CANCELING, JobStatus.CANCELED]
    record = await parts.stored()
    assert record.error == {"error": "Prompt interrupted", "status_code": 500}


async def test_a_request_whose_caller_is_cancelled_is_recorded_as_canceled(parts: Parts) -> None:
    handling = asyncio.create_task(parts.delivery.handle(request()))
    await parts.comfy.until(parts.queued)
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling

    record = await parts.stored()
    assert record.status is JobStatus.CANCELED
    assert record.error is not None and "status_code" not in record.error
    assert record.error["error"].startswith("The request ended before its outcome was known")


async def test_an_async_request_is_succeeded_before_its_webhook_goes_out(parts: Parts) -> None:
    answer = await parts.delivery.handle(request(webhook_v2=HOOK))
    assert answer.status_code == 202
    (prompt_id,) = parts.queued()
    live = parts.jobs.record(REQUEST_ID)
    assert live is not None and live.status is JobStatus.QUEUED
    parts.end(prompt_id, saved(parts.output_dir, OUTPUT))
    await parts.delivery.aclose()

    assert parts.webhooks.statuses == [JobStatus.SUCCEEDED]
    record = await parts.stored()
    assert record.delivery == {"id": REQUEST_ID, "webhook_v2": HOOK}
    assert [output["name"] for output in record.outputs] == [OUTPUT]


async def test_an_async_request_that_fails_is_failed_before_its_webhook_goes_out(parts: Parts) -> None:
    await parts.delivery.handle(request(webhook_v2=HOOK))
    (prompt_id,) = parts.queued()
    parts.end(prompt_id, failed(saved(parts.output_dir, OUTPUT), "execution_error", **EXECUTION_ERROR))
    await parts.delivery.aclose()

    assert parts.webhooks.statuses == [JobStatus.FAILED]
    record = await parts.stored()
    assert record.error is not None and record.error["node_id"] == "9"


async def test_uploaded_outputs_are_recorded_with_their_urls(parts: Parts) -> None:
    handling = asyncio.create_task(parts.delivery.handle(request(s3={"bucket": "bucket", "prefix": "runs/"})))
    await parts.comfy.until(parts.queued)
    (prompt_id,) = parts.queued()
    parts.end(prompt_id, saved(parts.output_dir, OUTPUT))
    answer = await handling
    assert answer.sent is not None
    await answer.sent()

    record = await parts.stored()
    assert [output["url"] for output in record.outputs] == [f"s3://bucket/runs/{OUTPUT}"]
    assert record.delivery["s3"] == {"bucket": "bucket", "prefix": "runs/", "async": False}


async def test_the_warmup_path_records_success(parts: Parts) -> None:
    running = asyncio.create_task(parts.runner.run(request()))
    await parts.comfy.until(parts.queued)
    (prompt_id,) = parts.queued()
    parts.end(prompt_id, saved(parts.output_dir, OUTPUT))
    await parts.runner.close(await running)
    assert (await parts.stored()).status is JobStatus.SUCCEEDED


def test_errors_are_recorded_as_the_api_answers_them() -> None:
    # The errors a client's input causes are a 400 with their message; any other, a 500 naming its type only.
    assert jobs._CLIENT_INPUT == handlers._CLIENT_INPUT

    client_error = Job(id="a")
    client_error.mark_ended(DownloadError("Failed to download image for node 8: 404 Not Found"))
    assert client_error.record.error == {
        "error": "Failed to download image for node 8: 404 Not Found",
        "status_code": 400,
    }
    unexpected = Job(id="b")
    unexpected.mark_ended(RuntimeError("/srv/secret/path went away"))
    assert unexpected.record.error == {"error": "Internal error: RuntimeError", "status_code": 500}
    # The first end recorded stands.
    unexpected.mark_succeeded()
    assert unexpected.record.status is JobStatus.FAILED
