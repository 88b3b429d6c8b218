"""Bring your own ComfyUI: scripts/run-dev.sh given CMD and COMFY_HOME (the test's ComfyUI, standing in for a user's
install) installs no ComfyUI, needs neither node nor npm, and serves prompts through that ComfyUI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from comfyui_api.config import Settings
from tests.support.graphs import solid
from tests.support.paths import REPO
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, wait_until

ServerFactory = Callable[..., ApiServer]


def test_run_dev_launches_a_comfyui_given_by_cmd_and_comfy_home(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server("byo")  # its folders, checkpoint link, ports and CMD; run-dev.sh runs it instead
    # node and npm that leave a mark if anything calls them.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    called = tmp_path / "called"
    for tool in ("node", "npm"):
        (fake_bin / tool).write_text(f"#!/bin/sh\necho {tool} >> {called}\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    # Only the variables a user would set: none of this server's settings leak in from the test's environment.
    settings = {name.upper() for name in Settings.model_fields}
    env = {
        **{name: value for name, value in os.environ.items() if name.upper() not in settings},
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "CMD": server.env["CMD"],
        "COMFY_HOME": server.env["COMFY_HOME"],
        "COMFYUI_PORT_HOST": server.env["COMFYUI_PORT_HOST"],
        "HOST": server.env["HOST"],
        "PORT": server.env["PORT"],
        # This server's job records in the test's folder, not the user's state folder.
        "STATE_DIR": server.env["STATE_DIR"],
        "STARTUP_CHECK_MAX_TRIES": str(int(STARTUP_DEADLINE_S)),
    }
    with open(server.log_path, "ab") as log:
        server.process = subprocess.Popen(
            [str(REPO / "scripts" / "run-dev.sh")], env=env, cwd=server.base, stdout=log, stderr=subprocess.STDOUT
        )
    wait_until(server.healthy, STARTUP_DEADLINE_S, "the server to become healthy", interval_s=0.2)

    response = server.http.post("/prompt", json={"prompt": solid(8, 8), "id": "byo"})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1
    # ComfyUI is the one CMD launched, rooted in COMFY_HOME: its child, answering on COMFYUI_PORT_HOST.
    assert str(server.base) in " ".join(server.comfy_process().cmdline())
    log = server.log_path.read_text()
    assert "[run-dev] launching your ComfyUI" in log
    assert "[install-comfyui]" not in log
    assert not called.exists()
