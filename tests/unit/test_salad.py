"""SaladCloud deletion cost against a loopback stand-in for the node's metadata service: what is PUT and when, one at a
time and always the latest value, and a failing service logged once per streak while the worker lives on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import ValidationError

from comfyui_api.config import Settings, on_saladcloud
from comfyui_api.salad import DeletionCost, queue_remaining
from tests.support.metadata import MetadataService

LOGGER = "comfyui_api.salad"


def status(remaining: Any) -> dict[str, Any]:
    """A websocket `status` message as ComfyUI sends it."""
    return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": "abc"}}


class Changes(logging.Handler):
    """The reporter's log records, and a wake-up for the test on every change it may wait for: the reporter logs each
    PUT's outcome (in its task, before it next yields, so its state is current when the test runs), the service calls
    `notify` from its threads."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.notify()

    def messages(self, level: int, text: str) -> list[logging.LogRecord]:
        return [record for record in self.records if record.levelno == level and text in record.getMessage()]

    def notify(self) -> None:
        # Scheduled, never immediate: a change made between the test's check and its clear() still wakes it.
        self._loop.call_soon_threadsafe(self._changed.set)

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def changes() -> AsyncIterator[Changes]:
    logger = logging.getLogger(LOGGER)
    handler, level = Changes(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.asynccontextmanager
async def reporting(url: str, **options: float) -> AsyncIterator[tuple[DeletionCost, asyncio.Task[None]]]:
    reporter = DeletionCost(url, **options)
    task = asyncio.create_task(reporter.run())
    try:
        yield reporter, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await reporter.aclose()


def refused_url() -> str:
    """A loopback URL nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_each_new_queue_length_is_put_with_the_metadata_header(changes: Changes) -> None:
    with MetadataService(on_change=changes.notify) as service:
        async with reporting(service.url + "/") as (reporter, _):
            reporter.on_event(status(2))
            await changes.until(lambda: service.costs() == [2])
            [put] = service.requests
            assert (put.method, put.path) == ("PUT", "/v1/deletion-cost")
            assert put.headers["Metadata"] == "true"
            assert put.headers["Content-Type"] == "application/json"
            assert put.body == {"deletion_cost": 2}

            reporter.on_event(status(2))  # unchanged since accepted: not sent again
            reporter.on_event({"type": "executing", "data": {"node": "3", "prompt_id": "p"}})
            reporter.on_event({"type": "status", "data": {"status": None}})  # a custom node's own shape
            reporter.on_event(status(0))
            await changes.until(lambda: reporter.reported == 0)
            assert service.costs() == [2, 0]


async def test_values_arriving_during_a_put_are_coalesced_into_the_latest(changes: Changes) -> None:
    with MetadataService(on_change=changes.notify) as service:
        async with reporting(service.url) as (reporter, _):
            service.hold()
            reporter.on_event(status(1))
            await changes.until(lambda: service.in_flight == 1)
            for remaining in (2, 3, 4):
                reporter.on_event(status(remaining))
            service.release()
            await changes.until(lambda: reporter.reported == 4)
            assert service.costs() == [1, 4]

            # Back to the value in flight before that PUT ends: nothing more to send once it is accepted.
            service.hold()
            reporter.on_event(status(5))
            await changes.until(lambda: service.in_flight == 1)
            reporter.on_event(status(6))
            reporter.on_event(status(5))
            service.release()
            await changes.until(lambda: reporter.reported == 5)
            reporter.on_event(status(7))  # a marker: it is sent next, so nothing was sent in between
            await changes.until(lambda: reporter.reported == 7)
            assert service.costs() == [1, 4, 5, 7]
            assert service.max_in_flight == 1


async def test_a_failing_service_is_logged_once_per_streak_and_gets_the_latest_value(
    changes: Changes,
) -> None:
    with MetadataService(on_change=changes.notify) as service:
        service.status = 503
        async with reporting(service.url, retry_base_s=0.01, retry_max_s=0.02) as (reporter, _):
            reporter.on_event(status(1))
            await changes.until(lambda: len(service.requests) >= 4)
            reporter.on_event(status(2))
            service.status = 200
            await changes.until(lambda: reporter.reported == 2)
            # At least three PUTs had failed when the service recovered (the fourth had been sent).
            assert len(changes.messages(logging.WARNING, "could not report")) == 1
            quiet = len(changes.messages(logging.DEBUG, "still not reported"))
            assert quiet >= 2
            [recovered] = changes.messages(logging.INFO, "reported again")
            assert recovered.__dict__["failures"] == quiet + 1
            assert service.costs()[-1] == 2 and set(service.costs()) == {1, 2}

            service.status = 500  # a new streak is logged again, once
            reporter.on_event(status(3))
            await changes.until(lambda: len(changes.messages(logging.DEBUG, "still not reported")) >= quiet + 2)
            assert len(changes.messages(logging.WARNING, "could not report")) == 2


async def test_a_refused_connection_is_logged_once_and_the_worker_lives_on(
    changes: Changes,
) -> None:
    async with reporting(refused_url(), retry_base_s=0.01, retry_max_s=0.02) as (reporter, task):
        reporter.on_event(status(1))
        await changes.until(lambda: len(changes.messages(logging.DEBUG, "still not reported")) >= 3)
        [warning] = changes.messages(logging.WARNING, "could not report")
        assert "ConnectError" in warning.__dict__["reason"]
        assert not task.done()
        assert reporter.reported is None


async def test_a_service_that_does_not_answer_times_out(changes: Changes) -> None:
    with MetadataService(on_change=changes.notify) as service:
        service.hold()
        async with reporting(service.url, timeout_s=0.2, retry_base_s=0.01) as (reporter, _):
            reporter.on_event(status(3))
            await changes.until(lambda: changes.messages(logging.WARNING, "could not report"))
            assert "Timeout" in changes.messages(logging.WARNING, "could not report")[0].__dict__["reason"]
            service.release()
            await changes.until(lambda: reporter.reported == 3)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (status(4), 4),
        (status(0), 0),
        (status(None), None),
        (status(True), None),
        (status(-1), None),
        (status("3"), None),
        ({"type": "status", "data": {"status": "busy"}}, None),
        ({"type": "status", "data": {}}, None),
        ({"type": "progress", "data": {"value": 1, "max": 2}}, None),
    ],
)
def test_the_queue_length_is_read_from_status_messages_only(message: dict[str, Any], expected: int | None) -> None:
    assert queue_remaining(message) == expected


def test_any_salad_variable_set_means_saladcloud() -> None:
    assert on_saladcloud({"SALAD_MACHINE_ID": "m-1"})
    assert on_saladcloud({"SALAD_CONTAINER_GROUP_ID": "g"})
    assert not on_saladcloud({"SALAD_MACHINE_ID": ""})
    assert not on_saladcloud({"SALAD_METADATA_URL": "http://127.0.0.1:1", "HOME": "/root"})


def test_the_metadata_url_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALAD_METADATA_URL", raising=False)
    assert Settings().salad_metadata_url == "http://169.254.169.254"
    assert Settings(salad_metadata_url="http://127.0.0.1:8080").salad_metadata_url == "http://127.0.0.1:8080"
    with pytest.raises(ValidationError, match="must be an http"):
        Settings(salad_metadata_url="169.254.169.254")
