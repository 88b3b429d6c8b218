"""GET /prompt/{id} end to end, against a real server in front of a real ComfyUI with its job store in a folder of
its own: a sync request is succeeded with its outputs' names, an async one is seen queued, running and succeeded, a
failed prompt is failed with the error its request got, an unknown id is a 404; after a restart on the same
STATE_DIR the finished jobs still answer, and with a short JOB_RETENTION_S a record expires and is swept from the
file.

The module's tests run in order: the last one stops the module's server and starts another on its STATE_DIR."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.graphs import img2img, slow, solid
from tests.support.receiver import WebhookReceiver
from tests.support.server import ApiServer, trusting, wait_until

RETENTION_AFTER_RESTART_S = 3


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job-state")


@pytest.fixture(scope="module")
def jobs_server(make_server: Callable[..., ApiServer], receiver: WebhookReceiver, state_dir: Path) -> ApiServer:
    return make_server("jobs", STATE_DIR=str(state_dir), **trusting(receiver.url)).start()


def job(server: ApiServer, job_id: str) -> dict[str, Any]:
    response = server.http.get(f"/prompt/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def stored_ids(state_dir: Path) -> set[str]:
    """The ids of the records in the job store's file, read as another process would."""
    with sqlite3.connect(f"file:{state_dir / 'jobs.db'}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM jobs")}


def test_a_sync_request_is_succeeded_with_its_outputs_names(jobs_server: ApiServer) -> None:
    response = jobs_server.http.post("/prompt", json={"prompt": solid(8, 8), "id": "sync-done"})
    assert response.status_code == 200

    status = job(jobs_server, "sync-done")

    assert status["id"] == "sync-done"
    assert status["status"] == "succeeded"
    assert [output["name"] for output in status["outputs"]] == response.json()["filenames"]
    assert all(output["size_bytes"] > 0 and output["node_id"] == "2" for output in status["outputs"])
    assert (status["error"], status["attempts"], status["queue_position"]) == (None, 1, None)
    assert status["progress"]["value"] == 1.0
    created, started, completed = (at(status[name]) for name in ("created_at", "started_at", "completed_at"))
    assert created <= started <= completed
    assert at(status["expires_at"]) - completed == timedelta(hours=24)  # the default JOB_RETENTION_S
    # Contents are delivered with the request, not kept.
    assert response.json()["images"][0] not in jobs_server.http.get("/prompt/sync-done").text


def test_an_async_request_is_seen_queued_running_and_succeeded(
    jobs_server: ApiServer, receiver: WebhookReceiver
) -> None:
    hooks = {"async-slow": receiver.url_for("/slow"), "async-quick": receiver.url_for("/quick")}
    first = {"prompt": slow(), "id": "async-slow", "webhook_v2": hooks["async-slow"]}
    assert jobs_server.http.post("/prompt", json=first).status_code == 202
    wait_until(lambda: job(jobs_server, "async-slow")["status"] == "running", 120, "the slow prompt to run")
    second = {"prompt": solid(8, 8), "id": "async-quick", "webhook_v2": hooks["async-quick"]}
    assert jobs_server.http.post("/prompt", json=second).status_code == 202

    waiting = job(jobs_server, "async-quick")
    assert (waiting["status"], waiting["queue_position"], waiting["started_at"]) == ("queued", 0, None)
    running = job(jobs_server, "async-slow")
    assert (running["queue_position"], running["completed_at"]) == (None, None)
    assert running["progress"]["nodes_total"] == 5 and 0 <= running["progress"]["value"] < 1
    assert running["started_at"] is not None

    receiver.wait_for(lambda got: {"/slow", "/quick"} <= {request.path for request in got}, timeout_s=180)
    for job_id in hooks:
        done = job(jobs_server, job_id)
        assert done["status"] == "succeeded" and len(done["outputs"]) == 1


def test_a_failed_prompt_is_failed_with_the_error_its_request_got(jobs_server: ApiServer) -> None:
    (jobs_server.base / "input" / "corrupt.png").write_text("this is not an image")
    response = jobs_server.http.post("/prompt", json={"prompt": img2img("corrupt.png"), "id": "broken"})
    assert response.status_code == 500

    status = job(jobs_server, "broken")

    assert status["status"] == "failed"
    assert status["error"] == {**response.json(), "status_code": 500}
    assert status["error"]["node_id"] == "8" and status["outputs"] == []


def test_an_unknown_id_is_a_404_in_the_error_shape(jobs_server: ApiServer) -> None:
    response = jobs_server.http.get("/prompt/never-sent")
    assert response.status_code == 404
    assert set(response.json()) == {"error"}
    assert "never-sent" in response.json()["error"]


def test_records_outlive_a_restart_and_expire_after_their_retention(
    jobs_server: ApiServer, make_server: Callable[..., ApiServer], state_dir: Path
) -> None:
    # Finished just before the stop: written by the last flush at shutdown, if not before.
    assert jobs_server.http.post("/prompt", json={"prompt": solid(8, 8), "id": "last-before-stop"}).status_code == 200
    jobs_server.stop()

    restarted = make_server(
        "jobs-restarted", STATE_DIR=str(state_dir), JOB_RETENTION_S=str(RETENTION_AFTER_RESTART_S)
    ).start()
    for job_id, status in (("sync-done", "succeeded"), ("broken", "failed"), ("last-before-stop", "succeeded")):
        assert job(restarted, job_id)["status"] == status

    response = restarted.http.post("/prompt", json={"prompt": solid(8, 8), "id": "short-lived"})
    assert response.status_code == 200
    short = job(restarted, "short-lived")
    assert at(short["expires_at"]) - at(short["completed_at"]) == timedelta(seconds=RETENTION_AFTER_RESTART_S)
    wait_until(lambda: "short-lived" in stored_ids(state_dir), 10, "the record to be written")
    wait_until(
        lambda: restarted.http.get("/prompt/short-lived").status_code == 404, 30, "the record to expire", interval_s=0.2
    )
    wait_until(lambda: "short-lived" not in stored_ids(state_dir), 30, "the sweeper to delete it", interval_s=0.2)
    # Records written with the first server's retention stay.
    assert {"sync-done", "broken", "last-before-stop"} <= stored_ids(state_dir)
