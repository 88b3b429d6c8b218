"""`GET /health?verbose=1`: what the lifecycle keeps in ServerState (ComfyUI's /system_stats read in the background,
restarts, the last error), answered without a call to ComfyUI; the plain /health body is unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from comfyui_api import __version__
from comfyui_api.api import probes
from tests.unit.test_lifecycle import Server, server, until


def probe_app(s: Server) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(probes.router)
    app.state.settings = s.p.settings
    app.state.server_state = s.state
    app.state.events = s.events
    app.state.jobs = s.p.jobs
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def details(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health", params={"verbose": "1"})
    assert response.status_code == 200
    return response.json()


async def test_verbose_health_answers_from_what_was_read_in_the_background(tmp_path: Path) -> None:
    async with server(tmp_path, warmup=True, always_restart_comfyui=True) as s, probe_app(s) as client:
        await s.warmed_up(1)
        # Read when ComfyUI came up and again after its warmup.
        await until(s.stats.changed, lambda: s.stats.readings == 2)

        plain = await client.get("/health")
        assert (plain.status_code, plain.json()) == (200, {"version": __version__, "status": "healthy"})
        for _ in range(20):
            body = await details(client)
        assert s.stats.readings == 2  # probes never call ComfyUI
        assert body["status"] == "healthy" and isinstance(body["uptime_s"], int)
        comfyui = body["comfyui"]
        assert comfyui["mode"] == "launch" and comfyui["up"] is True and comfyui["restarts"] == 0
        assert (comfyui["comfyui_version"], comfyui["pytorch_version"]) == ("0.3.75", "2.13.0+cpu")
        assert "argv" not in comfyui
        assert comfyui["devices"] == [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": 1024,
                "vram_free": 512,
                "torch_vram_total": None,
                "torch_vram_free": None,
            }
        ]
        assert comfyui["stats_at"].endswith("Z")
        assert body["queue"] == {"comfyui": 0, "in_flight": 0}
        assert body["last_error"] is None

        # A prompt failing in ComfyUI is the last error, paths scrubbed as in the request's own answer.
        s.p.comfy.emit(
            "execution_error",
            {
                "prompt_id": "p-1",
                "node_id": "3",
                "node_type": "KSampler",
                "exception_type": "RuntimeError",
                "exception_message": "boom",
            },
        )
        error = (await details(client))["last_error"]
        assert error["message"] == "Prompt execution failed at node 3 (KSampler): RuntimeError: boom"
        assert error["prompt_id"] == "p-1"

        # ComfyUI exits and is relaunched: its exit is the last error, the restart counted, the stats read again.
        s.process.exit(1)
        await until(s.process.changed, lambda: s.process.launches == 2)
        await s.warmed_up(2)
        body = await details(client)
        assert body["last_error"]["message"] == "ComfyUI exited with code 1"
        assert body["comfyui"]["restarts"] == 1
        await until(s.stats.changed, lambda: s.stats.readings == 4)
