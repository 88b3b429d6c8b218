"""The objects routes need, built once per app and handed to routes by FastAPI's dependency injection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..comfy.client import ComfyClient
from ..comfy.events import EventStream
from ..config import Settings
from ..pipeline.delivery import Delivery
from ..pipeline.jobs import JobRegistry
from ..pipeline.runner import PromptRunner
from ..state import ServerState
from ..storage.manager import StorageManager


@dataclass
class Services:
    settings: Settings
    state: ServerState
    events: EventStream
    jobs: JobRegistry
    runner: PromptRunner
    storage: StorageManager
    delivery: Delivery
    client: ComfyClient


async def _services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on every request.
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]
