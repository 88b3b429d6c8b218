"""A real PromptRunner, with its JobRegistry, Janitor and StorageManager, over FakeComfy: what the unit tests of the
runner, delivery and lifecycle drive.

ComfyUI's websocket events reach the registry and the janitor through the listeners EventStream would call
(FakeComfy calls them); the EventStream is not started, only its client id is used (the channel itself is tested in
test_events.py and end to end).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.comfy.events import EventStream
from comfyui_api.config import Settings
from comfyui_api.pipeline.delivery import Delivery
from comfyui_api.pipeline.janitor import Janitor
from comfyui_api.pipeline.jobs import JobRegistry
from comfyui_api.pipeline.request import PromptRequest
from comfyui_api.pipeline.runner import PromptRunner
from comfyui_api.state import ServerState
from comfyui_api.storage.manager import StorageManager
from comfyui_api.storage.net import UrlGuard
from comfyui_api.storage.uploads import Uploader
from comfyui_api.webhooks.sender import WebhookSender
from tests.unit.fake_comfy import FakeComfy

REQUEST_ID = "req-1"
# The file ComfyUI's SaveImage writes for the first image of `request()` (its prefix gets the request id).
OUTPUT = f"{REQUEST_ID}_out_00001_.png"


def request(**fields: Any) -> PromptRequest:
    """A request whose graph makes one image and saves it (node 9), with `fields` beside the prompt."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}},
    }
    return PromptRequest.model_validate({"id": REQUEST_ID, "prompt": graph, **fields})


@dataclass
class Pipeline:
    settings: Settings
    comfy: FakeComfy
    jobs: JobRegistry
    state: ServerState
    janitor: Janitor
    storage: StorageManager
    events: EventStream
    runner: PromptRunner

    @property
    def client(self) -> ComfyClient:
        return cast(ComfyClient, self.comfy)

    @property
    def output_dir(self) -> Path:
        return self.settings.outputs_path

    def queued(self) -> list[str]:
        """The prompt ids sent to ComfyUI, in order."""
        return [call["prompt_id"] for call in self.comfy.named("queue_prompt")]


@contextlib.asynccontextmanager
async def pipeline(
    tmp_path: Path,
    *,
    state: ServerState | None = None,
    events: EventStream | None = None,
    run_janitor: bool = True,
    **settings: Any,
) -> AsyncIterator[Pipeline]:
    """The parts app.py wires, with ComfyUI up (unless `state` says otherwise) and the janitor running unless
    `run_janitor` is false (the lifecycle runs it itself); `settings` override the test settings."""
    for folder in ("input", "output", "models"):
        (tmp_path / folder).mkdir(exist_ok=True)
    built = Settings(
        comfy_home=tmp_path / "comfy",
        cache_dir=tmp_path / "cache",
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "models",
        **settings,
    )
    if state is None:
        state = ServerState()
        state.comfy_up.set()
    comfy = FakeComfy()
    jobs = JobRegistry()
    comfy.subscribe(jobs.dispatch)
    client = cast(ComfyClient, comfy)
    janitor = Janitor(client, built.outputs_path)
    comfy.subscribe(janitor.on_event)
    storage = StorageManager(built, UrlGuard())
    # Never started: nothing dials ComfyUI's websocket.
    events = events or EventStream("ws://127.0.0.1:9/ws")
    runner = PromptRunner(built, client, events, jobs, state, storage, janitor)
    janitor_task = asyncio.create_task(janitor.run()) if run_janitor else None
    try:
        yield Pipeline(built, comfy, jobs, state, janitor, storage, events, runner)
    finally:
        if janitor_task is not None:
            janitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor_task
        await runner.aclose()
        await storage.aclose()


def delivery_for(
    p: Pipeline, *, uploader: object = None, webhooks: object = None, guard: UrlGuard | None = None
) -> Delivery:
    """A Delivery over the pipeline's runner, with stand-ins for the uploader and the webhook sender (None where the
    test needs neither: a base64 answer uses them not at all), the Hub's endpoint and no Azure."""
    return Delivery(
        p.runner,
        cast(Uploader, uploader),
        cast(WebhookSender, webhooks),
        output_dir=p.output_dir,
        hf_endpoint="https://huggingface.co",
        azure_base=None,
        guard=guard or UrlGuard(),
    )
