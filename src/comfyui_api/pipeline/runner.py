"""The prompt pipeline: preprocess → submit → await → collect → deliver, with cleanup at the end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from ..api.schemas import PromptRequest
from ..comfy.client import ComfyClient
from ..comfy.events import EventStream
from ..config import Settings
from ..errors import ApiError, ComfyUnavailable, PromptInterrupted, PromptTimeout, ShuttingDown
from ..state import ServerState
from ..storage.manager import StorageManager
from .history import message_time, raise_if_failed
from .jobs import Job, JobRegistry, JobState, now_ms
from .outputs import OutputFile, collect_outputs, delete_files, require_present
from .preprocess import Preprocessor, require_saving_node

logger = logging.getLogger(__name__)


class PromptRunner:
    def __init__(
        self,
        settings: Settings,
        client: ComfyClient,
        events: EventStream,
        jobs: JobRegistry,
        state: ServerState,
        storage: StorageManager,
    ) -> None:
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
        )
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, request: PromptRequest) -> dict[str, Any]:
        """Run one prompt to completion and return the synchronous response body."""
        if self._state.draining:
            raise ShuttingDown()
        job = Job(id=request.id)
        self._jobs.add(job)
        outputs: list[OutputFile] = []
        try:
            graph = request.graph()
            require_saving_node(graph)
            await self._preprocessor.run(graph, job, request.credentials)
            preprocessed_at = now_ms()
            entry = await self._execute(job, graph)
            job.state = JobState.COLLECTING
            # Collected before the verdict: a failed prompt's partial outputs are deleted too.
            outputs = collect_outputs(entry, self._settings.outputs_path, job.executed_nodes)
            raise_if_failed(entry)
            require_present(outputs)
            collected_at = now_ms()
            # The post-processing stage (output conversion) is timed between these marks; none is requested here.
            postprocessed_at = now_ms()
            images = await asyncio.to_thread(_encode_files, [output.path for output in outputs])
            delivered_at = now_ms()
            logger.info(
                "prompt completed",
                extra={"request_id": job.id, "prompt_id": job.prompt_id, "outputs": len(outputs)},
            )
            return {
                "prompt": graph,
                "id": job.id,
                "images": images,
                "filenames": [output.name for output in outputs],
                "stats": {
                    "comfy_execution": self._execution_stats(job, entry, preprocessed_at),
                    "preprocess_time": preprocessed_at - job.received_at,
                    "comfy_round_trip_time": collected_at - preprocessed_at,
                    "postprocess_time": postprocessed_at - collected_at,
                    "upload_time": delivered_at - postprocessed_at,
                    "total_time": delivered_at - job.received_at,
                },
            }
        except ApiError as exc:
            logger.warning(
                "prompt failed",
                extra={"request_id": job.id, "status": exc.status_code, "error": exc.message},
            )
            raise
        finally:
            self._jobs.remove(job)
            for download in job.downloads:
                self._storage.release(download)
            await asyncio.to_thread(self._delete_job_files, job, outputs)
            if job.state in (JobState.QUEUED, JobState.COLLECTING):
                self._forget_history(job.prompt_id)

    async def interrupt(self, job_id: str) -> bool:
        """Interrupt a request: stop it running, or take it out of ComfyUI's queue. False if unknown."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.interrupt_requested = True
        if job.state is JobState.PREPROCESSING:
            job.fail(PromptInterrupted())
        elif job.state is JobState.QUEUED:
            await self._cancel_in_comfy(job)
        # SUBMITTING: the runner cancels it as soon as ComfyUI has accepted it.
        return True

    async def _execute(self, job: Job, graph: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._settings.prompt_timeout_s):
                await self._wait_for_comfy(job)
                job.state = JobState.SUBMITTING
                await self._client.queue_prompt(graph, prompt_id=job.prompt_id, client_id=self._events.client_id)
                job.state = JobState.QUEUED
                logger.debug("prompt queued", extra={"request_id": job.id, "prompt_id": job.prompt_id})
                if job.interrupt_requested:
                    await self._cancel_in_comfy(job)
                return await self._await_history(job)
        except TimeoutError:
            if job.state is JobState.QUEUED:
                with contextlib.suppress(ApiError):
                    await self._cancel_in_comfy(job)
            raise PromptTimeout(
                f"The prompt did not finish within PROMPT_TIMEOUT_S={self._settings.prompt_timeout_s:g}s"
            ) from None

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
        """Wait for the prompt's final history entry; events and the reconciler say when to look."""
        while True:
            await job.wake.wait()
            job.wake.clear()
            if job.failure is not None:
                raise job.failure
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
        await self._client.delete_from_queue([job.prompt_id])
        await self._client.interrupt(job.prompt_id)
        running, pending = await self._client.queue()
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

    def _delete_job_files(self, job: Job, outputs: list[OutputFile]) -> None:
        delete_files((output.path for output in outputs), stop_at=self._settings.outputs_path)
        delete_files(job.input_files, stop_at=self._settings.inputs_path)
        for folder in job.input_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    def _forget_history(self, prompt_id: str) -> None:
        """Drop the history entry in the background, so ComfyUI's memory stays bounded."""

        async def forget() -> None:
            try:
                await self._client.delete_history([prompt_id])
            except ApiError as exc:
                logger.debug("could not delete a history entry", extra={"reason": exc.message})

        task = asyncio.create_task(forget())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _encode_files(paths: list[Path]) -> list[str]:
    return [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths]
