"""Lifecycle's policy when ComfyUI exits, will not start again, or wedges, and when a critical background task dies.

ComfyUI's process is a stand-in that exits when the test says (or when it is killed), and a launch is ready when
FakeComfy answers its probe; the websocket reader is a stand-in task that dies when the test says. The registry, the
janitor, the runner and the watchdog are the real ones. Real ComfyUI processes are crashed, hung and restarted end
to end in tests/test_supervision.py and tests/test_wedge.py; this covers each decision in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from comfyui_api.comfy.events import EventStream
from comfyui_api.comfy.process import ComfyProcess
from comfyui_api.errors import ComfyUnavailable, StartupError
from comfyui_api.lifecycle import Lifecycle
from comfyui_api.pipeline.delivery import Delivery
from comfyui_api.state import ServerState
from comfyui_api.storage.net import UrlGuard
from comfyui_api.storage.uploads import Uploader
from comfyui_api.webhooks.sender import WebhookSender
from tests.unit.fake_comfy import FakeComfy, saved
from tests.unit.fake_pipeline import Pipeline, pipeline, request


async def until(changed: asyncio.Event, predicate: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Wait, change by change, until `predicate` holds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            changed.clear()
            await changed.wait()


class WatchedState(ServerState):
    """The probes' state, telling the test whenever a flag changes."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name != "changed":
            self.changed.set()


class Process:
    """Stands in for ComfyProcess: it runs until the test ends it with `exit(code)` or the lifecycle kills it, and
    a launch is ready once ComfyUI answers its probe (one probe: the real one retries until a deadline). ComfyUI
    forgets its queue and history when it exits."""

    def __init__(self, comfy: FakeComfy) -> None:
        self._comfy = comfy
        self.launched = False
        self.pid = 4242
        self.launches = 0
        self.kills = 0
        self.changed = asyncio.Event()
        self._exit: asyncio.Future[int] | None = None

    async def launch(self) -> None:
        self.launched = True
        self.launches += 1
        self._exit = asyncio.get_running_loop().create_future()
        self.changed.set()

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], *, interval_s: float, max_tries: int) -> None:
        if not await probe():
            raise StartupError(f"ComfyUI did not start after {max_tries * interval_s:g} seconds")

    async def wait(self) -> int:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    def exit(self, code: int) -> None:
        assert self._exit is not None
        if not self._exit.done():
            self._comfy.exited()
            self._exit.set_result(code)
            self.changed.set()

    async def kill(self) -> None:
        self.kills += 1
        self.exit(-9)

    async def stop(self) -> None:
        if self._exit is not None:
            self.exit(0)


class Events:
    """Stands in for EventStream: connected, and its reader task runs until the test makes it die. Its listeners hear
    FakeComfy's events."""

    def __init__(self) -> None:
        self.client_id = "test-client"
        self.connected = True
        self.received = 0
        self.queue_remaining = 0
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.connection_changed = asyncio.Event()
        self._death = asyncio.Event()
        self._cause = RuntimeError("not dead")

    def reconnect(self) -> None:
        """The watchdog drops a silent channel; this one never goes silent for long."""

    def reconnect_now(self) -> None:
        """The lifecycle cuts a reconnect backoff short; this stand-in has none."""

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self.listeners.append(listener)

    async def run(self) -> None:
        await self._death.wait()
        raise self._cause

    def die(self, cause: Exception) -> None:
        self._cause = cause
        self._death.set()


class Exits:
    """Stands in for the server's request_exit: the codes asked for, and whether /health said healthy at each."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self.requested: list[int] = []
        self.healthy_then: list[bool] = []
        self.changed = asyncio.Event()

    def __call__(self, code: int) -> None:
        self.requested.append(code)
        self.healthy_then.append(self._state.healthy and self._state.failed is None)
        self.changed.set()


class Stats:
    """Stands in for ComfyUI's /system_stats: counts its readings."""

    def __init__(self) -> None:
        self.readings = 0
        self.changed = asyncio.Event()

    async def __call__(self) -> dict[str, Any]:
        self.readings += 1
        self.changed.set()
        return {
            "system": {"comfyui_version": "0.3.75", "pytorch_version": "2.13.0+cpu", "argv": ["main.py", "--secret"]},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 1024, "vram_free": 512}],
        }


