"""Background tasks are owned: a death is logged, and a critical one is reported so the server stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from comfyui_api.tasks import TaskOwner


async def fail(message: str) -> None:
    raise RuntimeError(message)


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_critical_task_that_dies_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    reported: asyncio.Queue[str] = asyncio.Queue()
    owner = TaskOwner(reported.put_nowait)

    with caplog.at_level(logging.CRITICAL, logger="comfyui_api.tasks"):
        owner.spawn(fail("the socket went away"), "watchdog", critical=True)
        reason = await asyncio.wait_for(reported.get(), 10)

    assert reason == "watchdog died: RuntimeError: the socket went away"
    [record] = caplog.records
    assert record.getMessage() == "a background task died"
    assert record.task == "watchdog"  # type: ignore[attr-defined]
    assert record.exc_info is not None


async def test_a_one_off_task_that_fails_is_logged_but_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    reported: list[str] = []
    owner = TaskOwner(reported.append)
    task = asyncio.create_task(fail("no such model"), name="manifest-after-start")

    with caplog.at_level(logging.CRITICAL, logger="comfyui_api.tasks"):
        owner.watch(task, critical=False)
        await asyncio.gather(task, return_exceptions=True)

    assert reported == []
    assert [record.getMessage() for record in caplog.records] == ["a background task failed"]


async def test_close_cancels_quietly(caplog: pytest.LogCaptureFixture) -> None:
    reported: list[str] = []
    owner = TaskOwner(reported.append)
    owner.spawn(forever(), "comfy-events", critical=True)
    owner.spawn(forever(), "janitor", critical=True)

    with caplog.at_level(logging.DEBUG, logger="comfyui_api.tasks"):
        await owner.close()

    assert reported == []
    assert caplog.records == []
