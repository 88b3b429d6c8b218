"""The janitor: history entries deleted in batches, abandoned prompts taken out of ComfyUI and cleaned up when they
end, even when ComfyUI answers only later."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.pipeline.janitor import Janitor
from tests.unit.fake_comfy import FakeComfy, output_entry


@pytest.fixture
def comfy() -> FakeComfy:
    return FakeComfy()


@pytest.fixture
async def janitor(comfy: FakeComfy, output_dir: Path) -> AsyncIterator[Janitor]:
    janitor = Janitor(cast(ComfyClient, comfy), output_dir)
    task = asyncio.create_task(janitor.run())
    yield janitor
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ended(prompt_id: str) -> dict[str, Any]:
    return {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}


async def test_history_entries_ending_during_a_delete_go_in_one_batch_after_it(
    comfy: FakeComfy, janitor: Janitor
) -> None:
    comfy.history_deletes_go.clear()
    janitor.forget("a")
    await comfy.until(lambda: comfy.named("delete_history") == [["a"]])
    for prompt_id in ("b", "c", "d"):
        janitor.forget(prompt_id)
    comfy.history_deletes_go.set()

    await comfy.until(lambda: len(comfy.named("delete_history:answered")) == 2)
    assert comfy.named("delete_history") == [["a"], ["b", "c", "d"]]


async def test_a_failed_history_delete_is_sent_again_with_the_next_batch(comfy: FakeComfy, janitor: Janitor) -> None:
    comfy.answering = False
    janitor.forget("a")
    await comfy.until(lambda: comfy.named("delete_history:answered") == [["a"]])
    comfy.answering = True
    janitor.forget("b")

    await comfy.until(lambda: ["a", "b"] in comfy.named("delete_history:answered"))


async def test_a_pending_abandoned_prompt_leaves_the_queue_and_is_forgotten(comfy: FakeComfy, janitor: Janitor) -> None:
    comfy.pending = {"p", "other"}
    janitor.abandon("p")
    await comfy.until(lambda: comfy.named("delete_from_queue") == [["p"]])
    assert comfy.pending == {"other"}
    assert comfy.named("interrupt") == []

    janitor.observe(comfy.running, comfy.pending)  # the next watchdog tick: gone, and it never ran
    await comfy.until(lambda: janitor.abandoned == 0)
    assert comfy.named("history") == ["p"]


async def test_a_running_abandoned_prompt_is_interrupted_and_its_late_outputs_and_history_deleted(
    comfy: FakeComfy, janitor: Janitor, output_dir: Path
) -> None:
    comfy.running = {"p"}
    janitor.abandon("p")
    await comfy.until(lambda: comfy.named("interrupt") == ["p"])

    # The prompt still wrote a file before it stopped; ComfyUI then reports its end.
    (output_dir / "late_00001_.png").write_bytes(b"png")
    comfy.running = set()
    comfy.history_entries["p"] = output_entry("late_00001_.png")
    janitor.on_event(ended("p"))

    await comfy.until(lambda: janitor.abandoned == 0 and "p" not in comfy.history_entries)
    assert list(output_dir.iterdir()) == []


async def test_an_abandoned_prompt_is_cleaned_up_once_a_stopped_comfyui_answers_again(
    comfy: FakeComfy, janitor: Janitor, output_dir: Path
) -> None:
    comfy.answering = False  # stopped (SIGSTOP): nothing can be done now
    comfy.pending = {"p"}
    janitor.abandon("p")
    await comfy.until(lambda: comfy.named("delete_from_queue") == [["p"]])
    assert janitor.abandoned == 1

    # Resumed (SIGCONT): it ran the prompt before the janitor's next attempt.
    comfy.answering = True
    comfy.pending = set()
    (output_dir / "resumed_00001_.png").write_bytes(b"png")
    comfy.history_entries["p"] = output_entry("resumed_00001_.png")
    janitor.observe(comfy.running, comfy.pending)

    await comfy.until(lambda: janitor.abandoned == 0 and "p" not in comfy.history_entries)
    assert list(output_dir.iterdir()) == []


async def test_a_restart_of_comfyui_forgets_what_was_left_to_clean(comfy: FakeComfy, output_dir: Path) -> None:
    comfy.answering = False
    janitor = Janitor(cast(ComfyClient, comfy), output_dir)
    janitor.abandon("p")
    janitor.forget("q")

    janitor.reset()  # the new ComfyUI has neither the prompt nor the entry

    assert janitor.abandoned == 0
    comfy.answering = True
    task = asyncio.create_task(janitor.run())
    try:
        janitor.forget("z")
        await comfy.until(lambda: comfy.named("delete_history:answered"))
    finally:
        task.cancel()
    assert comfy.named("delete_history") == [["z"]]
    assert comfy.named("delete_from_queue") == []


async def test_abandoned_prompts_are_bounded(comfy: FakeComfy, output_dir: Path) -> None:
    janitor = Janitor(cast(ComfyClient, comfy), output_dir, max_abandoned=3)
    for prompt_id in "abcde":
        janitor.abandon(prompt_id)

    assert janitor.abandoned == 3


async def test_a_prompt_that_reaches_the_queue_after_its_delete_is_taken_out_again(
    comfy: FakeComfy, janitor: Janitor
) -> None:
    janitor.abandon("p")  # its submission is still on the way: the delete finds nothing
    await comfy.until(lambda: comfy.named("delete_from_queue") == [["p"]])

    comfy.pending = {"p"}  # then ComfyUI queues it
    janitor.observe(comfy.running, comfy.pending)

    await comfy.until(lambda: comfy.named("delete_from_queue") == [["p"], ["p"]])
    assert comfy.pending == set()


async def test_a_running_prompt_that_ignores_its_interrupt_past_the_grace_is_reported(
    comfy: FakeComfy, output_dir: Path
) -> None:
    now = [100.0]
    janitor = Janitor(cast(ComfyClient, comfy), output_dir, interrupt_grace_s=30, clock=lambda: now[0])
    task = asyncio.create_task(janitor.run())
    try:
        comfy.running = {"stuck"}
        janitor.abandon("stuck")
        await comfy.until(lambda: comfy.named("interrupt") == ["stuck"])

        now[0] += 29
        assert janitor.observe(comfy.running, comfy.pending) is None  # within the grace: a node may finish
        now[0] += 1
        cause = janitor.observe(comfy.running, comfy.pending)
    finally:
        task.cancel()
    assert cause == "prompt stuck ignored its interrupt for 30s"


async def test_a_pending_abandoned_prompt_is_never_reported_as_stuck(comfy: FakeComfy, output_dir: Path) -> None:
    now = [100.0]
    janitor = Janitor(cast(ComfyClient, comfy), output_dir, interrupt_grace_s=30, clock=lambda: now[0])
    comfy.answering = False  # never taken out: it stays pending
    comfy.pending = {"p"}
    janitor.abandon("p")

    now[0] += 3600
    assert janitor.observe(comfy.running, comfy.pending) is None


async def test_an_entry_not_yet_written_is_deleted_once_comfyui_says_it_is(comfy: FakeComfy, janitor: Janitor) -> None:
    # A job finished on execution_success: ComfyUI writes the history entry a moment later.
    janitor.forget("a", written=False)
    janitor.forget("b")
    await comfy.until(lambda: comfy.named("delete_history:answered") == [["b"]])

    janitor.on_event(ended("a"))

    await comfy.until(lambda: comfy.named("delete_history:answered") == [["b"], ["a"]])


async def test_an_entry_not_yet_written_is_deleted_after_two_ticks_without_its_prompt_running(
    comfy: FakeComfy, janitor: Janitor
) -> None:
    # The closing message was missed (the websocket dropped): the queue says when the entry is there. The first
    # tick's view of the queue may predate the prompt, so it takes two; a tick that sees it running starts over.
    janitor.forget("a", written=False)
    janitor.observe(set(), set())
    janitor.observe({"a"}, set())
    janitor.observe(set(), set())
    await asyncio.sleep(0)
    assert comfy.named("delete_history") == []

    janitor.observe(set(), set())

    await comfy.until(lambda: comfy.named("delete_history:answered") == [["a"]])


async def test_a_restart_of_comfyui_forgets_the_entries_it_had_not_written(comfy: FakeComfy, janitor: Janitor) -> None:
    janitor.forget("a", written=False)
    janitor.reset()

    janitor.on_event(ended("a"))
    janitor.forget("b")

    await comfy.until(lambda: comfy.named("delete_history:answered") == [["b"]])


async def test_history_deletes_wait_a_moment_and_go_together(comfy: FakeComfy, output_dir: Path) -> None:
    janitor = Janitor(cast(ComfyClient, comfy), output_dir, history_delay_s=0.05)
    task = asyncio.create_task(janitor.run())
    try:
        janitor.forget("a")
        await asyncio.sleep(0)
        janitor.forget("b")
        await asyncio.sleep(0)
        assert comfy.named("delete_history") == []  # not while a client may be waiting on what just ended

        await comfy.until(lambda: comfy.named("delete_history:answered") == [["a", "b"]])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
