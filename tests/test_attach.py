"""Attach mode (COMFYUI_ATTACH=true) against a real ComfyUI that the test starts and kills itself, as a sidecar's
runtime would: the server waits for it, serves through it, turns unready (never exits, never signals it) when it is
gone, and serves again once it is back and warmed up."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.graphs import solid
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, wait_until

ServerFactory = Callable[..., ApiServer]


def start_comfy(server: ApiServer) -> subprocess.Popen[bytes]:
    """The ComfyUI the server's CMD would launch, started by the test: the server only knows its address."""
    with open(server.base / "comfyui.log", "ab") as log:
        return subprocess.Popen(
            shlex.split(server.env["CMD"]), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def details(server: ApiServer) -> dict[str, Any]:
    response = server.http.get("/health", params={"verbose": "1"})
    assert response.status_code == 200
    return response.json()


def prompt_runs(server: ApiServer, request_id: str) -> None:
    response = server.http.post("/prompt", json={"prompt": solid(8, 8), "id": request_id})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_attached_comfyui_lost_and_back(make_server: ServerFactory, tmp_path: Path) -> None:
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(solid(8, 8)))
    server = make_server("attach", COMFYUI_ATTACH="true", WARMUP_PROMPT_FILE=str(warmup))
    server.start(wait="none")
    comfy = start_comfy(server)
    try:
        # Started before ComfyUI answers, the server waits for it, then warms up.
        wait_until(server.healthy, STARTUP_DEADLINE_S, "the server to attach and warm up", interval_s=0.2)
        assert any(entry.get("msg") == "waiting for ComfyUI to answer" for entry in server.log_entries())
        wait_until(server.ready, 60, "readiness")
        prompt_runs(server, "attached")

        # The details come from ComfyUI's own /system_stats, read in the background.
        body = wait_until(lambda: (d := details(server))["comfyui"]["stats_at"] and d, 60, "/system_stats to be read")
        assert body["comfyui"]["mode"] == "attach" and body["comfyui"]["restarts"] == 0
        assert body["comfyui"]["comfyui_version"] and body["comfyui"]["pytorch_version"]
        assert [device["type"] for device in body["comfyui"]["devices"]] == ["cpu"]

        # ComfyUI dies: unready, alive, still healthy (a sidecar's restart must not restart this container).
        comfy.kill()
        comfy.wait(timeout=60)
        wait_until(lambda: not server.ready(), 60, "/ready to turn 503 once ComfyUI is gone")
        assert server.http.get("/ready").status_code == 503
        assert server.http.get("/health").status_code == 200
        assert server.process is not None and server.process.poll() is None
        # (/ready turns 503 with the websocket's loss; the loss itself is noted once ComfyUI does not answer either.)
        error = wait_until(lambda: details(server)["last_error"], 60, "ComfyUI's loss to be noted")
        assert error["message"] == "ComfyUI is gone: it does not answer"
        assert not details(server)["comfyui"]["up"]

        # It comes back: found, warmed up again, serving again.
        comfy = start_comfy(server)
        wait_until(server.ready, STARTUP_DEADLINE_S, "readiness once ComfyUI is back", interval_s=0.2)
        prompt_runs(server, "attached-again")
        assert details(server)["comfyui"]["restarts"] == 1
        assert sum(entry.get("msg") == "warmup complete" for entry in server.log_entries()) == 2

        # The server stops; the ComfyUI it attached to is not its to stop.
        server.stop()
        assert server.process.returncode == 0
        assert comfy.poll() is None
    finally:
        comfy.kill()
        comfy.wait(timeout=60)