@dataclass
class Server:
    lifecycle: Lifecycle
    p: Pipeline
    state: WatchedState
    process: Process
    events: Events
    exits: Exits
    stats: Stats

    async def warmed_up(self, launch: int) -> None:
        """Play ComfyUI for the warmup of launch number `launch`: end its prompt with an output."""
        comfy = self.p.comfy
        await comfy.until(lambda: len(self.p.queued()) == launch)
        comfy.end(self.p.queued()[-1], saved(self.p.output_dir, f"warmup_{launch}.png"))
        await until(self.state.changed, lambda: self.state.warm)


@contextlib.asynccontextmanager
async def server(tmp_path: Path, *, warmup: bool = False, **settings: Any) -> AsyncIterator[Server]:
    """A started Lifecycle (ComfyUI launched and up; its warmup still to run when `warmup`), stopped at the end."""
    if warmup:
        graph = request().graph()
        (tmp_path / "warmup.json").write_text(json.dumps(graph))
        settings["warmup_prompt_file"] = tmp_path / "warmup.json"
    state = WatchedState()
    events = Events()
    async with pipeline(tmp_path, state=state, events=cast(EventStream, events), run_janitor=False, **settings) as p:
        process = Process(p.comfy)
        exits = Exits(state)
        stats = Stats()
        guard = UrlGuard()
        webhooks = WebhookSender(None, 3, guard=guard)
        delivery = Delivery(
            p.runner,
            Uploader(p.storage),
            webhooks,
            output_dir=p.output_dir,
            hf_endpoint=p.settings.hf_endpoint,
            azure_base=None,
            guard=guard,
        )
        lifecycle = Lifecycle(
            p.settings,
            state,
            cast(ComfyProcess, process),
            p.client,
            cast(EventStream, events),
            p.jobs,
            p.runner,
            p.janitor,
            p.storage,
            delivery,
            webhooks,
            None,
            exits,
            system_stats=stats,
        )
        for listener in events.listeners:
            p.comfy.subscribe(listener)
        await lifecycle.start()
        try:
            yield Server(lifecycle, p, state, process, events, exits, stats)
        finally:
            await lifecycle.stop()


async def test_comfyui_exiting_without_always_restart_fails_its_jobs_and_exits(tmp_path: Path) -> None:
    # One attempt: with more, the job would wait for a ComfyUI that does not come back (the exit then ends it).
    async with server(tmp_path, job_max_attempts=1) as s:
        await until(s.state.changed, lambda: s.state.healthy)
        job = await s.p.runner.start(request())
        finishing = asyncio.create_task(s.p.runner.finish(job))

        s.process.exit(1)

        with pytest.raises(ComfyUnavailable, match="ComfyUI exited with code 1"):
            await finishing
        await until(s.exits.changed, lambda: s.exits.requested)
        assert s.exits.requested == [1]
        assert not s.state.comfy_up.is_set()
        assert s.process.launches == 1


async def test_comfyui_exiting_with_always_restart_is_relaunched_and_warmed_up_again(tmp_path: Path) -> None:
    async with server(tmp_path, warmup=True, always_restart_comfyui=True) as s:
        await s.warmed_up(1)
        assert s.state.healthy

        s.process.exit(1)
        await until(s.process.changed, lambda: s.process.launches == 2)
        await s.warmed_up(2)

        assert s.state.comfy_up.is_set()
        assert s.exits.requested == []


async def test_comfyui_that_will_not_restart_makes_the_server_unhealthy_then_exit(tmp_path: Path) -> None:
    async with server(tmp_path, always_restart_comfyui=True) as s:
        await until(s.state.changed, lambda: s.state.healthy)
        s.p.comfy.answering = False  # every relaunch launches a ComfyUI that never answers

        s.process.exit(1)

        await until(s.exits.changed, lambda: s.exits.requested)
        assert (s.exits.requested, s.exits.healthy_then) == ([1], [False])
        assert (s.process.launches, s.process.kills) == (4, 3)  # the first launch, then three tries
        assert not s.state.comfy_up.is_set()


