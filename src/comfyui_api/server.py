"""Run the app under uvicorn with this server's startup and shutdown rules.

ComfyUI is launched and answers before the port opens (so orchestrators see "connection refused",
not errors, while it starts). The first SIGTERM or SIGINT drains: /ready turns 503, new prompts are
refused, requests in flight finish (within SHUTDOWN_GRACE_PERIOD_S), then uvicorn stops and the
lifespan stops ComfyUI. A second signal stops at once. Exit code: 0 after a drain, 1 when startup
failed or ComfyUI died for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from .app import create_app, mount_workflows
from .comfy.process import ComfyProcess, StartupError
from .config import ConfigError, Settings

logger = logging.getLogger(__name__)

WORKER_THREADS = 32


class ApiServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self.exit_code = 0
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None

    def request_exit(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not uvicorn's: it re-raises the signal after shutdown, which would turn a clean
        # drain into death by SIGTERM instead of exit code 0.
        if self._draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self._draining = True
        logger.info("signal received; draining", extra={"signal": sig})
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        finally:
            self.should_exit = True

    async def run_app(self, start: Callable[[], Awaitable[None]]) -> None:
        self._loop = asyncio.get_running_loop()
        with self.capture_signals():
            try:
                await start()
            except (ConfigError, StartupError) as exc:
                logger.critical(str(exc))
                self.exit_code = 1
                return
            if not self.should_exit:
                await self._serve()


async def serve(settings: Settings, process: ComfyProcess) -> int:
    """Build the app around `process` (ComfyUI, launched already or not) and serve until told to stop."""
    # Downloads, uploads and file work run in worker threads; the default pool (cores + 4) is too small
    # for a few large transfers to run without stalling everything else that needs a thread.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="worker")
    )
    server: ApiServer | None = None

    def request_exit(code: int) -> None:
        assert server is not None
        server.request_exit(code)

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
    server = ApiServer(config, drain=lifecycle.drain)

    async def start() -> None:
        await lifecycle.start()
        await mount_workflows(app)

    try:
        await server.run_app(start)
    finally:
        await lifecycle.stop()
    return server.exit_code
