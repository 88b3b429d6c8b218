"""The server's startup and shutdown rules (comfyui_api/server.py) with real signals, a real port and uvicorn.

Each test runs tests/unit/server_child.py (a Runner around a tiny app) in a process of its own and drives it over
stdin, signals and loopback HTTP.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHILD = Path(__file__).with_name("server_child.py")
DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Child:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(json.loads(line))
        self._queue.put(None)

    def expect(self, name: str) -> None:
        """Wait for an event of the child, or a log line with that message."""
        while True:
            line = self._queue.get(timeout=DEADLINE_S)
            assert line is not None, f"the child ended before {name!r}: {self.lines}"
            self.lines.append(line)
            if name in (line.get("event"), line.get("msg")):
                return

    def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def get(self, path: str = "/") -> int:
        return self.answer(path).status_code

    def answer(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=DEADLINE_S)

    def serving(self) -> None:
        """Wait until the port answers (uvicorn opens it right after startup)."""
        for _ in range(int(DEADLINE_S / 0.05)):
            try:
                self.get()
                return
            except httpx.ConnectError:
                time.sleep(0.05)
        raise AssertionError(f"the port never opened: {self.lines}")

    def uvicorn_started(self) -> bool:
        return any(line.get("logger") == "uvicorn.error" for line in self.lines)

    def exit_code(self) -> int:
        code = self.process.wait(timeout=DEADLINE_S)
        while (line := self._queue.get(timeout=DEADLINE_S)) is not None:
            self.lines.append(line)
        return code

    def messages(self, level: str) -> list[str]:
        return [line["msg"] for line in self.lines if line.get("level") == level]


@pytest.fixture
def child() -> Iterator[Child]:
    started = Child()
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def test_the_port_opens_after_startup_and_the_first_signal_drains_with_it_open(child: Child) -> None:
    child.expect("starting")
    with pytest.raises(httpx.ConnectError):
        child.get()  # still starting: connections are refused, not answered with errors

    child.say("go")
    child.serving()
    assert child.get() == 200
    # uvicorn's serve() installed no handler of its own over the run's (it would stop serving at the first signal,
    # racing the drain, and raise the signal again at the end).
    assert "handle_exit" not in child.answer("/sigterm-handler").text

    child.process.send_signal(signal.SIGTERM)
    child.expect("draining")
    assert child.get() == 503  # the port stays open while requests finish, so /ready can say no

    child.say("finish")
    assert child.exit_code() == 0
    assert "signal received; draining" in child.messages("info")
    assert {"event": "exit 0"} in child.lines


def test_a_second_signal_stops_at_once(child: Child) -> None:
    child.expect("starting")
    child.say("go")
    child.serving()
    child.process.send_signal(signal.SIGTERM)
    child.expect("draining")

    child.process.send_signal(signal.SIGINT)

    assert child.exit_code() == 0  # the drain never finished: nothing was said to it
    assert "second signal received; stopping now" in child.messages("info")


def test_a_signal_during_startup_stops_it(child: Child) -> None:
    child.expect("starting")

    child.process.send_signal(signal.SIGTERM)

    assert child.exit_code() == 0
    assert "signal received during startup; stopping" in child.messages("info")
    assert not child.uvicorn_started()  # the port never opened


def test_a_failed_startup_exits_1_with_one_critical_line(child: Child) -> None:
    child.expect("starting")

    child.say("fail")

    assert child.exit_code() == 1
    assert child.messages("critical") == ["ComfyUI did not answer"]
    assert not child.uvicorn_started()


def test_an_exit_requested_while_serving_ends_with_its_code(child: Child) -> None:
    child.expect("starting")
    child.say("go")
    child.serving()

    assert child.get("/exit") == 200  # as the lifecycle does when ComfyUI died for good

    assert child.exit_code() == 1
