"""PromptRunner's decisions on what ComfyUI answers: a prompt that completes, is rejected, fails, times out, is
interrupted, or is lost when ComfyUI exits; and a job's end that a cancelled caller does not cut short.

ComfyUI is FakeComfy (tests/unit/fake_comfy.py): the test plays its executor, ending each prompt with a history entry
and the websocket's end-of-prompt event, so every outcome is reached in process and on cue. The real ComfyUI runs
the same pipeline end to end in tests/test_prompt.py, test_interrupt.py, test_deadlines.py and test_supervision.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfyui_api.errors import ComfyUnavailable, ExecutionFailed, PromptInterrupted, PromptRejected, PromptTimeout
from comfyui_api.pipeline.jobs import JobState
from tests.unit.fake_comfy import failed, saved
from tests.unit.fake_pipeline import OUTPUT, REQUEST_ID, Pipeline, pipeline, request


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with pipeline(tmp_path) as built:
        yield built


async def test_a_completed_prompt_gives_its_outputs_and_stats_and_leaves_nothing_behind(p: Pipeline) -> None:
    job = await p.runner.start(request())
    assert job.state is JobState.QUEUED
    (queued,) = p.comfy.named("queue_prompt")
    # Queued under this server's websocket client id, so that its events come back on that channel.
    assert queued["client_id"] == p.events.client_id
    assert queued["prompt_id"] == job.prompt_id
    assert queued["prompt"]["9"]["inputs"]["filename_prefix"] == f"{REQUEST_ID}_out"

    finishing = asyncio.create_task(p.runner.finish(job))
    p.comfy.emit("execution_start", {"prompt_id": job.prompt_id})
    p.comfy.emit("executing", {"node": "9", "prompt_id": job.prompt_id})
    p.comfy.emit("executed", {"node": "9", "prompt_id": job.prompt_id})
    p.comfy.end(job.prompt_id, saved(p.output_dir, OUTPUT))
    await finishing

    assert [(output.node_id, output.name) for output in job.outputs] == [("9", OUTPUT)]
    assert set(job.stats) == {"comfy_execution", "preprocess_time", "comfy_round_trip_time", "postprocess_time"}
    execution = job.stats["comfy_execution"]
    assert set(execution["nodes"]) == {"9"}
    assert execution["duration"] == execution["end"] - execution["start"] >= 0

    await p.runner.close(job)
    assert p.jobs.get(REQUEST_ID) is None
    assert not (p.output_dir / OUTPUT).exists()
    await p.comfy.until(lambda: [job.prompt_id] in p.comfy.named("delete_history:answered"))


async def test_a_success_the_websocket_reported_in_full_is_collected_without_a_history_read(p: Pipeline) -> None:
    job = await p.runner.start(request())
    finishing = asyncio.create_task(p.runner.finish(job))
    entry = saved(p.output_dir, OUTPUT)
    p.comfy.report(job.prompt_id, entry)
    await finishing

    assert [(output.node_id, output.name) for output in job.outputs] == [("9", OUTPUT)]
    assert p.comfy.named("history") == []
    await p.runner.close(job)
    assert not (p.output_dir / OUTPUT).exists()
    # Its history entry is not there yet: deleted once ComfyUI has written it.
    assert p.comfy.named("delete_history") == []
    p.comfy.end(job.prompt_id, entry)
    await p.comfy.until(lambda: [job.prompt_id] in p.comfy.named("delete_history:answered"))


async def test_a_prompt_id_chosen_by_an_older_comfyui_is_followed(p: Pipeline) -> None:
    p.comfy.chosen_id = "chosen-by-comfyui"
    job = await p.runner.start(request())
    assert job.prompt_id == "chosen-by-comfyui"

    p.comfy.end("chosen-by-comfyui", saved(p.output_dir, OUTPUT))
    await p.runner.finish(job)
    assert [output.name for output in job.outputs] == [OUTPUT]
    await p.runner.close(job)


async def test_a_prompt_comfyui_rejects_is_a_400_with_its_node_errors(p: Pipeline) -> None:
    node_errors = {"9": {"errors": [{"type": "required_input_missing", "message": "Required input is missing"}]}}
    p.comfy.rejection = PromptRejected("Prompt outputs failed validation", node_errors=node_errors)

    with pytest.raises(PromptRejected) as rejected:
        await p.runner.start(request())

    assert rejected.value.status_code == 400
    assert rejected.value.extra == {"node_errors": node_errors}
    assert len(p.jobs) == 0  # the id is free for the next request
    assert p.janitor.abandoned == 0  # nothing of it reached ComfyUI's queue


async def test_an_execution_error_fails_the_job_and_deletes_its_partial_outputs(p: Pipeline) -> None:
    job = await p.runner.start(request())
    entry = saved(p.output_dir, OUTPUT)
    p.comfy.end(
        job.prompt_id,
        failed(
            entry,
            "execution_error",
            node_id="9",
            node_type="SaveImage",
            exception_type="RuntimeError",
            exception_message="out of memory",
        ),
    )

    with pytest.raises(ExecutionFailed) as failure:
        await p.runner.finish(job)

    assert failure.value.message == "Prompt execution failed at node 9 (SaveImage): RuntimeError: out of memory"
    assert failure.value.extra["node_id"] == "9"
    assert job.closed
    assert not (p.output_dir / OUTPUT).exists()
    await p.comfy.until(lambda: [job.prompt_id] in p.comfy.named("delete_history:answered"))


async def test_prompt_timeout_fails_with_504_and_hands_the_prompt_to_the_janitor(tmp_path: Path) -> None:
    async with pipeline(tmp_path, prompt_timeout_s=60) as p:
        job = await p.runner.start(request())
        loop = asyncio.get_running_loop()
        assert job.deadline is not None and loop.time() < job.deadline <= loop.time() + 60
        # The timer is asyncio's: rather than wait a minute, the deadline is moved to now.
        job.deadline = loop.time()

        with pytest.raises(PromptTimeout) as timeout:
            await p.runner.finish(job)

        assert timeout.value.status_code == 504
        assert "PROMPT_TIMEOUT_S=60s" in timeout.value.message
        assert p.jobs.get(REQUEST_ID) is None
        # Still queued in ComfyUI: the janitor takes it out.
        await p.comfy.until(lambda: [job.prompt_id] in p.comfy.named("delete_from_queue"))
        assert job.prompt_id not in p.comfy.pending


async def test_an_interrupt_while_queued_takes_the_prompt_out_of_the_queue(p: Pipeline) -> None:
    job = await p.runner.start(request())
    assert await p.runner.interrupt("someone-else") is False

    assert await p.runner.interrupt(REQUEST_ID) is True

    assert p.comfy.named("delete_from_queue") == [[job.prompt_id]]
    assert p.comfy.named("interrupt") == []  # it was not running: nothing else is interrupted
    with pytest.raises(PromptInterrupted):
        await p.runner.finish(job)
    assert p.jobs.get(REQUEST_ID) is None


async def test_an_interrupt_while_running_interrupts_that_prompt(p: Pipeline) -> None:
    job = await p.runner.start(request())
    p.comfy.pending.discard(job.prompt_id)
    p.comfy.running.add(job.prompt_id)

    assert await p.runner.interrupt(REQUEST_ID) is True

    assert p.comfy.named("interrupt") == [job.prompt_id]
    p.comfy.end(job.prompt_id, failed({}, "execution_interrupted", node_id="9", node_type="SaveImage"))
    with pytest.raises(PromptInterrupted) as interrupted:
        await p.runner.finish(job)
    assert interrupted.value.extra == {"node_id": "9", "node_type": "SaveImage"}


async def test_comfyui_exiting_fails_the_queued_job_with_503_when_its_attempts_are_spent(tmp_path: Path) -> None:
    async with pipeline(tmp_path, job_max_attempts=1) as p:
        job = await p.runner.start(request())
        finishing = asyncio.create_task(p.runner.finish(job))

        exited = ComfyUnavailable("ComfyUI exited with code 1 while the prompt was queued or running")
        p.jobs.fail_in_comfy(exited)

        with pytest.raises(ComfyUnavailable) as failure:
            await finishing
        assert failure.value is exited
        assert failure.value.status_code == 503
        assert p.jobs.get(REQUEST_ID) is None


async def test_a_job_comfyui_exits_under_is_queued_again_once_it_is_back_and_keeps_why(p: Pipeline) -> None:
    job = await p.runner.start(request())
    first = job.prompt_id
    finishing = asyncio.create_task(p.runner.finish(job))
    p.comfy.emit("execution_start", {"prompt_id": first})
    changed = asyncio.Event()
    job.record_changed = lambda _: changed.set()

    # ComfyUI exits (the lifecycle clears comfy_up and fails what it held), then comes back.
    p.state.comfy_up.clear()
    p.jobs.fail_in_comfy(ComfyUnavailable("ComfyUI exited with code -9 while the prompt was queued or running"))
    async with asyncio.timeout(10):
        while job.record.attempts != 2:
            changed.clear()
            await changed.wait()
    assert job.record.status.value == "queued" and job.record.started_at is None
    assert [entry["error"] for entry in job.record.attempt_errors] == [
        "ComfyUI exited with code -9 while the prompt was queued or running"
    ]
    assert p.queued() == [first]  # nothing is sent while ComfyUI is down
    p.state.comfy_up.set()

    await p.comfy.until(lambda: len(p.queued()) == 2)
    second = p.queued()[1]
    assert second != first and job.prompt_id == second
    p.comfy.end(second, saved(p.output_dir, OUTPUT))
    await finishing
    assert [output.name for output in job.outputs] == [OUTPUT]
    await p.runner.close(job)


async def test_a_job_comfyui_fails_on_every_attempt_fails_with_each_attempts_error(p: Pipeline) -> None:
    job = await p.runner.start(request())
    finishing = asyncio.create_task(p.runner.finish(job))
    p.jobs.fail_in_comfy(ComfyUnavailable("first death"))
    await p.comfy.until(lambda: len(p.queued()) == 2)
    p.jobs.fail_in_comfy(ComfyUnavailable("second death"))

    with pytest.raises(ComfyUnavailable, match="second death"):
        await finishing
    assert job.record.attempts == 2
    assert [entry["error"] for entry in job.record.attempt_errors] == ["first death"]
    assert job.record.error is not None and job.record.error["error"] == "second death"


async def test_a_submission_that_fails_is_retried_once_comfyui_answers_and_its_prompt_abandoned(p: Pipeline) -> None:
    p.comfy.answering = False  # the connection breaks: the submission fails, and ComfyUI does not answer probes
    starting = asyncio.create_task(p.runner.start(request()))
    await p.comfy.until(lambda: p.comfy.named("probe"))
    (first,) = p.queued()
    assert not starting.done()  # the retry waits for ComfyUI to answer again
    p.comfy.answering = True

    job = await starting
    assert p.queued() == [first, job.prompt_id] and job.record.attempts == 2
    # Whatever ComfyUI made of the first submission is taken out of it.
    await p.comfy.until(lambda: [first] in p.comfy.named("delete_from_queue"))
    p.comfy.end(job.prompt_id, saved(p.output_dir, OUTPUT))
    await p.runner.finish(job)
    await p.runner.close(job)


async def test_an_interrupted_job_is_not_queued_again(p: Pipeline) -> None:
    job = await p.runner.start(request())
    finishing = asyncio.create_task(p.runner.finish(job))
    job.interrupt_requested = True
    p.jobs.fail_in_comfy(ComfyUnavailable("ComfyUI exited"))
    with pytest.raises(ComfyUnavailable):
        await finishing
    assert len(p.queued()) == 1


async def test_close_deletes_the_files_even_when_its_caller_is_cancelled(p: Pipeline) -> None:
    # More files than are deleted inline: the deletion runs in a worker thread the caller awaits.
    names = [f"{REQUEST_ID}_out_{index:05}_.png" for index in range(1, 13)]
    job = await p.runner.start(request())
    p.comfy.end(job.prompt_id, saved(p.output_dir, *names))
    await p.runner.finish(job)

    # Cancelled at its first suspension: the await on the deletion.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await p.runner.close(job)

    await p.runner.aclose()
    assert [name for name in names if (p.output_dir / name).exists()] == []
    assert p.jobs.get(REQUEST_ID) is None
