"""The objects routes need, one dependency each: a route's signature names what it touches. create_app builds them
once per app and keeps them on `app.state`, where these read them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from ..comfy.client import ComfyClient
from ..comfy.events import EventStream
from ..config import Settings
from ..jobstore.writer import RecordWriter
from ..pipeline.delivery import Door
from ..pipeline.jobs import JobRegistry
from ..pipeline.runner import Canceler
from ..state import ServerState
from ..storage.manager import StorageManager
from ..workflows.catalog import Catalog


def _from_app(name: str) -> Callable[[Request], Awaitable[Any]]:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on every request.
    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    return dependency


SettingsDep = Annotated[Settings, Depends(_from_app("settings"))]
ServerStateDep = Annotated[ServerState, Depends(_from_app("server_state"))]
EventsDep = Annotated[EventStream, Depends(_from_app("events"))]
JobsDep = Annotated[JobRegistry, Depends(_from_app("jobs"))]


CancelerDep = Annotated[Canceler, Depends(_from_app("canceler"))]
StorageDep = Annotated[StorageManager, Depends(_from_app("storage"))]
DeliveryDep = Annotated[Door, Depends(_from_app("door"))]
ComfyClientDep = Annotated[ComfyClient, Depends(_from_app("comfy_client"))]
CatalogDep = Annotated[Catalog, Depends(_from_app("catalog"))]
RecordsDep = Annotated[RecordWriter, Depends(_from_app("job_records"))]
