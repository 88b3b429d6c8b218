"""Durable v2 jobs end to end, against real server processes in front of a real ComfyUI: jobs the server stopped
under run again at its next start on the same STATE_DIR (attempt 2), a job ComfyUI dies under is queued again once
ComfyUI is back, one that kills ComfyUI every time fails after JOB_MAX_ATTEMPTS with each attempt's error, an event
stream resumed with Last-Event-ID misses and repeats nothing, extra_data is kept nowhere on disk (and a job that had
it is failed, not rerun, across a restart), and an async /prompt request's events stream to its end.

Two servers: `durable` (ALWAYS_RESTART_COMFYUI, with a node that kills ComfyUI) for the jobs ComfyUI dies under and
the event streams, and `restarting` (SHUTDOWN_GRACE_PERIOD_S=0), which the restart tests stop and start again on its
own folder."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.graphs import Graph, node, slow, solid, txt2img
from tests.support.receiver import WebhookReceiver
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, trusting, wait_until

ServerFactory = Callable[..., ApiServer]
Event = tuple[int, str, dict[str, Any]]

SECRET = "secret-xyz"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
# How long a job may take to end: a restart of ComfyUI (or of the server) and a prompt of a few seconds, on a slow
# 2-core machine.
JOB_DEADLINE_S = STARTUP_DEADLINE_S + 120

# A custom node that kills the ComfyUI process it runs in, every time: a prompt with it never gets an outcome.
KILL_COMFYUI_NODE = """
import os
import signal


class KillComfyUI:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        os.kill(os.getpid(), signal.SIGKILL)
        return (image,)


