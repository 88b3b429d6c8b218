"""POST /interrupt against a running prompt and a queued one."""

from __future__ import annotations

import httpx

from tests.support.graphs import slow, solid
from tests.support.server import ApiServer, run_in_background, wait_until


def post_prompt(server: ApiServer, graph: dict, request_id: str) -> httpx.Response:
    return server.http.post("/prompt", json={"prompt": graph, "id": request_id})


def test_interrupting_a_running_prompt_fails_it_as_interrupted(server: ApiServer) -> None:
    result = run_in_background(lambda: post_prompt(server, slow(), "to-interrupt"))
    server.wait_comfy_running()
    response = server.http.post("/interrupt", json={"id": "to-interrupt"})
    assert response.json() == {"id": "to-interrupt", "interrupted": "success"}
    failed = result(120)
    assert failed.status_code == 500
    assert failed.json()["error"] == "Prompt interrupted"
    assert server.files_under("output") == []
    # The server keeps serving.
    assert post_prompt(server, solid(8, 8), "after-interrupt").status_code == 200


def test_interrupting_a_queued_prompt_removes_it_from_comfyui_queue(server: ApiServer) -> None:
    blocker = run_in_background(lambda: post_prompt(server, slow(), "blocker"))
    running = server.wait_comfy_running()
    queued = run_in_background(lambda: post_prompt(server, solid(8, 8), "queued"))
    pending = server.wait_comfy_pending(1)
    # Two prompts in ComfyUI reach MAX_QUEUE_DEPTH=2: not ready for more.
    wait_until(lambda: not server.ready(), 30, "/ready to report the full queue")

    response = server.http.post("/interrupt", json={"id": "queued"})
    assert response.status_code == 200
    failed = queued(60)
    assert failed.status_code == 500 and failed.json()["error"] == "Prompt interrupted"
    # It left ComfyUI's queue while the blocker was still running, and never ran.
    assert server.comfy_queue() == ([running], [])
    history = httpx.get(f"{server.comfy_url}/history/{pending[0]}").json()
    assert history == {}

    server.http.post("/interrupt", json={"id": "blocker"})
    assert blocker(120).status_code == 500
    wait_until(lambda: server.comfy_queue() == ([], []), 60, "ComfyUI's queue to empty")
    wait_until(server.ready, 30, "/ready once the queue has room again")


def test_interrupting_a_queued_prompt_leaves_another_clients_running_prompt_alone(server: ApiServer) -> None:
    """Another client of the same ComfyUI runs a prompt; ours waits behind it. Interrupting ours must not stop
    theirs (a ComfyUI build that ignores the prompt id in /interrupt would stop whatever runs)."""
    theirs = httpx.post(f"{server.comfy_url}/prompt", json={"prompt": slow(), "client_id": "another-client"})
    their_id = theirs.json()["prompt_id"]
    wait_until(lambda: server.comfy_queue()[0] == [their_id], 120, "the other client's prompt to run")
    queued = run_in_background(lambda: post_prompt(server, solid(8, 8), "queued-behind"))
    server.wait_comfy_pending(1)
    assert server.http.post("/interrupt", json={"id": "queued-behind"}).status_code == 200
    assert queued(60).json()["error"] == "Prompt interrupted"
    history = wait_until(
        lambda: httpx.get(f"{server.comfy_url}/history/{their_id}").json().get(their_id), 180, "their prompt to end"
    )
    assert history["status"]["status_str"] == "success"
    httpx.post(f"{server.comfy_url}/history", json={"delete": [their_id]})
    for path in server.files_under("output"):
        path.unlink()
