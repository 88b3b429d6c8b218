"""Run the app under uvicorn with this server's startup and shutdown rules.

ComfyUI is launched and answers before the port opens (so orchestrators see "connection refused",
not errors, while it starts). The first SIGTERM or SIGINT drains: /ready turns 503, new prompts are
refused, requests in flight finish (within SHUTDOWN_GRACE_PERIOD_S), then uvicorn stops and
ComfyUI is stopped. A signal before the port opens stops startup (there is nothing to drain yet).
A second signal stops at once. Exit code: 0 after a drain or a stop by signal, 1 when startup failed
or ComfyUI died for good.

The signals are ours from start to end (loop.add_signal_handler). uvicorn's own handler would close the
port at the first signal, with no drain, and raise the signal again once it has shut down, so that the
process would end killed by SIGTERM instead of exiting 0. uvicorn offers no setting to turn it off:
`UvicornWithoutSignals` replaces the one method its public `serve()` installs it through, and the
import-time check below stops the server with a clear message should a uvicorn upgrade install it some
other way (tests/unit/test_server_signals.py fails too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from .app import create_app, mount_workflows
from .comfy.process import ComfyProcess
from .config import Settings
from .errors import ConfigError, StartupError

logger = logging.getLogger(__name__)

WORKER_THREADS = 32
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

if "capture_signals" not in uvicorn.Server.serve.__code__.co_names:
    raise ImportError(
        f"uvicorn {uvicorn.__version__} no longer installs its signal handlers through Server.capture_signals; "
        "comfyui_api/server.py must be adapted before SIGTERM can drain"
    )


class UvicornWithoutSignals(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # serve() installs uvicorn's SIGINT/SIGTERM handlers here; Runner's are in place instead.
        yield


class Runner:
    """One run of the server: startup, then serving until a signal or `request_exit`, and the exit code."""

    def __init__(self, server: uvicorn.Server, drain: Callable[[], Awaitable[None]]) -> None:
        self.exit_code = 0
        self._server = server
        self._drain = drain
        self._signals = 0
        self._startup: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[None] | None = None

    def request_exit(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)
        self._server.should_exit = True

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM handled by this run for as long as the block lasts (shutdown included)."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in HANDLED_SIGNALS:
                loop.remove_signal_handler(sig)

    async def run(self, start: Callable[[], Coroutine[Any, Any, None]]) -> int:
        """Run `start` (ComfyUI up, workflows mounted), then serve; the exit code."""
        self._startup = asyncio.create_task(start())
        try:
            await self._startup
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task itself is cancelled; only a signal stops startup otherwise
            return self.exit_code
        except (ConfigError, StartupError) as exc:
            logger.critical(str(exc))
            self.request_exit(1)
            return self.exit_code
        if not self._server.should_exit:
            await self._server.serve()
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        name = signal.Signals(sig).name
        if self._startup is not None and not self._startup.done():
            logger.info("signal received during startup; stopping", extra={"signal": name})
            self._startup.cancel()
        elif self._signals == 1:
            logger.info("signal received; draining", extra={"signal": name})
            self._draining = asyncio.create_task(self._drain_then_exit())
        else:
            logger.info("second signal received; stopping now", extra={"signal": name})
            self._server.force_exit = True
            self._server.should_exit = True
            if self._draining is not None:
                self._draining.cancel()

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        finally:
            self._server.should_exit = True


async def serve(settings: Settings, process: ComfyProcess) -> int:
    """Build the app around `process` (ComfyUI, launched already or not) and serve until told to stop."""
    # Downloads, uploads and file work run in worker threads; the default pool (cores + 4) is too small
    # for a few large transfers to run without stalling everything else that needs a thread.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="worker")
    )
    runner: Runner | None = None

    def request_exit(code: int) -> None:
        assert runner is not None
        runner.request_exit(code)

    try:
        app = create_app(settings, process=process, request_exit=request_exit)
    except BaseException:
        await process.stop()
        raise
    # Everything built so far (modules, the app, its clients) lives as long as the process: kept out of the
    # collector's reach, a full collection under load takes milliseconds instead of 100+ ms, during which every
    # request and probe would wait. A larger first generation makes collections rarer while a burst allocates.
    # (This runs while ComfyUI boots, off the path to readiness.)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    lifecycle = app.state.lifecycle
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    runner = Runner(UvicornWithoutSignals(config), drain=lifecycle.drain)

    async def start() -> None:
        await lifecycle.start()
        await mount_workflows(app)

    with runner.signals():
        try:
            return await runner.run(start)
        finally:
            await lifecycle.stop()
