"""V2Jobs over the real pipeline, job store and asset store, with ComfyUI played by FakeComfy: what a submission is
refused for (and with which code), the idempotency key's life, extra_data sent to ComfyUI and kept nowhere, an
asset staged as an input, and a job that succeeds with its outputs as assets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from comfyui_api.api import v2_jobs as v2_jobs_routes
from comfyui_api.api.handlers import install_error_handlers
from comfyui_api.errors import FleetUnavailable, PromptRejected, V2Error
from comfyui_api.jobstore.records import JobRecord, JobStatus
from comfyui_api.jobstore.sqlite import SQLiteJobStore
from comfyui_api.jobstore.writer import RecordWriter
from comfyui_api.pipeline.runner import PromptRunner
from comfyui_api.v2.assets import AssetStore
from comfyui_api.v2.jobs import JobSubmission, StagedAssets, V2Jobs
from tests.unit.fake_comfy import saved
from tests.unit.fake_pipeline import Pipeline, pipeline

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}},
}


@dataclass
class V2:
    p: Pipeline
    jobs: V2Jobs
    records: RecordWriter
    assets: AssetStore
    state_dir: Path


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
async def v2(tmp_path: Path) -> AsyncIterator[V2]:
    async with pipeline(tmp_path, max_queue_depth=3) as p:
        records = RecordWriter(SQLiteJobStore(tmp_path / "state" / "jobs.db"), retention_s=3600)
        (tmp_path / "state").mkdir()
        await records.open()
        writing = asyncio.create_task(records.run())
        assets = AssetStore(
            tmp_path / "state" / "assets", retention_s=3600, max_upload_bytes=1 << 20, disk_limit_bytes=0
        )
        await assets.open()
        p.jobs._on_record = records.changed
        # The runner the app builds: core/ASSET inputs from the asset store.
        p.runner = PromptRunner(
            p.settings, p.client, p.events, p.jobs, p.state, p.storage, p.janitor, assets=StagedAssets(assets)
        )
        jobs = V2Jobs(p.runner, p.jobs, records, assets, max_queue_depth=3, output_retention_s=3600)
        try:
            yield V2(p, jobs, records, assets, tmp_path / "state")
        finally:
            await jobs.aclose()
            writing.cancel()
            await records.aclose()
            await assets.close()


async def _refused(v2: V2, body: dict[str, Any], key: str | None = None) -> V2Error:
    with pytest.raises(V2Error) as refused:
        await v2.jobs.submit(JobSubmission.model_validate(body), key)
    return refused.value


async def test_a_ui_format_export_is_refused_as_such(v2: V2) -> None:
    error = await _refused(v2, {"workflow": {"nodes": [], "links": [], "version": 0.4}})
    assert (error.status_code, error.code) == (422, "workflow_format_ui")


async def test_malformed_nodes_are_refused_with_each_nodes_errors(v2: V2) -> None:
    error = await _refused(v2, {"workflow": {"1": {"inputs": {}}, "2": "text", "9": GRAPH["9"]}})
    assert (error.status_code, error.code) == (422, "invalid_workflow")
    assert error.details == {
        "node_errors": {
            "1": [{"field": "class_type", "reason": "missing_class_type"}],
            "2": [{"field": "", "reason": "not_an_object"}],
        }
    }
    assert v2.p.queued() == []


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"workflow": GRAPH, "webhook_url": "http://x"}, "webhook_url"),
        ({"workflow": GRAPH, "inputs": {}}, "inputs"),
        ({"workflow": GRAPH, "extra_data": {"other": 1}}, "extra_data.other"),
        ({}, "workflow"),
    ],
)
async def test_reserved_and_unknown_fields_are_refused(v2: V2, body: dict[str, Any], location: str) -> None:
    # Through the route: the body's own validation is the app's, answered in the v2 envelope by its handlers.
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(v2_jobs_routes.router)
    app.state.v2_jobs = v2.jobs
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/api/v2/jobs", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert location in json.dumps(error["details"])
    assert v2.p.queued() == []


async def test_comfyuis_refusal_is_invalid_workflow_and_frees_the_key(v2: V2) -> None:
    v2.p.comfy.rejection = PromptRejected(
        "Prompt outputs failed validation",
        node_errors={
            "1": {"errors": [{"type": "value_not_valid", "message": "bad", "extra_info": {"input_name": "w"}}]}
        },
    )
    error = await _refused(v2, {"workflow": GRAPH}, key="k1")
    assert (error.code, error.details) == (
        "invalid_workflow",
        {"node_errors": {"1": [{"field": "w", "reason": "value_not_valid", "message": "bad"}]}},
    )
    v2.p.comfy.rejection = None
    # Refused without a job: the same key may be used again, once.
    record = await v2.jobs.submit(JobSubmission(workflow=GRAPH), "k1")
    assert record.status is JobStatus.QUEUED
    error = await _refused(v2, {"workflow": GRAPH}, key="k1")
    assert (error.status_code, error.code) == (422, "idempotency_key_reuse")


async def test_an_unknown_asset_is_missing_asset(v2: V2) -> None:
    graph = {
        **GRAPH,
        "2": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "no"}}}},
    }
    error = await _refused(v2, {"workflow": graph})
    assert (error.status_code, error.code) == (422, "missing_asset")
    assert error.details == {"location": "prompt.2.inputs.image"}


async def test_a_full_queue_is_queue_full_with_retry_after(v2: V2) -> None:
    for _ in range(3):
        await v2.jobs.submit(JobSubmission(workflow=GRAPH), None)
    error = await _refused(v2, {"workflow": GRAPH})
    assert (error.status_code, error.code) == (429, "queue_full")
    assert error.retry_after_s is not None and error.retry_after_s > 0


async def test_a_job_runs_with_its_asset_and_extra_data_and_its_outputs_become_assets(v2: V2) -> None:
    asset, _ = await v2.assets.ingest(
        _chunks(b"\x89PNG fake"),
        content_type="image/png",
        file_path="in/photo.png",
        tags=[],
        expected_hash=None,
        expires_in_s=None,
    )
    graph = {
        **GRAPH,
        "2": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": asset.id}}}},
    }
    body = {"workflow": graph, "extra_data": {"api_key_comfy_org": "secret-xyz"}, "metadata": {"run": "a"}}
    record = await v2.jobs.submit(JobSubmission.model_validate(body), None)

    # Durable before the answer: the store has it.
    assert (await v2.records.store.get(record.id)) is not None
    (queued,) = v2.p.comfy.named("queue_prompt")
    assert queued["extra_data"] == {"api_key_comfy_org": "secret-xyz"}
    staged = queued["prompt"]["2"]["inputs"]["image"]
    assert staged == f"{record.id}-assets/{asset.id}-photo.png"
    assert (v2.p.settings.inputs_path / staged).read_bytes() == b"\x89PNG fake"

    output = f"{record.id}_out_00001_.png"
    v2.p.comfy.end(queued["prompt_id"], saved(v2.p.output_dir, output))
    ended = asyncio.Event()
    record_changed = v2.p.jobs._on_record
    v2.p.jobs.get(record.id).record_changed = lambda changed: (
        record_changed(changed),
        changed.terminal and ended.set(),
    )
    await asyncio.wait_for(ended.wait(), 30)
    done = await v2.jobs.get(record.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    (described,) = done.outputs
    assert described["url"] == f"/api/v2/assets/{described['id']}/content"
    assert (await v2.assets.get(described["id"])).job_id == record.id
    # The job closes after its end: its staged input goes then.
    assert await v2.p.jobs.wait_idle(30)
    await v2.p.runner.aclose()
    assert not (v2.p.settings.inputs_path / staged).exists()
    await v2.records.flush()
    for path in v2.state_dir.rglob("*"):
        if path.is_file():
            assert b"secret-xyz" not in path.read_bytes()


# Fleet mode: submissions go to the fleet's door, and a worker runs them with run_queued -------------------------
class RecordingDoor:
    """The fleet's front door as V2Jobs sees it (fleet/door.py is tested against a real broker in tests/fleet): it
    keeps what it was given, or refuses as the door does when the broker does not answer."""

    def __init__(self) -> None:
        self.queued: list[tuple[JobRecord, int, dict[str, Any]]] = []
        self.down = False

    async def queue_v2(self, record: JobRecord, *, priority: int, secrets: dict[str, Any]) -> None:
        if self.down:
            raise FleetUnavailable("The broker does not answer: connection refused")
        self.queued.append((record, priority, secrets))


@pytest.fixture
def door(v2: V2) -> RecordingDoor:
    recording = RecordingDoor()
    v2.jobs._door = recording
    return recording


async def test_in_fleet_mode_a_submission_is_queued_with_its_priority_and_sealed_extra_data(
    v2: V2, door: RecordingDoor
) -> None:
    body = {"workflow": GRAPH, "extra_data": {"api_key_comfy_org": "k"}, "metadata": {"priority": "2", "a": "b"}}
    record = await v2.jobs.submit(JobSubmission.model_validate(body), "fleet-key")

    [(queued, priority, secrets)] = door.queued
    assert queued is record and record.status is JobStatus.QUEUED
    assert (priority, secrets) == (2, {"extra_data": {"api_key_comfy_org": "k"}})
    assert record.request is not None and "needs_memory" not in record.request
    assert v2.p.queued() == []  # nothing runs here: a worker takes it from the queue
    error = await _refused(v2, {"workflow": GRAPH}, key="fleet-key")
    assert error.code == "idempotency_key_reuse"


async def test_in_fleet_mode_a_down_broker_is_retried_later_and_frees_the_key(v2: V2, door: RecordingDoor) -> None:
    door.down = True
    error = await _refused(v2, {"workflow": GRAPH}, key="down-key")
    assert (error.status_code, error.code) == (429, "deployment_not_ready")
    assert error.retry_after_s is not None and error.retry_after_s > 0

    door.down = False
    await v2.jobs.submit(JobSubmission(workflow=GRAPH), "down-key")
    assert len(door.queued) == 1


@pytest.mark.parametrize("priority", ["-1", "high", "1.5"])
async def test_a_priority_that_is_not_a_level_is_refused_at_its_field(
    v2: V2, door: RecordingDoor, priority: str
) -> None:
    error = await _refused(v2, {"workflow": GRAPH, "metadata": {"priority": priority}})
    assert (error.status_code, error.code, error.details) == (
        422,
        "invalid_request",
        {"location": "metadata.priority"},
    )
    assert door.queued == []


async def test_in_fleet_mode_an_unknown_asset_is_refused_before_it_is_queued(v2: V2, door: RecordingDoor) -> None:
    graph = {
        **GRAPH,
        "2": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "gone"}}}},
    }
    error = await _refused(v2, {"workflow": graph})
    assert (error.code, error.details) == ("missing_asset", {"location": "prompt.2.inputs.image"})
    assert door.queued == []


async def test_a_queued_job_comfyui_refuses_ends_failed_with_the_code_its_submission_would_get(
    v2: V2, door: RecordingDoor
) -> None:
    record = await v2.jobs.submit(JobSubmission(workflow=GRAPH), None)
    v2.p.comfy.rejection = PromptRejected("Prompt outputs failed validation", node_errors={})

    await v2.jobs.run_queued(record, {})

    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error["code"] == "invalid_workflow"


async def test_a_queued_job_runs_to_its_end_with_its_extra_data(v2: V2, door: RecordingDoor) -> None:
    record = await v2.jobs.submit(JobSubmission(workflow=GRAPH), None)
    running = asyncio.create_task(v2.jobs.run_queued(record, {"extra_data": {"api_key_comfy_org": "k"}}))
    queued = await _queued_prompt(v2)
    assert queued["extra_data"] == {"api_key_comfy_org": "k"}

    v2.p.comfy.end(queued["prompt_id"], saved(v2.p.output_dir, f"{record.id}_out_00001_.png"))
    await asyncio.wait_for(running, 30)

    assert record.status is JobStatus.SUCCEEDED
    [output] = record.outputs
    assert (await v2.assets.get(output["id"])) is not None


async def _queued_prompt(v2: V2) -> dict[str, Any]:
    """The prompt ComfyUI was given, once it was."""
    await v2.p.comfy.until(lambda: v2.p.comfy.named("queue_prompt"), timeout_s=30)
    [queued] = v2.p.comfy.named("queue_prompt")
    return queued
