"""The server's life: launch ComfyUI, warm up, supervise, heal and restart it, drain and stop.

In attach mode (COMFYUI_ATTACH) ComfyUI runs elsewhere and is not this server's to launch, restart or signal: the
server waits for it to answer, warms up, and when it is lost (or wedged) becomes unready, fails what it held and
waits for it to answer again, then warms up again. It never exits for ComfyUI's sake; /health stays as it was.

Policy lives here; the mechanics are in comfy/process.py (the child), comfy/events.py (the websocket),
pipeline/watchdog.py (noticing a wedged ComfyUI) and pipeline/ (running prompts).

Every background task is spawned here and owned: its death is logged, and the death of a critical one (the
event reader, the watchdog, the janitor, the supervisor) makes the server unready and then exit, rather than
serve on with a part missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .comfy.client import ComfyClient
from .comfy.events import EventStream
from .comfy.http import LocalHttp
from .comfy.process import ComfyProcess
from .config import Settings, dump_for_log
from .errors import ApiError, ComfyUnavailable, ConfigError, ManifestError, StartupError, TransportError
from .fleet.node import Fleet
from .jobstore.records import JobKind
from .jobstore.sweeper import sweep_expired, sweep_interval
from .jobstore.writer import RecordWriter
from .manifest import install_after_start, install_before_start, load_manifest
from .metrics import Metrics
from .pipeline.delivery import Delivery
from .pipeline.history import execution_error
from .pipeline.janitor import Janitor
from .pipeline.jobs import JobRegistry
from .pipeline.recovery import Resume, resume_unfinished
from .pipeline.request import PromptRequest
from .pipeline.runner import PromptRunner
from .pipeline.watchdog import Watchdog
from .salad import DeletionCost
from .state import ServerState
from .storage.manager import StorageManager
from .tasks import TaskOwner
from .tracing import Tracing
from .v2.assets import AssetStore
from .v2.jobs import V2Jobs
from .warmup import load_warmup
from .webhooks.sender import WebhookSender
from .webhooks.system import SystemWebhooks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class V2Parts:
    """Comfy API v2's own parts: its jobs (run in the background) and its asset store."""

    jobs: V2Jobs
    assets: AssetStore


# Launches tried in a row after ComfyUI exited or was killed, before the server gives up and exits.
_RESTART_ATTEMPTS = 3
# Attach mode: how often a ComfyUI that is not there is asked again (doubling from the first to the last), and how
# often one is checked while the websocket is down (the websocket's loss is the first sign of ComfyUI's).
_ATTACH_POLL_FIRST_S = 0.05
_ATTACH_POLL_MAX_S = 5.0
_ATTACH_CHECK_S = 0.5
# The longest wait between two tries of a warmup that failed while attached (the ComfyUI may still be loading models).
_WARMUP_RETRY_MAX_S = 60.0
# ComfyUI's /system_stats is read at each (re)start and then at most this often, in the background: /health?verbose=1
# answers from the last reading, never calling ComfyUI.
SYSTEM_STATS_INTERVAL_S = 60.0

SystemStats = Callable[[], Awaitable[dict[str, Any]]]


