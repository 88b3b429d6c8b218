"""BASE, which reference deployments set to `ai-dock`: accepted, without effect, said once at startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def startup_lines(tmp_path: Path, **env: str) -> list[dict[str, str]]:
    """The log of `comfyui-api` started with a CMD that cannot launch: it gets as far as launching ComfyUI."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CMD": "/nonexistent/comfyui",
        "COMFY_HOME": str(tmp_path / "ComfyUI"),
        "WORKFLOW_DIR": str(tmp_path / "workflows"),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "comfyui_api"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("base", ["ai-dock", None])
def test_base_is_accepted_and_said_to_have_no_effect(tmp_path: Path, base: str | None) -> None:
    lines = startup_lines(tmp_path, **({"BASE": base} if base else {}))

    notes = [line for line in lines if line["msg"].startswith("BASE has no effect")]
    assert notes == ([{**notes[0], "level": "info", "base": base}] if base else [])
    # Startup went on to launching ComfyUI: nothing refused the setting.
    assert [line["msg"] for line in lines if line["level"] == "critical"] == [
        "cannot launch CMD '/nonexistent/comfyui': [Errno 2] No such file or directory: '/nonexistent/comfyui'"
    ]
