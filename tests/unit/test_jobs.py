"""Jobs follow ComfyUI's events; the registry routes events by prompt id and tracks idleness."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from comfyui_api.errors import ApiError, ComfyUnavailable, Conflict
from comfyui_api.pipeline.jobs import Job, JobRegistry, JobState


def _event(event_type: str, prompt_id: str, **data: Any) -> dict[str, Any]:
    return {"type": event_type, "data": {"prompt_id": prompt_id, **data}}


def test_execution_start_records_the_start_time() -> None:
    job = Job(id="job1")

    job.on_event("execution_start", {"prompt_id": job.prompt_id})

    assert job.exec_start is not None
    assert job.exec_start >= job.received_at
    assert not job.wake.is_set()


def test_executing_a_node_records_its_first_start_without_waking() -> None:
    job = Job(id="job1")

    job.on_event("executing", {"node": 5})
    first = job.node_starts["5"]
    job.on_event("executing", {"node": "5"})

    assert job.node_starts == {"5": first}
    assert not job.wake.is_set()


def test_executing_no_node_wakes_the_job() -> None:
    job = Job(id="job1")

    job.on_event("executing", {"node": None})

    assert job.wake.is_set()
    assert job.node_starts == {}


def test_executed_nodes_are_kept_in_execution_order() -> None:
    job = Job(id="job1")

    for node in ["9", "3", "9", "12"]:
        job.on_event("executed", {"node": node, "output": {}})

    assert list(job.executed_nodes) == ["9", "3", "12"]
    assert not job.wake.is_set()


@pytest.mark.parametrize("event_type", ["execution_success", "execution_error", "execution_interrupted"])
def test_end_events_not_preceded_by_a_start_record_the_end_without_waking_the_job(event_type: str) -> None:
    # ComfyUI writes the history entry only after these; `executing` with no node says it is there.
    job = Job(id="job1")

    job.on_event(event_type, {"prompt_id": job.prompt_id})

    assert job.exec_end is not None
    assert job.reported is None
    assert not job.wake.is_set()


def _run(job: Job, *, start_on: int, end_on: int, end: str = "execution_success") -> None:
    job.on_event("execution_start", {"prompt_id": job.prompt_id}, start_on)
    images = [{"filename": "a.png", "subfolder": "", "type": "output"}]
    job.on_event("executed", {"node": "9", "output": {"images": images}, "prompt_id": job.prompt_id}, start_on)
    job.on_event("executed", {"node": "4", "output": None, "prompt_id": job.prompt_id}, start_on)
    job.on_event(end, {"prompt_id": job.prompt_id, "timestamp": 5}, end_on)


def test_a_success_seen_on_the_connection_of_its_start_is_the_history_entry_and_wakes_the_job() -> None:
    job = Job(id="job1")

    _run(job, start_on=3, end_on=3)

    assert job.wake.is_set()
    assert job.reported is not None
    assert job.reported["outputs"] == {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    assert job.reported["status"]["status_str"] == "success"
    assert not job.history_written


def test_a_success_after_a_reconnect_waits_for_the_history_entry() -> None:
    # Messages between the two connections may have been lost: the history says what the run made.
    job = Job(id="job1")

    _run(job, start_on=3, end_on=4)

    assert job.reported is None
    assert not job.wake.is_set()


@pytest.mark.parametrize("event_type", ["execution_error", "execution_interrupted"])
def test_a_failure_is_read_from_the_history_entry(event_type: str) -> None:
    job = Job(id="job1")

    _run(job, start_on=1, end_on=1, end=event_type)

    assert job.reported is None
    assert not job.wake.is_set()


def test_the_closing_executing_message_says_the_history_entry_is_written() -> None:
    job = Job(id="job1")

    job.on_event("executing", {"node": None})

    assert job.history_written


def test_a_requeued_job_forgets_what_its_last_attempt_reported() -> None:
    job = Job(id="job1")
    _run(job, start_on=1, end_on=1)
    job.on_event("executing", {"node": None})

    job.requeue(ComfyUnavailable("gone"))

    assert job.reported is None
    assert job.reported_outputs == {}
    assert job.started_on is None
    assert not job.history_written
    assert not job.wake.is_set()


@pytest.mark.parametrize("event_type", ["progress", "execution_cached", "status", "something_new"])
def test_other_events_change_nothing(event_type: str) -> None:
    job = Job(id="job1")

    job.on_event(event_type, {"node": "3", "value": 1, "max": 2})

    assert job.exec_start is None
    assert job.exec_end is None
    assert job.node_starts == {}
    assert job.executed_nodes == {}
    assert not job.wake.is_set()


def test_the_first_failure_wins_and_wakes_the_job() -> None:
    job = Job(id="job1")
    first, second = ApiError("first"), ApiError("second")

    job.fail(first)
    job.fail(second)

    assert job.failure is first
    assert job.wake.is_set()


def test_jobs_get_distinct_prompt_ids() -> None:
    assert Job(id="a").prompt_id != Job(id="b").prompt_id


def test_registry_finds_jobs_by_id_and_prompt_id() -> None:
    registry = JobRegistry()
    job = Job(id="job1", prompt_id="p1")

    registry.add(job)

    assert len(registry) == 1
    assert registry.get("job1") is job
    assert registry.by_prompt_id("p1") is job
    assert registry.get("other") is None
    assert registry.by_prompt_id("other") is None


def test_adding_a_duplicate_id_is_a_conflict() -> None:
    registry = JobRegistry()
    registry.add(Job(id="job1"))

    with pytest.raises(Conflict) as caught:
        registry.add(Job(id="job1"))

    assert caught.value.status_code == 409
    assert caught.value.location == "id"
    assert "job1" in caught.value.message
    assert len(registry) == 1


def test_removing_a_job_forgets_both_keys_and_is_idempotent() -> None:
    registry = JobRegistry()
    job = Job(id="job1", prompt_id="p1")
    registry.add(job)

    registry.remove(job)
    registry.remove(job)

    assert len(registry) == 0
    assert registry.get("job1") is None
    assert registry.by_prompt_id("p1") is None


def test_dispatch_routes_an_event_to_the_job_with_that_prompt_id() -> None:
    registry = JobRegistry()
    target, other = Job(id="a", prompt_id="p-a"), Job(id="b", prompt_id="p-b")
    registry.add(target)
    registry.add(other)

    registry.dispatch(_event("executed", "p-a", node="9"))
    registry.dispatch(_event("executing", "p-a", node=None))

    assert list(target.executed_nodes) == ["9"]
    assert target.wake.is_set()
    assert other.executed_nodes == {}
    assert not other.wake.is_set()


def test_dispatch_tells_a_job_which_connection_each_event_came_on() -> None:
    connection = 1
    registry = JobRegistry(connection=lambda: connection)
    job = Job(id="a", prompt_id="p-a")
    registry.add(job)

    registry.dispatch(_event("execution_start", "p-a"))
    connection = 2
    registry.dispatch(_event("execution_success", "p-a"))

    assert job.started_on == 1
    assert job.reported is None


@pytest.mark.parametrize(
    "event",
    [
        _event("execution_success", "unknown"),
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
        {"type": "execution_success", "data": {"prompt_id": None}},
    ],
)
def test_dispatch_ignores_events_for_unknown_prompts(event: dict[str, Any]) -> None:
    registry = JobRegistry()
    job = Job(id="a", prompt_id="p-a")
    registry.add(job)

    registry.dispatch(event)

    assert not job.wake.is_set()
    assert job.exec_end is None


class _NoScan(dict[str, Job]):
    """A job table that fails the test if anything walks it."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("dispatch scanned every job")

    def values(self) -> Any:
        raise AssertionError("dispatch scanned every job")

    def items(self) -> Any:
        raise AssertionError("dispatch scanned every job")


