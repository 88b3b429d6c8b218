"""Supervision and resilience: warmup, ComfyUI crashes, websocket loss, graceful shutdown.

Each test here needs a server of its own (it kills, cuts or stops something), so each starts one.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.files import FileServer
from tests.support.graphs import slow, solid, txt2img
from tests.support.relay import Relay
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, run_in_background, wait_until

ServerFactory = Callable[..., ApiServer]


def post_prompt(server: ApiServer, graph: dict, request_id: str) -> httpx.Response:
    return server.http.post("/prompt", json={"prompt": graph, "id": request_id})


def logged(server: ApiServer, message: str) -> bool:
    return any(entry.get("msg") == message for entry in server.log_entries())


def test_warmup_runs_before_health_and_after_every_restart(make_server: ServerFactory, tmp_path: Path) -> None:
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(txt2img(64, 64)))
    # JOB_MAX_ATTEMPTS=1: the request ComfyUI dies under fails at once, rather than being queued again once ComfyUI
    # is back (the requeue is tested in test_wedge.py and test_v2_durability.py), so its answer marks the restart.
    server = make_server("restart", WARMUP_PROMPT_FILE=str(warmup), ALWAYS_RESTART_COMFYUI="true", JOB_MAX_ATTEMPTS="1")
    server.start(wait="listening")

    # Until the warmup prompt has run through the pipeline, liveness and readiness both say no.
    seen = []
    while (status := server.http.get("/health").status_code) != 200:
        seen.append(status)
        assert server.http.get("/ready").status_code in (503, 200)
        time.sleep(0.02)
        assert len(seen) < STARTUP_DEADLINE_S / 0.02
    assert logged(server, "warmup complete")
    assert set(seen) <= {500}
    wait_until(server.ready, 60, "readiness after warmup")
    assert server.files_under("output") == []  # the warmup's outputs were deleted like any request's

    # ComfyUI killed mid-prompt: that request fails fast and clearly, /ready is 503 during the restart,
    # the warmup runs again, and the next request succeeds.
    result = run_in_background(lambda: post_prompt(server, slow(), "killed"))
    server.wait_comfy_running()
    first_pid = server.comfy_process().pid
    killed_at = time.monotonic()
    server.comfy_process().kill()
    failed = result(60)
    assert time.monotonic() - killed_at < 15
    assert failed.status_code == 503
    assert "ComfyUI exited" in failed.json()["error"]
    assert server.http.get("/ready").status_code == 503
    assert server.http.get("/health").status_code == 200  # liveness holds through a restart

    wait_until(server.ready, STARTUP_DEADLINE_S, "readiness after the restart", interval_s=0.2)
    assert server.comfy_process().pid != first_pid
    assert sum(entry.get("msg") == "warmup complete" for entry in server.log_entries()) == 2
    assert post_prompt(server, solid(8, 8), "after-restart").status_code == 200


def test_warmup_from_url_timeout_and_exit_without_restart(make_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "warmup.json").write_text(json.dumps(solid(8, 8)))
    with FileServer(tmp_path, auth_header=("X-Token", "sesame")) as files:
        server = make_server(
            "no-restart",
            WARMUP_PROMPT_URL=f"{files.url}/warmup.json",
            HTTP_AUTH_HEADER_NAME="X-Token",
            HTTP_AUTH_HEADER_VALUE="sesame",
            PROMPT_TIMEOUT_S="2",
        ).start()
        assert files.requests == ["/warmup.json"]
    assert logged(server, "warmup complete")

    # A prompt that outlives PROMPT_TIMEOUT_S gets 504 and is taken out of ComfyUI.
    response = post_prompt(server, slow(), "too-slow")
    assert response.status_code == 504
    assert "PROMPT_TIMEOUT_S" in response.json()["error"]
    wait_until(lambda: server.comfy_queue() == ([], []), 60, "the timed-out prompt to leave ComfyUI")

    # Without ALWAYS_RESTART_COMFYUI, ComfyUI's death ends the server with a non-zero code.
    server.comfy_process().kill()
    assert server.wait_exit(60) == 1
    assert logged(server, "ComfyUI exited; ALWAYS_RESTART_COMFYUI is off, so the server exits")


def test_a_bad_warmup_prompt_stops_startup_with_a_clear_message(make_server: ServerFactory, tmp_path: Path) -> None:
    warmup = tmp_path / "warmup.json"
    warmup.write_text('{"1": {"inputs": {}}}')
    server = make_server("bad-warmup", WARMUP_PROMPT_FILE=str(warmup)).start(wait="none")
    assert server.wait_exit(60) == 1
    messages = [entry.get("msg", "") for entry in server.log_entries() if entry.get("level") == "critical"]
    assert messages and "WARMUP_PROMPT_FILE" in messages[0] and "class_type" in messages[0]


def test_a_cmd_that_cannot_be_launched_stops_startup_with_a_clear_message(make_server: ServerFactory) -> None:
    server = make_server("bad-cmd", CMD="/nonexistent/comfyui --listen").start(wait="none")
    assert server.wait_exit(60) == 1
    messages = [entry.get("msg", "") for entry in server.log_entries() if entry.get("level") == "critical"]
    assert messages == [
        "cannot launch CMD '/nonexistent/comfyui': [Errno 2] No such file or directory: '/nonexistent/comfyui'"
    ]


def test_a_lost_websocket_never_blocks_a_request(make_server: ServerFactory) -> None:
    server = make_server("relay")
    relay = Relay(server.comfy_port)
    server.env["COMFYUI_PORT_HOST"] = str(relay.port)
    server.start()
    try:
        wait_until(server.ready, 60, "readiness")
        result = run_in_background(lambda: post_prompt(server, slow(blurs=2), "ws-cut"))
        prompt_id = server.wait_comfy_running()
        relay.cut_websockets(block=True)
        wait_until(lambda: not server.ready(), 30, "/ready to report the lost websocket")

        # The prompt finishes while no websocket can connect: /history, read through the same relay,
        # still completes the request.
        response = result(180)
        assert response.status_code == 200, response.text
        assert len(response.json()["images"]) == 1
        assert relay.open_websockets == 0
        # Collected, then forgotten (history deletes go in batches, a moment after a job ends).
        wait_until(
            lambda: httpx.get(f"{server.comfy_url}/history/{prompt_id}").json() == {}, 30, "the history entry to go"
        )

        relay.allow_websockets()
        wait_until(server.ready, 60, "readiness once the websocket is back")
        assert post_prompt(server, solid(8, 8), "after-ws").status_code == 200

        # SIGTERM while a request runs: readiness drops, new prompts are refused, the request completes,
        # ComfyUI is stopped and the process exits 0.
        result = run_in_background(lambda: post_prompt(server, slow(blurs=2), "draining"))
        server.wait_comfy_running()
        comfy = server.comfy_process()
        server.signal(signal.SIGTERM)
        wait_until(lambda: server.http.get("/ready").status_code == 503, 30, "/ready to turn 503 while draining")
        refused = post_prompt(server, solid(8, 8), "too-late")
        assert refused.status_code == 503
        response = result(180)
        assert response.status_code == 200, response.text
        assert server.wait_exit(60) == 0
        assert not comfy.is_running()
    finally:
        relay.close()


def test_an_unwritable_folder_stops_startup_with_one_line_naming_its_variable(make_server: ServerFactory) -> None:
    server = make_server("unwritable", CACHE_DIR="/proc/comfyui-api-cache").start(wait="none")
    assert server.wait_exit(60) == 1
    criticals = [entry for entry in server.log_entries() if entry.get("level") == "critical"]
    assert [entry["msg"] for entry in criticals] == [
        "CACHE_DIR: cannot create the folder /proc/comfyui-api-cache: No such file or directory"
    ]
    assert not any("Traceback" in entry.get("raw", "") or "exc" in entry for entry in server.log_entries())
