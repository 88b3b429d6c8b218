"""A wedged ComfyUI is detected and healed, and prompts abandoned while it was stopped leave nothing behind.

Each test starts a server of its own, with a short COMFY_STALL_TIMEOUT_S where it waits for a wedge.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.graphs import node, slow, solid
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, run_in_background, wait_until

ServerFactory = Callable[..., ApiServer]

CUSTOM_NODES = Path(__file__).parent / "support" / "custom_nodes"
STALL_S = 4


def post(server: ApiServer, graph: dict, request_id: str) -> httpx.Response:
    return server.http.post("/prompt", json={"prompt": graph, "id": request_id})


def wedge_lines(server: ApiServer) -> list[dict]:
    return [entry for entry in server.log_entries() if entry.get("msg") == "ComfyUI is wedged; restarting it"]


def requeue_lines(server: ApiServer) -> list[dict]:
    message = "ComfyUI failed the prompt; queueing it again once ComfyUI is back"
    return [entry for entry in server.log_entries() if entry.get("msg") == message]


def assert_serves_again(server: ApiServer, old_pid: int) -> None:
    wait_until(server.ready, STARTUP_DEADLINE_S, "readiness after the restart", interval_s=0.2)
    assert server.comfy_process().pid != old_pid
    response = post(server, solid(8, 8), "after-the-restart")
    assert response.status_code == 200, response.text
    assert server.http.get("/health").status_code == 200


def test_a_dead_prompt_worker_is_detected_and_comfyui_restarted(make_server: ServerFactory) -> None:
    # JOB_MAX_ATTEMPTS=1: the stuck request fails with the restart's reason instead of being queued again on the
    # restarted ComfyUI (the requeue is tested below, with a stopped ComfyUI).
    server = make_server("worker", COMFY_STALL_TIMEOUT_S=str(STALL_S), JOB_MAX_ATTEMPTS="1")
    shutil.copy(CUSTOM_NODES / "kill_prompt_worker.py", server.base / "custom_nodes")
    server.start()
    wait_until(server.ready, 60, "readiness")
    old_pid = server.comfy_process().pid
    killer = {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("KillPromptWorker", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="killer"),
    }
    assert post(server, killer, "kills-the-worker").status_code == 200

    # The next prompt is accepted by ComfyUI but never runs; its HTTP server answers all along.
    stuck = run_in_background(lambda: post(server, solid(8, 8), "stuck"))
    server.wait_comfy_pending(1)
    wait_until(lambda: not server.ready(), 60, "/ready to turn 503")

    response = stuck(120)
    assert response.status_code == 503
    assert "restarted" in response.json()["error"]
    [line] = wedge_lines(server)
    assert "pending but none running" in line["cause"]
    assert_serves_again(server, old_pid)


def test_a_stopped_comfyui_is_detected_and_restarted(make_server: ServerFactory) -> None:
    server = make_server("sigstop", COMFY_STALL_TIMEOUT_S=str(STALL_S)).start()
    wait_until(server.ready, 60, "readiness")
    comfy = server.comfy_process()
    old_pid = comfy.pid
    comfy.suspend()  # SIGSTOP: the port stays open, nothing answers

    result = run_in_background(lambda: post(server, solid(8, 8), "sent-to-a-stopped-comfyui"))
    wait_until(lambda: not server.ready(), 60, "/ready to turn 503")
    wait_until(lambda: wedge_lines(server), 120, "the restart's log line")
    assert "has not answered" in wedge_lines(server)[0]["cause"]

    # The request is queued again once ComfyUI is back (JOB_MAX_ATTEMPTS, default 2): its second attempt succeeds.
    response = result(STARTUP_DEADLINE_S)
    assert response.status_code == 200, response.text
    assert server.http.get("/prompt/sent-to-a-stopped-comfyui").json()["attempts"] == 2
    wait_until(lambda: requeue_lines(server), 30, "the requeue's log line")
    assert [(line["request_id"], line["attempt"]) for line in requeue_lines(server)] == [
        ("sent-to-a-stopped-comfyui", 1)
    ]
    assert_serves_again(server, old_pid)


def test_prompts_that_timed_out_while_comfyui_was_stopped_leave_no_files_or_history(
    make_server: ServerFactory,
) -> None:
    # A stall timeout longer than the test: the stopped ComfyUI is left alone, and resumes.
    server = make_server("resumed", PROMPT_TIMEOUT_S="20", COMFY_STALL_TIMEOUT_S="3600").start()
    running = run_in_background(lambda: post(server, slow(), "running-when-stopped"))
    server.wait_comfy_running()
    pending = run_in_background(lambda: post(server, solid(16, 16, prefix="pending"), "pending-when-stopped"))
    server.wait_comfy_pending(1)
    comfy = server.comfy_process()
    comfy.suspend()
    try:
        assert running(120).status_code == 504
        assert pending(120).status_code == 504
    finally:
        comfy.resume()

    wait_until(
        server.comfy_left_clean, 180, "ComfyUI's queue, history and the output folder to be empty", interval_s=0.5
    )
    # The prompt that ran on after SIGCONT ended there with an entry of its own, which the server removed (its log
    # line is written by the log's own thread, possibly just after).
    wait_until(
        lambda: any(entry.get("msg") == "cleaned up an abandoned prompt" for entry in server.log_entries()),
        30,
        "the cleanup's log line",
    )
    response = post(server, solid(8, 8), "afterwards")
    assert response.status_code == 200, response.text
    assert server.files_under("output") == []


def test_a_prompt_past_its_deadline_that_ignores_its_interrupt_gets_comfyui_restarted(
    make_server: ServerFactory,
) -> None:
    server = make_server("stuck", PROMPT_TIMEOUT_S="8", INTERRUPT_GRACE_S="3", COMFY_STALL_TIMEOUT_S="3600")
    shutil.copy(CUSTOM_NODES / "ignore_interrupts.py", server.base / "custom_nodes")
    server.start()
    wait_until(server.ready, 60, "readiness")
    old_pid = server.comfy_process().pid
    stuck = {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("IgnoreInterrupts", image=["1", 0], seconds=3600.0),
        "3": node("SaveImage", images=["2", 0], filename_prefix="stuck"),
    }

    response = post(server, stuck, "ignores-interrupts")

    assert response.status_code == 504
    wait_until(lambda: wedge_lines(server), 120, "the restart's log line")
    assert "ignored its interrupt" in wedge_lines(server)[0]["cause"]
    assert_serves_again(server, old_pid)
