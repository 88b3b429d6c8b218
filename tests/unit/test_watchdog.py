"""The watchdog's readings of ComfyUI's queue: wedged or not, lost events, a dead event channel."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import cast

import pytest

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.comfy.events import EventStream
from comfyui_api.pipeline.janitor import Janitor
from comfyui_api.pipeline.jobs import Job, JobRegistry, JobState
from comfyui_api.pipeline.watchdog import Watchdog
from tests.unit.fake_comfy import FakeComfy

STALL_S = 60.0


class Events:
    """The parts of EventStream the watchdog reads: whether it is connected, how many messages it brought."""

    def __init__(self) -> None:
        self.connected = True
        self.received = 0
        self.connection_changed = asyncio.Event()
        self.reconnects = 0

    def reconnect(self) -> None:
        self.reconnects += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def no_heal(cause: str) -> None:
    raise AssertionError(f"healed without cause: {cause}")


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs() -> JobRegistry:
    return JobRegistry()


@pytest.fixture
def watchdog(events: Events, clock: Clock, jobs: JobRegistry, output_dir: Path) -> Watchdog:
    comfy = cast(ComfyClient, FakeComfy())
    return Watchdog(
        comfy,
        cast(EventStream, events),
        jobs,
        Janitor(comfy, output_dir),
        stall_timeout_s=STALL_S,
        on_wedged=no_heal,
        clock=clock,
    )


def test_pending_work_with_nothing_running_is_a_wedge_after_the_stall_timeout(
    watchdog: Watchdog, clock: Clock, events: Events
) -> None:
    for _ in range(12):
        assert watchdog.observe(({"a"}, {"b"})) is None  # running: fine however long
        clock.now += 5
    assert watchdog.observe((set(), {"b"})) is None
    clock.now += STALL_S - 1
    events.received += 1
    assert watchdog.observe((set(), {"b"})) is None

    clock.now += 1
    cause = watchdog.observe((set(), {"b"}))

    assert cause is not None
    assert "pending but none running for 60s" in cause


def test_a_quiet_running_prompt_is_never_a_wedge(watchdog: Watchdog, clock: Clock) -> None:
    for _ in range(100):
        assert watchdog.observe(({"long-video"}, {"next"})) is None
        clock.now += 30


def test_an_http_server_that_does_not_answer_is_a_wedge_after_the_stall_timeout(
    watchdog: Watchdog, clock: Clock
) -> None:
    assert watchdog.observe(None) is None
    clock.now += STALL_S / 2
    assert watchdog.observe(None) is None
    clock.now += STALL_S / 2

    cause = watchdog.observe(None)

    assert cause is not None
    assert "has not answered for 60s" in cause


def test_an_answer_restarts_the_clocks(watchdog: Watchdog, clock: Clock) -> None:
    for reading in (None, (set(), {"b"})):
        assert watchdog.observe(reading) is None
        clock.now += STALL_S - 1
        assert watchdog.observe(({"a"}, set())) is None
        clock.now += STALL_S - 1
        assert watchdog.observe(reading) is None


def test_reset_forgets_what_was_seen(watchdog: Watchdog, clock: Clock) -> None:
    assert watchdog.observe(None) is None
    clock.now += STALL_S
    watchdog.reset()  # ComfyUI was restarted

    assert watchdog.observe(None) is None


def test_a_queued_job_whose_prompt_left_the_queue_is_woken(watchdog: Watchdog, jobs: JobRegistry) -> None:
    gone, waiting = Job(id="gone"), Job(id="waiting")
    for job in (gone, waiting):
        job.state = JobState.QUEUED
        jobs.add(job)

    watchdog.observe(({waiting.prompt_id}, set()))

    assert gone.wake.is_set() and gone.missing_from_queue
    assert not waiting.wake.is_set() and not waiting.missing_from_queue


def test_a_queue_that_moves_without_websocket_messages_reconnects_the_websocket(
    watchdog: Watchdog, events: Events
) -> None:
    watchdog.observe(({"a"}, {"b"}))
    events.received += 3
    watchdog.observe(({"b"}, set()))  # moved, with messages: healthy
    watchdog.observe(({"b"}, set()))  # did not move, no messages: a quiet prompt
    assert events.reconnects == 0

    watchdog.observe((set(), set()))  # moved, no message at all

    assert events.reconnects == 1


def test_a_disconnected_websocket_is_not_reconnected_by_the_watchdog(watchdog: Watchdog, events: Events) -> None:
    events.connected = False
    watchdog.observe(({"a"}, set()))
    watchdog.observe((set(), set()))

    assert events.reconnects == 0


async def test_the_loop_calls_on_wedged_with_the_cause_and_ticks_on(events: Events, output_dir: Path) -> None:
    comfy = FakeComfy()
    comfy.answering = False
    causes: list[str] = []
    healed = asyncio.Event()

    async def heal(cause: str) -> None:
        causes.append(cause)
        healed.set()

    client = cast(ComfyClient, comfy)
    watchdog = Watchdog(
        client,
        cast(EventStream, events),
        JobRegistry(),
        Janitor(client, output_dir),
        stall_timeout_s=0.2,
        on_wedged=heal,
    )
    up = asyncio.Event()
    up.set()
    task = asyncio.create_task(watchdog.run(up))
    try:
        await asyncio.wait_for(healed.wait(), 30)
        comfy.answering = True
        answered = len(comfy.named("queue"))
        await asyncio.wait_for(comfy.called.wait(), 30)
        async with asyncio.timeout(30):
            while len(comfy.named("queue")) <= answered:
                comfy.called.clear()
                await comfy.called.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(causes) == 1
    assert "has not answered" in causes[0]