async def test_a_wedge_fails_held_jobs_kills_comfyui_and_relaunches_it_even_without_always_restart(
    tmp_path: Path,
) -> None:
    # A short stall timeout: the watchdog sees the prompt pending with nothing running for that long.
    async with server(tmp_path, comfy_stall_timeout_s=0.2, job_max_attempts=1) as s:
        await until(s.state.changed, lambda: s.state.healthy)
        job = await s.p.runner.start(request())
        assert job.prompt_id in s.p.comfy.pending

        with pytest.raises(ComfyUnavailable) as failure:
            await s.p.runner.finish(job)

        assert failure.value.status_code == 503
        assert "pending but none running" in failure.value.message
        assert "is being restarted; send the request again" in failure.value.message
        await until(s.process.changed, lambda: s.process.launches == 2)
        assert s.process.kills == 1
        await s.state.comfy_up.wait()
        assert s.exits.requested == []


async def test_a_critical_task_dying_fails_the_server_and_exits(tmp_path: Path) -> None:
    async with server(tmp_path) as s:
        await until(s.state.changed, lambda: s.state.healthy)

        s.events.die(RuntimeError("reader crashed"))

        await until(s.exits.changed, lambda: s.exits.requested)
        # Unhealthy (and unready) before the exit is asked for.
        assert (s.exits.requested, s.exits.healthy_then) == ([1], [False])
        assert s.state.failed == "comfy-events died: RuntimeError: reader crashed"


async def test_an_attached_comfyui_is_waited_for_and_its_loss_makes_the_server_unready_never_exit(
    tmp_path: Path,
) -> None:
    # One attempt: the request ComfyUI goes away under fails at once.
    async with server(tmp_path, warmup=True, comfyui_attach=True, job_max_attempts=1) as s:
        await s.warmed_up(1)
        assert s.state.healthy
        job = await s.p.runner.start(request())
        finishing = asyncio.create_task(s.p.runner.finish(job))

        # The sidecar dies: its websocket drops and it stops answering.
        s.events.connected = False
        s.p.comfy.answering = False
        s.p.comfy.exited()

        with pytest.raises(ComfyUnavailable, match="ComfyUI went away"):
            await finishing
        await until(s.state.changed, lambda: not s.state.comfy_up.is_set() and not s.state.warm)
        assert s.state.healthy  # liveness is the server's own: the sidecar's restart must not restart this one
        assert s.state.last_error is not None and s.state.last_error["message"] == "ComfyUI is gone: it does not answer"

        # It comes back: found by polling, warmed up again, counted as a restart; never launched, killed or exited for.
        s.p.comfy.answering = True
        s.events.connected = True
        await s.p.comfy.until(lambda: len(s.p.queued()) == 3)  # the warmup, the request, the warmup again
        s.p.comfy.end(s.p.queued()[-1], saved(s.p.output_dir, "warmup_2.png"))
        await until(s.state.changed, lambda: s.state.warm)
        assert s.state.comfy_up.is_set() and s.state.comfy_restarts == 1
        assert (s.process.launches, s.process.kills, s.exits.requested) == (0, 0, [])


async def test_an_attached_comfyui_found_wedged_is_not_killed_but_waited_for(tmp_path: Path) -> None:
    async with server(tmp_path, comfyui_attach=True, comfy_stall_timeout_s=0.2, job_max_attempts=1) as s:
        await until(s.state.changed, lambda: s.state.healthy)
        job = await s.p.runner.start(request())

        with pytest.raises(ComfyUnavailable, match="stopped working") as failure:
            await s.p.runner.finish(job)

        assert "restarted" not in failure.value.message
        s.p.comfy.pending.clear()  # whoever runs it restarted it
        await until(s.state.changed, lambda: s.state.comfy_restarts == 1 and s.state.warm)
        assert s.state.last_error is not None and s.state.last_error["message"].startswith("ComfyUI is wedged")
        assert (s.process.launches, s.process.kills, s.exits.requested) == (0, 0, [])
