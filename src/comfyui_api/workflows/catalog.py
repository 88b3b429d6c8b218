"""What ComfyUI offers right now: model files by folder, samplers and schedulers (from /object_info, so
custom-node samplers count), and the warmup prompt's checkpoint. Each app owns one and refreshes it at startup, on
GET /models and after downloads. Workflow modules read it through `comfyui_api.workflows`, which finds the catalog of
the app serving the current request in a context variable (`current_catalog`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..comfy.client import ComfyClient
from ..errors import ApiError

logger = logging.getLogger(__name__)

# ComfyUI lists custom_nodes among its model folders (every file of every custom node); the reference's answer leaves
# it out (only MODEL_DIR's folders are in its schema), and so does this one. `configs` (checkpoint configs) is listed
# like any other folder, as the reference does.
_NOT_MODELS = {"custom_nodes"}


def combo_options(spec: Any) -> list[str]:
    """The options of a COMBO input in either encoding ComfyUI 0.3.x uses."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):  # classic: [[options...], {config}]
            return [str(option) for option in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):  # v3: ["COMBO", {"options": [...]}]
            return [str(option) for option in spec[1].get("options", [])]
    return []


class Catalog:
    def __init__(self) -> None:
        self.models: dict[str, list[str]] = {}
        self.samplers: list[str] = []
        self.schedulers: list[str] = []
        self.warmup_checkpoint: str | None = None

    async def refresh(self, client: ComfyClient, model_dir: Path) -> None:
        """Read everything again from ComfyUI; a failure keeps the previous lists (and is logged)."""
        try:
            sampler = await client.object_info("KSampler")
            required = sampler.get("input", {}).get("required", {})
            self.samplers = combo_options(required.get("sampler_name")) or self.samplers
            self.schedulers = combo_options(required.get("scheduler")) or self.schedulers
            self.models = await self.read_models(client, model_dir)
        except ApiError as exc:
            logger.warning("could not read ComfyUI's models and samplers", extra={"reason": exc.message})

    async def read_models(self, client: ComfyClient, model_dir: Path) -> dict[str, list[str]]:
        """ComfyUI's folders and files, plus MODEL_DIR folders ComfyUI does not know (listed from disk)."""
        folders = [folder for folder in await client.model_folders() if folder not in _NOT_MODELS]
        listings = await asyncio.gather(*(client.model_files(folder) for folder in folders))
        models = dict(zip(folders, listings, strict=True))
        for folder, files in (await asyncio.to_thread(_disk_folders, model_dir)).items():
            models.setdefault(folder, files)
        self.models = dict(sorted(models.items()))
        return self.models

    def default_checkpoint(self) -> str | None:
        checkpoints = self.models.get("checkpoints", [])
        return self.warmup_checkpoint or (checkpoints[0] if checkpoints else None)


def _disk_folders(model_dir: Path) -> dict[str, list[str]]:
    if not model_dir.is_dir():
        return {}
    found = {}
    for folder in sorted(path for path in model_dir.iterdir() if path.is_dir() and path.name not in _NOT_MODELS):
        found[folder.name] = sorted(
            str(file.relative_to(folder))
            for file in folder.rglob("*")
            if file.is_file() and not file.name.startswith(("put_", "."))
        )
    return found


# A context variable, not a module global: field types shared by every app in the process (workflow modules are
# imported once) must see the catalog of the app at hand, and none at all outside one.
_current: ContextVar[Catalog | None] = ContextVar("comfyui_api_catalog", default=None)


def current_catalog() -> Catalog | None:
    """The catalog of the app serving this request (or mounting its workflows); None elsewhere."""
    return _current.get()


@contextmanager
def using_catalog(catalog: Catalog) -> Iterator[None]:
    """Make `catalog` the current one for the code run inside (tasks started there inherit it)."""
    token = _current.set(catalog)
    try:
        yield
    finally:
        _current.reset(token)
