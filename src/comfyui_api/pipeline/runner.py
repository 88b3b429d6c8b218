"""The prompt pipeline: preprocess → submit (start) → await → collect → convert (finish) → close.

Delivery (base64, uploads, webhooks) happens between finish and close, in pipeline/delivery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..comfy.client import ComfyClient, take_out
from ..comfy.events import EventStream
from ..config import Settings
from ..errors import ApiError, ComfyUnavailable, PromptInterrupted, PromptRejected, PromptTimeout, ShuttingDown
from ..jobstore.records import JobRecord
from ..metrics import Metrics
from ..state import ServerState
from ..storage.manager import StorageManager
from ..tracing import Tracing
from .convert import ConvertOutput, convert_file, converted_name
from .history import message_time, raise_if_failed
from .janitor import Janitor
from .jobs import Job, JobRegistry, JobState, now_ms
from .outputs import OutputFile, collect_outputs, delete_files, require_present
from .preprocess import AssetSource, Preprocessor, require_saving_node, unique_to_cache
from .request import PromptRequest

logger = logging.getLogger(__name__)

# Up to this many files are deleted in the event loop at a job's end; more (or folders) in a worker thread.
_INLINE_DELETES = 8
# How long POST /interrupt waits for ComfyUI to take a prompt out of its queue (ComfyUI answers in milliseconds when
# it is well) before it ends the request without it.
_INTERRUPT_WAIT_S = 5.0
# How often a submission that failed checks whether ComfyUI answers again (or its exit was noticed) before its retry.
_SETTLE_INTERVAL_S = 0.5


class Canceler(Protocol):
    """Who cancels a request by id: this server's runner, or in fleet mode the fleet (the job may run elsewhere)."""

    async def interrupt(self, job_id: str) -> bool: ...


def ends_attempt(exc: BaseException) -> bool:
    """Whether `exc` ends a fleet job's attempt without an outcome (ComfyUI failed under it, or this server is
    stopping): the job goes back to the broker."""
    return isinstance(exc, ComfyUnavailable | ShuttingDown)


