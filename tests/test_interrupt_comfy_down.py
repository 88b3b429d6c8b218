"""POST /interrupt while ComfyUI is stopped (SIGSTOP: its port open, nothing answering), with a stall timeout long
enough that the watchdog leaves it alone: an unknown id is a 404 at once, a known request ends as interrupted within
seconds, and once ComfyUI resumes its prompt leaves no trace."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.support.graphs import slow, solid
from tests.support.server import ApiServer, run_in_background, wait_until


def test_interrupting_while_comfyui_is_stopped(make_server: Callable[..., ApiServer]) -> None:
    server = make_server("interrupt-stopped", COMFY_STALL_TIMEOUT_S="3600").start()
    running = run_in_background(
        lambda: server.http.post("/prompt", json={"prompt": slow(), "id": "running-when-stopped"})
    )
    server.wait_comfy_running()
    comfy = server.comfy_process()
    comfy.suspend()
    try:
        started = time.monotonic()
        unknown = server.http.post("/interrupt", json={"id": "nobody"}, timeout=10)
        assert unknown.status_code == 404
        assert unknown.json() == {"id": "nobody", "interrupted": "failed"}
        assert time.monotonic() - started < 2

        known = server.http.post("/interrupt", json={"id": "running-when-stopped"}, timeout=30)
        assert known.json() == {"id": "running-when-stopped", "interrupted": "success"}
        failed = running(30)
        assert failed.status_code == 500 and failed.json()["error"] == "Prompt interrupted"
    finally:
        comfy.resume()

    wait_until(
        server.comfy_left_clean, 120, "the interrupted prompt to leave ComfyUI, its history and outputs", interval_s=0.5
    )
    assert server.http.post("/prompt", json={"prompt": solid(8, 8), "id": "after-resume"}).status_code == 200