class SystemStatsReader:
    """ComfyUI's `GET /system_stats`: its version, Python, PyTorch, devices and their VRAM."""

    def __init__(self, base_url: str) -> None:
        # One connection: a reading a minute; direct, as every call to the local ComfyUI.
        self._http = LocalHttp(base_url, timeout_s=10.0, connect_timeout_s=5.0, max_connections=1)

    async def __call__(self) -> dict[str, Any]:
        try:
            reply = await self._http.request("GET", "/system_stats")
        except TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI is not reachable: {exc}") from exc
        if reply.status != 200:
            raise ComfyUnavailable(f"ComfyUI answered GET /system_stats with {reply.status}")
        try:
            stats = reply.json()
        except ValueError:
            raise ComfyUnavailable("ComfyUI answered GET /system_stats with invalid JSON") from None
        if not isinstance(stats, dict):
            raise ComfyUnavailable("ComfyUI answered GET /system_stats with something other than an object")
        return stats

    async def aclose(self) -> None:
        await self._http.aclose()


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        state: ServerState,
        process: ComfyProcess,
        client: ComfyClient,
        events: EventStream,
        jobs: JobRegistry,
        runner: PromptRunner,
        janitor: Janitor,
        storage: StorageManager,
        delivery: Delivery,
        webhooks: WebhookSender,
        system: SystemWebhooks | None,
        request_exit: Callable[[int], None],
        *,
        deletion_cost: DeletionCost | None = None,
        records: RecordWriter | None = None,
        v2: V2Parts | None = None,
        fleet: Fleet | None = None,
        system_stats: SystemStats | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`records` writes the job records (and its store is swept here); without it, none are kept, and no job
        the server stopped under is run again. `v2`: Comfy API v2's parts, opened, swept and stopped here. `fleet`:
        fleet mode's parts; the broker, not this server, then holds the jobs a stop cut short. `system_stats` reads
        ComfyUI's /system_stats (default: over HTTP from `settings.comfy_url`)."""
        self._v2 = v2
        self._fleet = fleet
        self._settings = settings
        self._metrics = metrics
        self._tracing = tracing
        self._state = state
        self._process = process
        self._client = client
        self._events = events
        self._jobs = jobs
        self._runner = runner
        self._janitor = janitor
        self._watchdog = Watchdog(
            client,
            events,
            jobs,
            janitor,
            stall_timeout_s=settings.comfy_stall_timeout_s,
            on_wedged=self._heal,
        )
        # Why ComfyUI was last killed by us, until it is back: its exit is then a restart, not a crash.
        self._wedged: str | None = None
        self._storage = storage
        self._delivery = delivery
        self._webhooks = webhooks
        self._system = system
        self._request_exit = request_exit
        self._deletion_cost = deletion_cost
        self._records = records
        self._warmup_prompt: dict[str, Any] | None = None
        self._tasks = TaskOwner(self._critical_death)
        self._stopping = False
        # Closed at stop when made here.
        self._stats_reader: SystemStatsReader | None = None
        if system_stats is None:
            self._stats_reader = system_stats = SystemStatsReader(settings.comfy_url)
        self._system_stats = system_stats
        # Set when /system_stats should be read again before the interval is over: ComfyUI came up, or warmed up.
        self._stats_due = asyncio.Event()
        # Attach mode: set when the watchdog found the ComfyUI wedged (it cannot be killed: it is not ours).
        self._gone = asyncio.Event()
        # Counts ComfyUI's comings up: a warmup that failed retries only while the ComfyUI it was for is still up.
        self._generation = 0
        events.subscribe(self._on_comfy_event)

    @property
    def warmup_prompt(self) -> dict[str, Any] | None:
        """The warmup graph loaded at startup (None without one)."""
        return self._warmup_prompt

    async def start(self) -> None:
        """Load the warmup prompt and manifest, install, launch ComfyUI and wait; raises ConfigError or StartupError.

        The warmup itself runs in the background, once the port is open (so /health can say 500 meanwhile);
        so do the manifest's after_start models.
        """
        logger.info("starting", extra={"version": __version__, "settings": dump_for_log(self._settings)})
        if not self._settings.webhook_secret:
            logger.warning("WEBHOOK_SECRET is not set: webhooks will be sent unsigned")
        if not self._settings.http_block_private_addresses:
            logger.warning(
                "HTTP_BLOCK_PRIVATE_ADDRESSES=false: URLs in requests may reach private, loopback and metadata "
                "addresses; use it only where every caller is trusted"
            )
        if self._settings.http_auth_header is not None and not self._settings.http_auth_allowed_origins:
            logger.warning(
                "HTTP_AUTH_HEADER_NAME is set but HTTP_AUTH_ALLOWED_ORIGINS is not: the header goes to "
                "WARMUP_PROMPT_URL and manifest downloads only; list the origins of request URLs that should get it"
            )
        settings = self._settings
        for variable, folder in (
            ("INPUT_DIR", settings.inputs_path),
            ("OUTPUT_DIR", settings.outputs_path),
            ("CACHE_DIR", settings.cache_dir),
            ("STATE_DIR", settings.state_dir),
        ):
            create_folder(variable, folder)
        if self._records is not None:
            await self._records.open()
            # Critical: GET /prompt/{id} answers from what it writes.
            self._tasks.spawn(self._records.run(), "job-records", critical=True)
            self._tasks.spawn(
                sweep_expired(self._records.store.delete_expired, interval_s=sweep_interval(settings.job_retention_s)),
                "job-sweeper",
            )
        if self._v2 is not None:
            await self._v2.assets.open()
            self._tasks.spawn(
                sweep_expired(
                    self._v2.assets.sweep, interval_s=sweep_interval(settings.asset_retention_s), what="assets"
                ),
                "asset-sweeper",
            )
        if self._system is not None:
            self._tasks.watch(self._system.start(), critical=False)
        await asyncio.to_thread(self._storage.cache.sweep_partials)
        await self._storage.cache.enforce_limit()
        if settings.runs_comfy:
            await self._start_comfy()
        else:
            # An API-only fleet replica: it serves once its job store is open (and, per /ready, its broker connected).
            self._state.needs_comfy = False
            self._state.warm = self._state.healthy = True
        if self._fleet is not None:
            await self._fleet.start(self._tasks)
        elif self._records is not None:
            self._tasks.spawn(self._resume_unfinished(self._records), "resume-jobs")

    async def _start_comfy(self) -> None:
        self._warmup_prompt = await load_warmup(self._settings)
        attach = self._settings.comfyui_attach
        manifest = load_manifest(self._settings)
        if manifest is not None and attach:
            raise ConfigError(
                "MANIFEST, MANIFEST_JSON: not with COMFYUI_ATTACH=true: the ComfyUI attached to is not this server's "
                "to install into; install into it where it is launched"
            )
        if manifest is not None:
            try:
                await install_before_start(manifest, self._settings, self._storage)
            except ManifestError as exc:
                raise StartupError(str(exc)) from None
        if attach:
            # No deadline: the ComfyUI may be a sidecar still starting, and its start is not ours to judge.
            await self._await_comfy()
        else:
            await self._launch(first=True)
        self._tasks.spawn(self._events.run(), "comfy-events", critical=True)
        self._tasks.spawn(self._watchdog.run(self._state.comfy_up), "watchdog", critical=True)
        self._tasks.spawn(self._janitor.run(), "janitor", critical=True)
        self._tasks.spawn(self._follow() if attach else self._supervise(), "supervisor", critical=True)
        self._tasks.spawn(self._warm_up(), "warmup")
        self._tasks.spawn(self._keep_system_stats(), "system-stats")
        if self._deletion_cost is not None:
            # Not critical: the scale-in order is advice to SaladCloud; the server serves on without it (its death is
            # logged).
            self._tasks.spawn(self._deletion_cost.run(), "salad-deletion-cost")
        if manifest is not None and manifest.after_start_models:
            self._tasks.spawn(install_after_start(manifest, self._settings, self._storage), "manifest-after-start")

    async def drain(self) -> None:
        """Stop taking prompts and let the ones in flight finish, within the grace period."""
        self._state.draining = True
        if self._fleet is not None:
            await self._fleet.drain()  # no more jobs taken; the ones held and not started go back to the queue
        in_flight = len(self._jobs)
        logger.info("draining", extra={"in_flight": in_flight, "grace_s": self._settings.shutdown_grace_period_s})
        if not await self._jobs.wait_idle(self._settings.shutdown_grace_period_s):
            logger.warning(
                "grace period over; stopping with requests still in flight", extra={"in_flight": len(self._jobs)}
            )

    async def stop(self) -> None:
        self._stopping = True
        # Jobs cut short from here on stay queued in the store, for the next start to run again.
        self._state.draining = True
        if self._fleet is not None:
            # First, while the record writer runs: each job still running is handed back with its record saying so.
            await self._fleet.aclose()
        await self._tasks.close()
        # Webhooks in their retry schedule make one last attempt now rather than hold the deliveries below up.
        self._webhooks.stop_retrying()
        if self._v2 is not None:
            await self._v2.jobs.aclose()
        await self._delivery.aclose()
        await self._runner.aclose()
        if self._records is not None:
            # After the deliveries: their jobs' last changes are written too.
            await self._records.aclose()
        if self._v2 is not None:
            await self._v2.assets.close()
        if self._system is not None:
            await self._system.stop()
        await self._webhooks.aclose()
        if self._tracing is not None:
            # After the webhooks, whose spans end the jobs' traces: what is batched is exported now.
            await asyncio.to_thread(self._tracing.shutdown)
        if self._deletion_cost is not None:
            await self._deletion_cost.aclose()
        await self._process.stop()
        await self._client.aclose()
        if self._stats_reader is not None:
            await self._stats_reader.aclose()
        await self._storage.aclose()
        logger.info("stopped")

    async def _resume_unfinished(self, records: RecordWriter) -> None:
        """Run again the jobs the server stopped under (pipeline/recovery.py); each waits for ComfyUI as any job."""
        resumers: dict[JobKind, Resume] = {JobKind.PROMPT: self._delivery.resume}
        if self._v2 is not None:
            resumers[JobKind.V2] = self._v2.jobs.resume
        await resume_unfinished(records.store, records.changed, resumers, self._settings.job_max_attempts)

    def _critical_death(self, reason: str) -> None:
        # Unready and unhealthy at once, then exit: the orchestrator replaces this instance.
        self._state.failed = reason
        self._state.note_error(reason)
        self._request_exit(1)

    async def _launch(self, *, first: bool = False) -> None:
        self._state.warm = False
        if not (first and self._process.launched):  # at startup it may be booting already (__main__ launched it)
            await self._process.launch()
        await self._process.wait_ready(
            self._client.probe,
            interval_s=self._settings.startup_check_interval_s,
            max_tries=self._settings.startup_check_max_tries,
        )
        logger.info("ComfyUI is up", extra={"pid": self._process.pid})
        self._came_up()

    def _came_up(self) -> None:
        self._wedged = None
        self._gone.clear()
        self._generation += 1
        self._state.comfy_up_since = time.monotonic()
        self._state.comfy_up.set()
        self._stats_due.set()
        self._events.reconnect_now()

    async def _warm_up(self) -> None:
        generation = self._generation
        delay = _ATTACH_POLL_MAX_S
        while self._warmup_prompt is not None:
            logger.info("running the warmup prompt")
            try:
                await self._runner.close(await self._runner.run(PromptRequest(prompt=self._warmup_prompt)))
            except ApiError as exc:
                self._state.note_error(f"the warmup prompt failed: {exc.message}")
                if not self._settings.comfyui_attach:
                    logger.error("the warmup prompt failed; exiting", extra={"error": exc.message, **exc.extra})
                    self._request_exit(1)
                    return
                # Attached, the ComfyUI may still be loading, or gone (then it is warmed up when it is back).
                logger.error(
                    "the warmup prompt failed; trying it again",
                    extra={"error": exc.message, "retry_in_s": delay, **exc.extra},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _WARMUP_RETRY_MAX_S)
                if generation != self._generation or not self._state.comfy_up.is_set():
                    return
                continue
            logger.info("warmup complete")
            break
        self._state.warm = True
        self._state.healthy = True
        self._stats_due.set()

    async def _keep_system_stats(self) -> None:
        """Read ComfyUI's /system_stats at each (re)start and warmup, and at most every SYSTEM_STATS_INTERVAL_S."""
        while True:
            await self._state.comfy_up.wait()
            self._stats_due.clear()
            try:
                self._state.note_system_stats(await self._system_stats())
            except ApiError as exc:
                logger.debug("ComfyUI's /system_stats could not be read", extra={"reason": exc.message})
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that comes as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYSTEM_STATS_INTERVAL_S):
                    await self._stats_due.wait()

    def _on_comfy_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "execution_error":
            failure = execution_error(event["data"])
            self._state.note_error(failure.message, prompt_id=event["data"].get("prompt_id"))

    async def _heal(self, cause: str) -> None:
        """The watchdog found ComfyUI wedged: fail what it holds, kill it; the supervisor starts it again. Attached,
        it is not ours to kill: the supervisor waits for it to answer again."""
        self._wedged = cause
        self._state.comfy_up.clear()
        self._state.warm = False
        self._state.note_error(f"ComfyUI is wedged: {cause}")
        if self._settings.comfyui_attach:
            logger.error(
                "ComfyUI is wedged; it is not this server's to restart: unready until it answers",
                extra={"cause": cause},
            )
            self._jobs.fail_in_comfy(ComfyUnavailable(f"ComfyUI stopped working ({cause}); send the request again"))
            self._gone.set()
            return
        logger.error("ComfyUI is wedged; restarting it", extra={"cause": cause})
        self._jobs.fail_in_comfy(
            ComfyUnavailable(f"ComfyUI stopped working ({cause}) and is being restarted; send the request again")
        )
        await self._process.kill()

    async def _supervise(self) -> None:
        while True:
            code = await self._process.wait()
            if self._stopping:
                return
            self._state.comfy_up.clear()
            self._state.warm = False
            self._janitor.reset()
            self._jobs.fail_in_comfy(
                ComfyUnavailable(f"ComfyUI exited with code {code} while the prompt was queued or running")
            )
            if self._wedged is None:
                self._state.note_error(f"ComfyUI exited with code {code}")
            if self._wedged is None and not self._settings.always_restart_comfyui:
                logger.error("ComfyUI exited; ALWAYS_RESTART_COMFYUI is off, so the server exits", extra={"code": code})
                self._request_exit(1)
                return
            if self._wedged is None:
                logger.warning("ComfyUI exited; restarting it", extra={"code": code})
            cause = "exited" if self._wedged is None else "wedged"
            if not await self._relaunch():
                return
            self._restarted(cause)
            self._tasks.spawn(self._warm_up(), "warmup")

    def _restarted(self, cause: str) -> None:
        """ComfyUI is back after it `cause`: exited, wedged (and was killed, unless attached) or, attached, was lost."""
        self._state.comfy_restarts += 1
        if self._metrics is not None:
            self._metrics.comfy_restarted(cause)

    async def _await_comfy(self) -> None:
        """Attach mode: ask ComfyUI until it answers, backing off from _ATTACH_POLL_FIRST_S to _ATTACH_POLL_MAX_S."""
        delay = _ATTACH_POLL_FIRST_S
        if not await self._client.probe():
            logger.info("waiting for ComfyUI to answer", extra={"url": self._settings.comfy_url})
            while not await self._client.probe():
                await asyncio.sleep(delay)
                delay = min(delay * 2, _ATTACH_POLL_MAX_S)
        logger.info("attached to ComfyUI", extra={"url": self._settings.comfy_url})
        self._came_up()

    async def _follow(self) -> None:
        """Attach mode's supervisor: notice ComfyUI's loss, wait for it to answer again, warm it up again."""
        while True:
            cause = await self._until_lost()
            kind = "lost" if self._wedged is None else "wedged"
            self._state.comfy_up.clear()
            self._state.warm = False
            self._janitor.reset()
            if self._wedged is None:
                logger.error("ComfyUI is gone; unready until it answers again", extra={"cause": cause})
                self._state.note_error(f"ComfyUI is gone: {cause}")
                self._jobs.fail_in_comfy(
                    ComfyUnavailable(f"ComfyUI went away ({cause}) while the prompt was queued or running")
                )
            await self._await_comfy()
            self._restarted(kind)
            self._tasks.spawn(self._warm_up(), "warmup")

    async def _until_lost(self) -> str:
        """Wait until ComfyUI is found wedged or gone: its websocket is down and it does not answer; the cause."""
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that comes as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ATTACH_CHECK_S):
                    await self._gone.wait()
            if self._wedged is not None:
                return self._wedged
            # While the websocket is up, ComfyUI is there: it is asked only once the websocket is down.
            if not self._events.connected and not await self._client.probe():
                return "it does not answer"

    async def _relaunch(self) -> bool:
        """Start ComfyUI again, a few times if need be; False (and exit requested) when it will not start."""
        for attempt in range(1, _RESTART_ATTEMPTS + 1):
            try:
                await self._launch()
                return True
            except StartupError as exc:
                # Liveness fails while ComfyUI will not come back: the orchestrator may replace this instance.
                self._state.healthy = False
                self._state.note_error(f"ComfyUI failed to restart: {exc}")
                logger.error(
                    "ComfyUI failed to restart",
                    extra={"error": str(exc), "attempt": attempt, "attempts": _RESTART_ATTEMPTS},
                )
                await self._process.kill()
        logger.error("ComfyUI would not restart; exiting")
        self._request_exit(1)
        return False


def create_folder(variable: str, folder: Path) -> None:
    """`folder` (and its parents), or a ConfigError naming the variable: startup then stops with one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot create the folder {folder}: {exc.strerror or exc}") from None
