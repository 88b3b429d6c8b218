"""The ComfyUI child's startup probe: answers are noticed at once, within the reference's deadline."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from comfyui_api.comfy.process import ComfyProcess, child_environment
from comfyui_api.errors import StartupError

# A child that runs until stopped, standing in for a ComfyUI that is booting.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


async def test_the_probe_repeats_until_it_answers_however_long_the_interval() -> None:
    process = ComfyProcess(SLEEPER, {})
    await process.launch()
    answers = iter([False, False, True])
    calls = 0

    async def probe() -> bool:
        nonlocal calls
        calls += 1
        return next(answers)

    try:
        # An interval of a minute: the probe still goes out again well before it ends.
        await process.wait_ready(probe, interval_s=60.0, max_tries=20)
    finally:
        await process.stop()
    assert calls == 3


async def test_no_answer_within_interval_times_tries_fails_startup() -> None:
    process = ComfyProcess(SLEEPER, {})
    await process.launch()

    async def probe() -> bool:
        return False

    try:
        with pytest.raises(StartupError, match=r"^ComfyUI did not start after 0\.3 seconds$"):
            await process.wait_ready(probe, interval_s=0.1, max_tries=3)
    finally:
        await process.stop()


async def test_a_child_that_exits_fails_startup_at_once() -> None:
    process = ComfyProcess([sys.executable, "-c", "raise SystemExit(3)"], {})
    await process.launch()

    async def probe() -> bool:
        return False

    with pytest.raises(StartupError, match="exited with code 3 before it answered"):
        await process.wait_ready(probe, interval_s=60.0, max_tries=20)


async def test_stop_ends_the_whole_process_group() -> None:
    """CMD may be a script: its children must not outlive it (they would hold ComfyUI's port and the GPU)."""
    process = ComfyProcess(["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(300)' & wait"], {})
    await process.launch()
    assert process.pid is not None
    shell = psutil.Process(process.pid)
    child = wait_for_child(shell)
    await process.stop(timeout_s=10)
    assert not shell.is_running()
    child.wait(timeout=10)  # raises if it is still running
    assert not child.is_running()


def wait_for_child(parent: psutil.Process) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = parent.children()
        if children:
            return children[0]
        time.sleep(0.02)
    raise AssertionError("the script started no child")


def test_comfyui_gets_the_environment_without_this_servers_api_keys() -> None:
    env = child_environment(
        {"API_KEYS": "k1,k2", "HF_TOKEN": "hf_x", "PATH": "/usr/bin"}, address="127.0.0.1", port=8188
    )

    assert "API_KEYS" not in env
    assert env["HF_TOKEN"] == "hf_x"  # custom nodes may download from the Hub themselves
    assert env["COMFYUI_PORT_HOST"] == "8188"