class PromptRunner:
    def __init__(
        self,
        settings: Settings,
        client: ComfyClient,
        events: EventStream,
        jobs: JobRegistry,
        state: ServerState,
        storage: StorageManager,
        janitor: Janitor,
        *,
        assets: AssetSource | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._settings = settings
        self._client = client
        self._events = events
        self._jobs = jobs
        self._state = state
        self._storage = storage
        self._preprocessor = Preprocessor(
            input_dir=settings.inputs_path,
            output_dir=settings.outputs_path,
            model_dir=settings.models_path,
            prepend_filenames=settings.prepend_filenames,
            storage=storage,
            allowed_dirs=settings.input_allowed_dirs,
            assets=assets,
        )
        self._janitor = janitor
        # Cleanups under way, held here: a request's task may be cancelled (its client left) while it cleans up.
        self._cleanups: set[asyncio.Task[None]] = set()

    async def start(
        self,
        request: PromptRequest,
        record: JobRecord | None = None,
        *,
        extra_data: dict[str, Any] | None = None,
        from_queue: bool = False,
    ) -> Job:
        """Preprocess the prompt and queue it in ComfyUI. The job stays open until `close(job)`.

        `record`: the job's record as its front door made it (kind, what a restart needs to run it again), or as the
        store kept it when a restart runs it again; by default a new /prompt record. `from_queue`: a fleet worker
        took the job from the broker: when ComfyUI fails under it (`ends_attempt`), it is not queued in ComfyUI
        again here but handed back (its record queued, the error raised) for whichever worker takes it next."""
        if self._state.draining:
            raise ShuttingDown()
        job = Job(id=request.id, from_queue=from_queue)
        if record is not None:
            job.record = record
        job.extra_data = extra_data
        job.record.delivery = request.echo()  # recorded with the job; never credentials
        limit = self._settings.prompt_timeout_s
        if request.timeout_s is not None and (limit is None or request.timeout_s < limit):
            job.deadline_rule = f"timeout_s={request.timeout_s:g}s"
            limit = request.timeout_s
        elif limit is not None:
            job.deadline_rule = f"PROMPT_TIMEOUT_S={limit:g}s"
        if limit is not None:
            job.deadline = asyncio.get_running_loop().time() + limit
        self._jobs.add(job)
        try:
            graph = request.graph()
            require_saving_node(graph)
            async with self._deadline(job):  # PROMPT_TIMEOUT_S covers downloads and clones too
                await self._preprocessor.run(graph, job, request.credentials)
            job.graph = graph
            job.preprocessed_at = now_ms()
            async with self._deadline(job):
                await self._submit_attempts(job)
        except BaseException as exc:
            await self._fail(job, exc)
            raise
        return job

    async def _submit(self, job: Job) -> None:
        """Queue the job's prompt in ComfyUI (waiting while it restarts)."""
        await self._wait_for_comfy(job)
        job.state = JobState.SUBMITTING
        try:
            accepted = await self._client.queue_prompt(
                unique_to_cache(job.graph, job.prompt_id),
                prompt_id=job.prompt_id,
                client_id=self._events.client_id,
                extra_data=job.extra_data,
            )
        except PromptRejected:
            # Refused at validation: nothing of it is in ComfyUI, nothing to take out of it when the job closes.
            job.state = JobState.PREPROCESSING
            raise
        if accepted != job.prompt_id:
            # A ComfyUI older than 0.25 ignores the id we send: follow the one it chose.
            logger.info(
                "ComfyUI chose its own prompt id",
                extra={"request_id": job.id, "sent": job.prompt_id, "prompt_id": accepted},
            )
            self._jobs.rekey(job, accepted)
        job.state = JobState.QUEUED
        self._jobs.queued(job)
        logger.debug("prompt queued", extra={"request_id": job.id, "prompt_id": job.prompt_id})
        if job.interrupt_requested:
            await self._cancel_in_comfy(job)

    async def _submit_attempts(self, job: Job) -> None:
        """`_submit`, again after ComfyUI exited under it while attempts remain."""
        while True:
            try:
                await self._submit(job)
                return
            except ComfyUnavailable as exc:
                if not self._may_retry(job):
                    raise
                # ComfyUI may have queued the prompt before the connection broke: it is abandoned, whatever it became.
                self._janitor.abandon(job.prompt_id)
                self._requeue(job, exc)
                await self._settle()

    async def _settle(self) -> None:
        """After a submission failed: wait until ComfyUI answers again, or until its exit is noticed (the next
        submission then waits for it to be back), so that the retry is not spent on a ComfyUI that is dying."""
        # Polled: what is awaited is ComfyUI answering an HTTP probe, which no event announces.
        while self._state.comfy_up.is_set() and not await self._client.probe():  # noqa: ASYNC110
            await asyncio.sleep(_SETTLE_INTERVAL_S)

    def _may_retry(self, job: Job) -> bool:
        """Whether the job gets another attempt after ComfyUI failed it: not once it was interrupted, or its
        attempts (JOB_MAX_ATTEMPTS) are spent; its deadline bounds the retries too (PromptTimeout)."""
        if job.from_queue:
            return False  # the broker gives it to a worker again
        return not job.interrupt_requested and job.record.attempts < self._settings.job_max_attempts

    def _requeue(self, job: Job, exc: ComfyUnavailable) -> None:
        logger.warning(
            "ComfyUI failed the prompt; queueing it again once ComfyUI is back",
            extra={"request_id": job.id, "attempt": job.record.attempts, "reason": exc.message},
        )
        self._jobs.requeued(job, exc)

    async def _await_attempts(self, job: Job) -> dict[str, Any]:
        """The prompt's final history entry, queueing it again after ComfyUI exited under it while attempts remain."""
        while True:
            try:
                return await self._await_history(job)
            except ComfyUnavailable as exc:
                if not self._may_retry(job):
                    raise
                self._requeue(job, exc)
                await self._submit_attempts(job)

    async def finish(self, job: Job, convert: ConvertOutput | None = None) -> None:
        """Wait for the prompt, then collect (and convert) its outputs into `job.outputs` and `job.stats`."""
        try:
            async with self._deadline(job):
                entry = await self._await_attempts(job)
            job.state = JobState.COLLECTING
            # Collected before the verdict: a failed prompt's partial outputs are deleted too.
            job.outputs = collect_outputs(entry, self._settings.outputs_path, job.executed_nodes)
            job.files_to_delete.extend(output.path for output in job.outputs)
            raise_if_failed(entry)
            require_present(job.outputs)
            collected_at = now_ms()
            if convert is not None:
                job.outputs = await asyncio.to_thread(self._convert, job, convert)
                job.windows["conversion"] = (collected_at, now_ms())
            job.stats = {
                "comfy_execution": self._execution_stats(job, entry, job.preprocessed_at),
                "preprocess_time": job.preprocessed_at - job.received_at,
                "comfy_round_trip_time": collected_at - job.preprocessed_at,
                "postprocess_time": now_ms() - collected_at,
            }
        except BaseException as exc:
            await self._fail(job, exc)
            raise
        logger.info(
            "prompt completed", extra={"request_id": job.id, "prompt_id": job.prompt_id, "outputs": len(job.outputs)}
        )

    async def run(self, request: PromptRequest) -> Job:
        """Start and finish a prompt (the caller delivers the outputs and closes the job)."""
        job = await self.start(request)
        await self.finish(job, request.convert_output)
        job.mark_succeeded()
        return job

    async def close(self, job: Job) -> None:
        """End a job: forget it, release its downloads, delete its files, and leave ComfyUI clean: the history
        entry of a finished prompt is deleted, a prompt still queued or running is abandoned (see janitor.py).

        A cancelled caller does not cut the cleanup short: it runs on in a task of the runner's own."""
        if job.closed:
            return
        job.closed = True
        self._abandon(job)  # a job that ends without a verdict (its caller was cancelled)
        outcome = job.record.status.value if job.record.terminal else "requeued"
        if self._metrics is not None:
            self._metrics.job_ended(job.entry, outcome, job.phases(now_ms()), job.node_times())
        if self._tracing is not None:
            self._tracing.job_ended(job, outcome, now_ms())
        self._jobs.remove(job)
        for download in job.downloads:
            self._storage.release(download)
        if job.state in (JobState.SUBMITTING, JobState.QUEUED):
            self._janitor.abandon(job.prompt_id)
        elif job.state is JobState.COLLECTING:
            self._janitor.forget(job.prompt_id, written=job.history_written)
        if not (job.input_dirs or len(job.files_to_delete) + len(job.input_files) > _INLINE_DELETES):
            self._delete_job_files(job)  # a few unlinks cost less than a thread hop
            return
        cleanup = asyncio.ensure_future(asyncio.to_thread(self._delete_job_files, job))
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanup_done)
        await asyncio.shield(cleanup)

    def _cleanup_done(self, task: asyncio.Task[None]) -> None:
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("deleting a job's files failed", exc_info=task.exception())

    async def aclose(self) -> None:
        """Wait for the cleanups under way."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups))

    def _abandon(self, job: Job) -> None:
        """A job cut short without an outcome: when the server is stopping and its record says how to run it again,
        it is kept queued for the next start (pipeline/recovery.py); otherwise canceled."""
        if job.handed_back:
            return  # its record says queued: the broker gives the job to a worker again
        if self._state.draining and job.record.request is not None:
            # Also a job that cannot run again (held credentials or extra_data): the next start fails it, saying why.
            job.suspend()
        else:
            job.mark_abandoned()

    async def _fail(self, job: Job, exc: BaseException) -> None:
        if job.from_queue and ends_attempt(exc):
            job.hand_back()
        elif isinstance(exc, Exception):
            job.mark_ended(exc)
        else:
            self._abandon(job)
        if isinstance(exc, ApiError):
            logger.warning(
                "prompt failed", extra={"request_id": job.id, "status": exc.status_code, "error": exc.message}
            )
        await self.close(job)

    @contextlib.asynccontextmanager
    async def _deadline(self, job: Job) -> AsyncIterator[None]:
        """PROMPT_TIMEOUT_S over the whole job: on expiry the prompt leaves ComfyUI and the job fails with 504."""
        try:
            async with asyncio.timeout_at(job.deadline):
                yield
        except TimeoutError:
            # The prompt leaves ComfyUI when the job closes (abandoned to the janitor).
            raise PromptTimeout(f"The prompt did not finish within {job.deadline_rule}") from None

    def _convert(self, job: Job, spec: ConvertOutput) -> list[OutputFile]:
        converted = []
        for output in job.outputs:
            target = convert_file(output.path, spec)
            if target is None:  # not a still image: passed through unchanged
                converted.append(output)
                continue
            job.files_to_delete.append(target)
            converted.append(OutputFile(output.node_id, target, converted_name(output.name, spec.format)))
        return converted

    async def interrupt(self, job_id: str) -> bool:
        """Interrupt a request: stop it running, or take it out of ComfyUI's queue. False if unknown.

        Whether ComfyUI is up or not: an unknown id never reaches it, and a known one waits on it for
        `_INTERRUPT_WAIT_S` at most."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.interrupt_requested = True
        job.mark_canceling()
        if job.state is JobState.PREPROCESSING:
            job.fail(PromptInterrupted())
        elif job.state is JobState.QUEUED:
            try:
                async with asyncio.timeout(_INTERRUPT_WAIT_S):
                    await self._cancel_in_comfy(job)
            except (ApiError, TimeoutError) as exc:
                # ComfyUI is down, restarting or not answering: the request ends now, and its prompt, abandoned when
                # the job closes, leaves ComfyUI's queue through the janitor once ComfyUI answers again.
                reason = exc.message if isinstance(exc, ApiError) else f"no answer within {_INTERRUPT_WAIT_S:g}s"
                logger.warning(
                    "ComfyUI did not take the interrupt; the request ends now and its prompt is abandoned",
                    extra={"request_id": job.id, "prompt_id": job.prompt_id, "reason": reason},
                )
                job.fail(PromptInterrupted())
        # SUBMITTING: the runner cancels it as soon as ComfyUI has accepted it.
        return True

    async def _wait_for_comfy(self, job: Job) -> None:
        """Wait while ComfyUI restarts; an interrupt ends the wait."""
        while not self._state.comfy_up.is_set() and job.failure is None:
            up = asyncio.ensure_future(self._state.comfy_up.wait())
            woken = asyncio.ensure_future(job.wake.wait())
            try:
                await asyncio.wait({up, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
                woken.cancel()
        job.wake.clear()
        if job.failure is not None:
            raise job.failure

    async def _await_history(self, job: Job) -> dict[str, Any]:
        """Wait for the prompt's final history entry, or what the websocket reported of a success (Job.reported);
        events and the reconciler say when to look."""
        while True:
            await job.wake.wait()
            job.wake.clear()
            if job.failure is not None:
                raise job.failure
            if job.reported is not None:
                return job.reported
            try:
                entry = await self._client.history(job.prompt_id)
            except ComfyUnavailable as exc:
                # ComfyUI's death fails the job through `failure`; anything else is retried on the next wake.
                logger.warning("could not read history", extra={"request_id": job.id, "reason": exc.message})
                continue
            if entry is not None and entry.get("status"):
                return entry
            if job.missing_from_queue:
                if job.interrupt_requested:
                    raise PromptInterrupted()
                raise ComfyUnavailable("ComfyUI dropped the prompt: it is neither queued nor in its history")

    async def _cancel_in_comfy(self, job: Job) -> None:
        running, pending = await take_out(self._client, [job.prompt_id])
        if job.prompt_id not in running and job.prompt_id not in pending:
            job.missing_from_queue = True
            job.wake.set()

    @staticmethod
    def _execution_stats(job: Job, entry: dict[str, Any], submitted_at: int) -> dict[str, Any]:
        start = job.exec_start or message_time(entry, {"execution_start"}) or submitted_at
        end = job.exec_end or message_time(entry, {"execution_success"}) or now_ms()
        return {
            "start": start,
            "end": end,
            "duration": end - start,
            "nodes": {node: {"start": at} for node, at in job.node_starts.items()},
        }

    def _delete_job_files(self, job: Job) -> None:
        delete_files(job.files_to_delete, stop_at=self._settings.outputs_path)
        delete_files(job.input_files, stop_at=self._settings.inputs_path)
        for folder in job.input_dirs:
            shutil.rmtree(folder, ignore_errors=True)