def test_dispatch_looks_the_job_up_without_scanning_the_registry() -> None:
    registry = JobRegistry()
    jobs = [Job(id=f"job{index}", prompt_id=f"p{index}") for index in range(1000)]
    for job in jobs:
        registry.add(job)
    registry._by_id = _NoScan(registry._by_id)
    registry._by_prompt = _NoScan(registry._by_prompt)

    registry.dispatch(_event("executing", "p500", node=None))
    registry.dispatch(_event("executing", "unknown", node=None))

    assert jobs[500].wake.is_set()
    assert sum(job.wake.is_set() for job in jobs) == 1


def test_fail_in_comfy_fails_only_jobs_comfyui_has_or_is_being_given() -> None:
    registry = JobRegistry()
    jobs = {state: Job(id=state.value, state=state) for state in JobState}
    for job in jobs.values():
        registry.add(job)
    error = ComfyUnavailable("ComfyUI exited")

    registry.fail_in_comfy(error)

    failed = {state for state, job in jobs.items() if job.failure is error and job.wake.is_set()}
    assert failed == {JobState.SUBMITTING, JobState.QUEUED}
    assert jobs[JobState.PREPROCESSING].failure is None
    assert jobs[JobState.COLLECTING].failure is None


def test_in_state_and_count_filter_by_state() -> None:
    registry = JobRegistry()
    registry.add(Job(id="a", state=JobState.QUEUED))
    registry.add(Job(id="b", state=JobState.QUEUED))
    registry.add(Job(id="c", state=JobState.COLLECTING))

    assert registry.count(JobState.QUEUED) == 2
    assert registry.count(JobState.SUBMITTING) == 0
    assert {job.id for job in registry.in_state(JobState.QUEUED, JobState.COLLECTING)} == {"a", "b", "c"}


async def test_wait_idle_returns_true_when_there_are_no_jobs() -> None:
    assert await JobRegistry().wait_idle(5) is True


async def test_wait_idle_with_a_zero_timeout_is_true_when_there_are_no_jobs() -> None:
    assert await JobRegistry().wait_idle(0) is True


async def test_wait_idle_times_out_while_a_job_runs() -> None:
    registry = JobRegistry()
    registry.add(Job(id="a"))

    assert await registry.wait_idle(0.01) is False


async def test_wait_idle_returns_when_the_last_job_is_removed() -> None:
    registry = JobRegistry()
    first, second = Job(id="a"), Job(id="b")
    registry.add(first)
    registry.add(second)
    waiter = asyncio.create_task(registry.wait_idle(5))

    registry.remove(first)
    await asyncio.sleep(0)  # let the waiter run: it must still be waiting for the second job
    assert not waiter.done()
    registry.remove(second)

    assert await waiter is True