NODE_CLASS_MAPPINGS = {"KillComfyUI": KillComfyUI}
"""


# What an attempt ComfyUI died under ended with: its exit, seen by the supervisor, or, when the prompt killed it before
# ComfyUI had answered its submission, that answer's reset connection.
COMFYUI_DIED = re.compile(r"ComfyUI exited with code -9|ComfyUI is not reachable")


def kills_comfyui() -> Graph:
    return {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("KillComfyUI", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="killer"),
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def durable(make_server: ServerFactory, receiver: WebhookReceiver) -> ApiServer:
    server = make_server("durable", ALWAYS_RESTART_COMFYUI="true", **trusting(receiver.url))
    (server.base / "custom_nodes" / "kill_comfyui.py").write_text(KILL_COMFYUI_NODE)
    return server.start()


@pytest.fixture(scope="module")
def restarting(make_server: ServerFactory) -> ApiServer:
    """Stopped and started again by the tests (same folder, STATE_DIR, ports): jobs cut short at once at SIGTERM."""
    return make_server("restarting", SHUTDOWN_GRACE_PERIOD_S="0").start()


# Helpers ---------------------------------------------------------------------------------------------------------
def submit(server: ApiServer, workflow: Graph, **fields: Any) -> str:
    response = server.http.post("/api/v2/jobs", json={"workflow": workflow, **fields})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def job(server: ApiServer, job_id: str) -> dict[str, Any]:
    response = server.http.get(f"/api/v2/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(server: ApiServer, job_id: str, *statuses: str, timeout_s: float = JOB_DEADLINE_S) -> dict[str, Any]:
    """The job once its status is one of `statuses` (any terminal one by default)."""
    wanted = set(statuses or TERMINAL)
    return wait_until(
        lambda: (body := job(server, job_id))["status"] in wanted and body,
        timeout_s,
        f"job {job_id} to be {' or '.join(sorted(wanted))}",
        interval_s=0.2,
    )


def restart(server: ApiServer, how: signal.Signals = signal.SIGTERM) -> None:
    """Stop the server with `how` (SIGTERM: it drains; SIGKILL: it crashes), wait for its exit and for its ComfyUI's,
    and start it again on the same folder."""
    comfy = server.comfy_process()
    server.signal(how)
    assert server.wait_exit(120) == (0 if how is signal.SIGTERM else -how)
    comfy.wait(60)  # gone with the server, which frees its port
    server.start()


def sse(response: httpx.Response) -> Iterator[Event]:
    """The events of a text/event-stream response as they arrive: (id, name, data); comments skipped."""
    frame: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(": ")
            frame[name] = value
            continue
        if "event" in frame:
            yield int(frame["id"]), frame["event"], json.loads(frame["data"])
        frame = {}


def read_events(server: ApiServer, path: str, headers: dict[str, str] | None = None) -> list[Event]:
    """Every event of a stream, to its end."""
    with server.http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse(response))


def secret_files(folder: Path) -> list[Path]:
    """The files under `folder` whose bytes hold SECRET."""
    return [path for path in folder.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]


def assert_secret_nowhere(server: ApiServer) -> None:
    assert secret_files(server.base / "state") == []
    assert SECRET not in server.log_path.read_text(errors="replace")


# Restarts of the server ------------------------------------------------------------------------------------------
def test_jobs_the_server_stopped_under_run_again_at_its_next_start(restarting: ApiServer) -> None:
    server = restarting
    finished_id = submit(server, solid(8, 8, prefix="before"))
    finished = wait_status(server, finished_id)
    assert finished["status"] == "succeeded", finished
    (output,) = finished["outputs"]
    content = server.http.get(output["url"])
    assert content.status_code == 200 and len(content.content) == output["size_bytes"]

    running_id = submit(server, slow())
    wait_status(server, running_id, "running")
    queued_id = submit(server, solid(16, 16, prefix="queued"))
    assert job(server, queued_id)["status"] == "queued"

    restart(server)

    for job_id in (running_id, queued_id):
        done = wait_status(server, job_id)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        [first] = done["attempt_errors"]
        assert first["attempt"] == 1
        assert "The server restarted while the job was queued or running" in first["error"]
        assert len(done["outputs"]) == 1
    # The job finished before the restart answers as it did, and its output is still there to download.
    after = job(server, finished_id)
    assert (after["status"], after["attempts"], after["attempt_errors"]) == ("succeeded", 1, [])
    assert [item["id"] for item in after["outputs"]] == [output["id"]]
    again = server.http.get(after["outputs"][0]["url"])
    assert again.status_code == 200 and again.content == content.content


# The reason recovery.py gives a job it cannot run again because what it needs was held in memory only.
IN_MEMORY = "its credentials or extra_data were held in memory only"


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(signal.SIGTERM, id="drained"),
        pytest.param(signal.SIGKILL, id="crashed"),
    ],
)
def test_a_job_with_extra_data_is_failed_not_rerun_across_a_restart(restarting: ApiServer, how: signal.Signals) -> None:
    server = restarting
    if server.process is not None and server.process.poll() is not None:  # an earlier test left it stopped
        server.start()
    running_id = submit(server, slow())
    wait_status(server, running_id, "running")
    secret_id = submit(server, solid(16, 16, prefix="secret"), extra_data={"api_key_comfy_org": SECRET})
    assert job(server, secret_id)["status"] == "queued"

    restart(server, how)

    done = wait_status(server, secret_id)
    assert done["attempts"] == 1 and done["outputs"] == []  # not run again
    # The job without extra_data runs again.
    assert wait_status(server, running_id)["status"] == "succeeded"
    assert_secret_nowhere(server)
    assert done["status"] == "failed", done
    assert IN_MEMORY in done["error"]["message"]


# ComfyUI dying under a job ---------------------------------------------------------------------------------------
def test_a_job_comfyui_is_killed_under_is_queued_again_and_succeeds(durable: ApiServer) -> None:
    server = durable
    job_id = submit(server, slow())
    wait_status(server, job_id, "running")
    old_pid = server.comfy_process().pid

    server.comfy_process().kill()

    done = wait_status(server, job_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["error"] is None
    [first] = done["attempt_errors"]
    assert first["attempt"] == 1 and "ComfyUI exited" in first["error"]
    assert len(done["outputs"]) == 1
    assert server.comfy_process().pid != old_pid


def test_a_job_that_kills_comfyui_every_time_fails_after_its_attempts(durable: ApiServer) -> None:
    server = durable
    job_id = submit(server, kills_comfyui())

    done = wait_status(server, job_id)

    assert done["status"] == "failed", done
    assert done["attempts"] == 2  # JOB_MAX_ATTEMPTS' default
    [first] = done["attempt_errors"]
    assert first["attempt"] == 1 and COMFYUI_DIED.match(first["error"]), first
    assert done["error"]["code"] == "worker_unavailable"
    assert COMFYUI_DIED.match(done["error"]["message"]), done["error"]
    # The server serves on: the next job succeeds on the restarted ComfyUI.
    after = wait_status(server, submit(server, solid(8, 8, prefix="after-killer")))
    assert (after["status"], after["attempts"]) == ("succeeded", 1)
    assert server.http.get("/health").status_code == 200


# Event streams ---------------------------------------------------------------------------------------------------
def test_an_event_stream_resumed_with_last_event_id_misses_and_repeats_nothing(durable: ApiServer) -> None:
    server = durable
    job_id = submit(server, txt2img(steps=12, seed=21))
    path = f"/api/v2/jobs/{job_id}/events"

    # The first connection is dropped once the job runs (its first progress), before its end.
    first: list[Event] = []
    with server.http.stream("GET", path) as response:
        assert response.status_code == 200
        for event in sse(response):
            first.append(event)
            if event[1] == "progress":
                break
    assert first[-1][1] == "progress"
    assert not any(name == "status" and data["status"] in TERMINAL for _, name, data in first)

    second = read_events(server, path, headers={"Last-Event-ID": str(first[-1][0])})

    ids = [event_id for event_id, _, _ in first + second]
    assert ids == sorted(set(ids)), ids  # strictly increasing across both connections
    final = job(server, job_id)
    assert final["status"] == "succeeded"
    events = first + second
    assert events[-1][1:] == ("status", {"status": "succeeded", "queue_position": None})
    outputs = [data["id"] for _, name, data in events if name == "output"]
    assert outputs == [output["id"] for output in final["outputs"]] and outputs


def test_extra_data_is_kept_nowhere_on_disk(durable: ApiServer) -> None:
    server = durable
    job_id = submit(server, solid(8, 8, prefix="extra"), extra_data={"api_key_comfy_org": SECRET})

    done = wait_status(server, job_id)

    assert done["status"] == "succeeded", done
    assert SECRET not in server.http.get(f"/api/v2/jobs/{job_id}/workflow").text
    assert SECRET not in json.dumps(done)
    assert_secret_nowhere(server)


def test_an_async_prompt_requests_events_stream_to_its_terminal_status(
    durable: ApiServer, receiver: WebhookReceiver
) -> None:
    server = durable
    # Queued behind a running job, so that the stream starts before the request runs.
    blocker = submit(server, slow())
    wait_status(server, blocker, "running")
    body = {"prompt": txt2img(steps=4, seed=5), "id": "async-events", "webhook_v2": receiver.url_for("/async-events")}
    assert server.http.post("/prompt", json=body).status_code == 202

    events = read_events(server, "/prompt/async-events/events")

    ids = [event_id for event_id, _, _ in events]
    assert ids == sorted(set(ids)), ids
    statuses = [data["status"] for _, name, data in events if name == "status"]
    assert statuses[0] == "queued" and "running" in statuses
    assert statuses[-1] == "succeeded" and events[-1][1] == "status"
    assert server.http.get("/prompt/async-events").json()["status"] == "succeeded"
    receiver.wait_for(lambda got: any(request.path == "/async-events" for request in got), timeout_s=120)
    assert wait_status(server, blocker)["status"] == "succeeded"
