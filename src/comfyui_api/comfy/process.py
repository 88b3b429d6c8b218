"""The ComfyUI child process: launch, startup probe, output forwarding, stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from ..errors import StartupError

logger = logging.getLogger(__name__)
comfy_logger = logging.getLogger("comfyui")

_PR_SET_PDEATHSIG = 1
# Looked up in the parent: the child, between fork and exec, should do as little as possible.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


# The most time between two startup probes (STARTUP_CHECK_INTERVAL_S, when smaller, wins).
PROBE_PERIOD_S = 0.05


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if this server dies, so no orphan holds the port."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ComfyProcess:
    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self._command = command
        self._env = env
        self._process: asyncio.subprocess.Process | None = None
        self._forwarder: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def launch(self) -> None:
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._command,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for us must not reach ComfyUI before we drained.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise StartupError(f"cannot launch CMD {self._command[0]!r}: {exc}") from exc
        logger.info("ComfyUI launched", extra={"pid": self._process.pid, "command": self._command})
        assert self._process.stdout is not None
        self._forwarder = asyncio.create_task(_forward_output(self._process.stdout), name="comfy-output")

    @property
    def launched(self) -> bool:
        return self._process is not None

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], *, interval_s: float, max_tries: int) -> None:
        """Probe until ComfyUI answers, within `max_tries * interval_s` (the reference's deadline); fail fast if the
        child exits first. Probes go out every PROBE_PERIOD_S at most, so that readiness is seen within a few
        tens of milliseconds of ComfyUI answering rather than up to a whole interval later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_tries * interval_s
        period = min(interval_s, PROBE_PERIOD_S)
        while True:
            if not self.running:
                raise StartupError(f"ComfyUI exited with code {self.returncode} before it answered")
            if await probe():
                return
            if loop.time() >= deadline:
                raise StartupError(f"ComfyUI did not start after {max_tries * interval_s:g} seconds")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), min(period, max(deadline - loop.time(), 0)))

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def wait(self) -> int:
        assert self._process is not None
        code = await self._process.wait()
        if self._forwarder is not None:
            # Let the last lines (often the crash reason) reach the log.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._forwarder), 2.0)
        return code

    async def stop(self, timeout_s: float = 15.0) -> None:
        if not self.running:
            return
        assert self._process is not None
        logger.info("stopping ComfyUI", extra={"pid": self._process.pid})
        # The whole process group (ComfyUI runs in a session of its own): CMD may be a script whose children
        # would otherwise outlive it, holding the port and the GPU.
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), timeout_s)
        except TimeoutError:
            logger.warning("ComfyUI ignored SIGTERM; killing it", extra={"pid": self._process.pid})
            self._signal_group(signal.SIGKILL)
            await self._process.wait()
        self._signal_group(signal.SIGKILL)  # what is left of the group once its leader is gone

    async def kill(self) -> None:
        """Kill the whole group at once: for a ComfyUI that stopped answering (a stopped process never sees SIGTERM)."""
        if not self.running:
            return
        assert self._process is not None
        logger.warning("killing ComfyUI", extra={"pid": self._process.pid})
        self._signal_group(signal.SIGKILL)
        await self._process.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)


async def _forward_output(stream: asyncio.StreamReader) -> None:
    """ComfyUI's stdout and stderr, one log line per output line (progress bars split on \\r)."""
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            _log_line(line)
        if len(pending) > 65536:
            _log_line(pending)
            pending = b""
    if pending:
        _log_line(pending)


def _log_line(line: bytes) -> None:
    text = line.decode("utf-8", errors="replace").rstrip()
    if text:
        comfy_logger.info(text, extra={"source": "comfyui"})


# This server's own secrets, which nothing in ComfyUI needs (cloud credentials and tokens stay: custom nodes use them).
_NOT_FOR_COMFYUI = ("API_KEYS",)


def child_environment(base: dict[str, str], *, address: str, port: int) -> dict[str, str]:
    """The parent's environment, less this server's own secrets, plus the variables the reference server passes
    to ComfyUI."""
    env = {name: value for name, value in base.items() if name not in _NOT_FOR_COMFYUI}
    env.update(
        {
            "DIRECT_ADDRESS": address,
            "COMFYUI_PORT_HOST": str(port),
            "WEB_ENABLE_AUTH": "false",
            "CF_QUICK_TUNNELS": "false",
        }
    )
    return env
