"""The JavaScript webhook receiver (tests/services/webhook-receiver.js) in a real `node` process, with svix from npm.

    with JsReceiver(secret="whsec_...") as hook:         # started (its port read from its first line); stopped on exit
        ...send to hook.url (or hook.url_for("/system"))...
        records = hook.wait_for(lambda got: len(got) >= 2, timeout_s=60)
        records[0].verified, records[0].round_trip, records[0].error
        hook.round_trip(body_bytes)                      # one record, for bytes the test holds (a /prompt response)

The receiver verifies each signed body over `JSON.stringify(JSON.parse(body))`, as Node receivers of the reference
server do, so a record is verified only when the bytes sent are the ones JavaScript writes for them. Each record is
one line the process prints; a thread reads them as they come and wakes `wait_for`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import IO

import httpx

from .paths import REPO

SCRIPT = REPO / "tests" / "services" / "webhook-receiver.js"
SVIX = REPO / "tests" / "services" / "node_modules" / "svix"
INSTALL_HINT = "run scripts/setup.sh, or just scripts/install-test-services.sh"
# Node starts in well under a second; a loaded 2-core CI machine may take many times that.
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 10.0


class JsReceiverError(RuntimeError):
    pass


@dataclass(frozen=True)
class JsRecord:
    path: str
    id: str | None
    signed: bool
    verified: bool | None  # None: unsigned
    round_trip: bool  # JSON.stringify(JSON.parse(body)) == body
    first_difference: int | None
    type: str | None
    error: str | None


Predicate = Callable[[list[JsRecord]], bool]


class JsReceiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._cond = threading.Condition()
        self._records: list[JsRecord] = []
        self._port: int | None = None
        self._ended = False  # the process's output ended (it exited)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._port is not None, "the receiver is not started"
        return self._port

    @property
    def url(self) -> str:
        return self.url_for("/hook")

    def url_for(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> JsReceiver:
        node = shutil.which("node")
        if node is None:
            raise JsReceiverError(f"node is not installed (Node 20 or newer is needed): {INSTALL_HINT}")
        if not SVIX.exists():
            raise JsReceiverError(f"svix is not installed ({SVIX} is missing): {INSTALL_HINT}")
        # Its stderr is the test's (captured by pytest, shown on failure).
        self._process = subprocess.Popen(
            [node, str(SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={**os.environ, "WEBHOOK_SECRET": self.secret},
        )
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True)
        self._reader.start()
        with self._cond:
            self._cond.wait_for(lambda: self._port is not None or self._ended, START_DEADLINE_S)
            started = self._port is not None
        if not started:
            self.stop()
            raise JsReceiverError(f"the JavaScript receiver did not print its port in {START_DEADLINE_S:g} s")
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(STOP_DEADLINE_S)

    def __enter__(self) -> JsReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def records(self) -> list[JsRecord]:
        with self._cond:
            return list(self._records)

    def wait_for(self, predicate: Predicate, timeout_s: float = 60.0) -> list[JsRecord]:
        """Block until `predicate(records)` holds and return the records; AssertionError after `timeout_s`, or at
        once when the process has exited."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self._records) or self._ended, timeout_s)
            if not predicate(self._records):
                state = "exited" if self._ended else f"not met in {timeout_s:g} s"
                raise AssertionError(f"JavaScript receiver: condition {state}; records: {self._records}")
            return list(self._records)

    def round_trip(self, body: bytes, path: str = "/round-trip") -> JsRecord:
        """POST `body` unsigned and return the receiver's record of it: whether JavaScript re-serialises it as is."""
        answer = httpx.post(
            self.url_for(path),
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
            trust_env=False,  # loopback: never through a proxy
        )
        return JsRecord(**answer.json())

    def _read(self, stdout: IO[str]) -> None:
        try:
            for line in stdout:
                fields = json.loads(line)
                with self._cond:
                    if self._port is None and "port" in fields:
                        self._port = int(fields["port"])
                    else:
                        self._records.append(JsRecord(**fields))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            with contextlib.suppress(OSError):
                stdout.close()
