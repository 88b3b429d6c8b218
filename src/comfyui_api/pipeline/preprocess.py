"""Rewrite a prompt before queueing: random seeds, output filename prefixes and inline or remote media inputs.

Nodes are visited in key order and each matches at most one rule, as in the reference server.
"""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ..errors import BadRequest, DownloadError, InputError, MissingAsset
from ..storage.auth import Credential, match_credentials
from ..storage.manager import StorageManager
from ..storage.staging import stage_file
from ..urls import redact_url
from .inputs import MediaInputs
from .jobs import Job
from .models import GIT_LOADERS, MODEL_LOADERS, MODEL_URL_SCHEMES

VIDEO_NODES = frozenset(
    {"LoadVideo", "VHS_LoadVideo", "VHS_LoadVideoPath", "VHS_LoadVideoFFmpegPath", "VHS_LoadVideoFFmpeg"}
)
DIRECTORY_NODES = frozenset({"VHS_LoadImages", "VHS_LoadImagesPath"})

NO_SAVING_NODE = 'Prompt must contain a node with a "filename_prefix" input, such as "SaveImage"'


def is_saving_node(inputs: dict[str, Any]) -> bool:
    prefix = inputs.get("filename_prefix")
    return isinstance(prefix, str) and prefix != ""


def saves_output(inputs: dict[str, Any]) -> bool:
    """A saving node counts as an output unless it says `save_output: false` (VHS style)."""
    return is_saving_node(inputs) and ("save_output" not in inputs or bool(inputs["save_output"]))


# Deeper input values kill ComfyUI's prompt worker (its validation recurses), wedging the instance; no real
# graph comes near this.
MAX_INPUT_DEPTH = 64
# What ComfyUI appends to a saving node's prefix: "_00001_.png" and the like, with room for longer extensions.
_SAVED_NAME_SUFFIX_BYTES = 20
_UNSAFE_PREFIX_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")


def require_saving_node(prompt: dict[str, dict[str, Any]]) -> None:
    if not any(saves_output(node["inputs"]) for node in prompt.values()):
        raise BadRequest(NO_SAVING_NODE, location="prompt")


# An input no node declares: ComfyUI passes it to no node, but its cache key includes it.
RUN_INPUT = "comfyui_api_run"


def unique_to_cache(prompt: dict[str, dict[str, Any]], run_id: str) -> dict[str, dict[str, Any]]:
    """The graph to queue: each saving node carries this run's id as an extra input, so that ComfyUI's cache never
    answers a repeated graph (the same id and graph sent twice) with the earlier run's outputs, which were deleted
    after delivery. File names and the graph echoed to the client stay as they are."""
    return {
        node_id: {**node, "inputs": {**node["inputs"], RUN_INPUT: run_id}} if saves_output(node["inputs"]) else node
        for node_id, node in prompt.items()
    }


def check_inputs(prompt: dict[str, dict[str, Any]]) -> None:
    """A 400 at the input for what ComfyUI cannot take: values nested deeper than MAX_INPUT_DEPTH, and saving
    prefixes that could leave the output folder or not fit a file name."""
    for node_id, node in prompt.items():
        # `_meta` goes to ComfyUI with the graph (and comes back in every echo): it is held to the same depth.
        if _depth(node.get("_meta")) > MAX_INPUT_DEPTH:
            raise _invalid(f"prompt.{node_id}._meta", f"nested deeper than {MAX_INPUT_DEPTH} levels")
        for name, value in node["inputs"].items():
            location = f"prompt.{node_id}.inputs.{name}"
            if _depth(value) > MAX_INPUT_DEPTH:
                raise _invalid(location, f"nested deeper than {MAX_INPUT_DEPTH} levels")
            if name == "filename_prefix" and isinstance(value, str):
                _check_prefix(value, location)


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_INPUT_DEPTH:
                return depth
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_prefix(prefix: str, location: str) -> None:
    if _UNSAFE_PREFIX_CHAR.search(prefix) or prefix.startswith("/") or ".." in prefix.split("/"):
        raise _invalid(
            location,
            "must be a file name or a relative sub-folder path, without '..', '\\', a leading '/' "
            "or control characters",
        )


def _invalid(location: str, reason: str) -> BadRequest:
    """A 400 at an input of the graph, its location leading the message."""
    return BadRequest(f"{location}: {reason}", location=location)


# A seed of -1 asks for a random one, as popular ComfyUI clients do. ComfyUI's samplers take seeds up to 2**64 - 1,
# but JavaScript reads a JSON number above 2**53 inexactly: a seed drawn below that is echoed (and re-serialised by a
# JavaScript receiver verifying a webhook signature) exactly as it ran.
RANDOM_SEED = -1
MAX_RANDOM_SEED = 2**53 - 1
SEED_INPUTS = ("seed", "noise_seed")
_seeds = random.Random()


def random_seed(rng: random.Random = _seeds) -> int:
    return rng.randint(0, MAX_RANDOM_SEED)


def replace_random_seeds(prompt: dict[str, dict[str, Any]], rng: random.Random = _seeds) -> None:
    """Give every `seed` or `noise_seed` input of -1, in any node, a random seed (in place, so the echo shows it)."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name in SEED_INPUTS:
            value = inputs.get(name)
            # -1.0 counts too: a JSON client may write the number either way.
            if isinstance(value, int | float) and value == RANDOM_SEED:
                inputs[name] = random_seed(rng)


def rewrite_prefix(prefix: str, job_id: str, prepend: bool) -> str:
    return f"{job_id}_{prefix}" if prepend else job_id


ASSET_TYPE = "core/ASSET"


class AssetSource(Protocol):
    """Where `core/ASSET` references in a graph are resolved: the v2 asset store (v2/assets.py)."""

    async def stage_asset(self, asset_id: str, folder: Path) -> str | None:
        """Place the asset's bytes in `folder` (a hard link or copy); the file's name, or None when no asset has
        this id."""


def is_asset_reference(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type") == ASSET_TYPE


class Preprocessor:
    def __init__(
        self,
        *,
        input_dir: Path,
        output_dir: Path,
        model_dir: Path,
        prepend_filenames: bool,
        storage: StorageManager | None = None,
        allowed_dirs: tuple[Path, ...] = (),
        assets: AssetSource | None = None,
        rng: random.Random = _seeds,
    ) -> None:
        self._assets = assets
        self._input_dir = input_dir
        self._output_dir = output_dir
        self._model_dir = model_dir
        self._prepend = prepend_filenames
        self._storage = storage
        self._media = MediaInputs(input_dir, output_dir, allowed_dirs=allowed_dirs)
        self._rng = rng

    async def run(
        self, prompt: dict[str, dict[str, Any]], job: Job, credentials: list[Credential] | None = None
    ) -> None:
        """Rewrite `prompt` in place; files and downloads are recorded on the job for cleanup."""
        check_inputs(prompt)
        replace_random_seeds(prompt, self._rng)
        run = _Run(job, credentials, self._input_dir, self._model_dir, self._storage, self._media)
        for node_id, node in prompt.items():
            inputs: dict[str, Any] = node["inputs"]
            for name, value in inputs.items():
                if is_asset_reference(value):
                    inputs[name] = await self._asset_input(job, value, f"prompt.{node_id}.inputs.{name}")
            class_type = node["class_type"]
            if is_saving_node(inputs):
                inputs["filename_prefix"] = prefix = rewrite_prefix(inputs["filename_prefix"], job.id, self._prepend)
                if len(prefix.rsplit("/", 1)[-1].encode()) + _SAVED_NAME_SUFFIX_BYTES > 255:
                    raise _invalid(
                        f"prompt.{node_id}.inputs.filename_prefix",
                        "with the request id before it, the file name would be over 255 bytes",
                    )
            elif inputs.get("image") == "":
                raise _invalid(f"prompt.{node_id}.inputs.image", "must not be empty")
            elif isinstance(inputs.get("image"), str):
                await run.media_input(node_id, inputs, ("image",), "image", "image")
            elif class_type in DIRECTORY_NODES and _is_string_list(inputs.get("directory")):
                await run.directory_input(node_id, inputs)
            elif class_type in VIDEO_NODES:
                await run.media_input(node_id, inputs, ("video", "file"), "video", "video")
            elif class_type == "LoadAudio":
                await run.media_input(node_id, inputs, ("audio",), "audio", "audio")
            elif class_type in MODEL_LOADERS:
                await run.model_inputs(node_id, class_type, inputs)

    async def _asset_input(self, job: Job, reference: dict[str, Any], location: str) -> str:
        """A `core/ASSET` reference as the name, relative to the input folder, of the asset's bytes staged there in a
        folder of the job's own (deleted when it ends). `info.id` decides; `hash` and `file_path` are hints only."""
        info = reference.get("info")
        asset_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(asset_id, str) or not asset_id:
            raise MissingAsset("A core/ASSET reference needs info.id, the asset's id", location=location)
        if self._assets is None:
            raise MissingAsset(f"No asset {asset_id!r}: this server holds no assets", location=location)
        folder = self._input_dir / f"{job.id}-assets"
        if folder not in job.input_dirs:
            job.input_dirs.append(folder)
        name = await self._assets.stage_asset(asset_id, folder)
        if name is None:
            raise MissingAsset(f"No asset {asset_id!r} (unknown, deleted or expired)", location=location)
        return f"{folder.name}/{name}"


class _Run:
    """One prompt's preprocessing: downloads carry its credentials and are recorded on its job."""

    def __init__(
        self,
        job: Job,
        credentials: list[Credential] | None,
        input_dir: Path,
        model_dir: Path,
        storage: StorageManager | None,
        media: MediaInputs,
    ) -> None:
        self._job = job
        self._credentials = credentials
        self._input_dir = input_dir
        self._model_dir = model_dir
        self._storage = storage
        self._media = media.fetching_with(self._stage)

    async def _download(self, url: str, folder: Path, *, stage: bool) -> Path:
        if self._storage is None:
            raise DownloadError(f"No storage provider found for URL: {redact_url(url)}")
        download = await self._storage.download(
            url, folder, auth=match_credentials(url, self._credentials), stage=stage
        )
        self._job.downloads.append(download)
        if download.staged:
            self._job.input_files.append(download.link)
        return download.link

    async def _stage(self, url: str, folder: Path) -> Path:
        """A media input: a hard link or copy of the request's own in the input folder (never a symlink)."""
        return await self._download(url, folder, stage=True)

    async def model_inputs(self, node_id: str, class_type: str, inputs: dict[str, Any]) -> None:
        for name, folder in MODEL_LOADERS[class_type].items():
            value = inputs.get(name)
            if not isinstance(value, str) or not value.startswith(MODEL_URL_SCHEMES):
                continue
            target = self._model_dir / folder
            try:
                if class_type in GIT_LOADERS:
                    if self._storage is None:
                        raise DownloadError(f"No storage provider found for URL: {redact_url(value)}")
                    inputs[name] = (await self._storage.clone_repo(value, target)).name
                else:
                    inputs[name] = (await self._download(value, target, stage=False)).name
            except DownloadError as exc:
                raise BadRequest(
                    f"Failed to process model for node {node_id}: {exc}", location=f"prompt.{node_id}.inputs"
                ) from None

    async def media_input(
        self, node_id: str, inputs: dict[str, Any], names: Iterable[str], label: str, location: str
    ) -> None:
        for name in names:
            value = inputs.get(name)
            if not isinstance(value, str) or not value:
                continue
            try:
                inputs[name], written = await self._media.resolve(value)
            except InputError as exc:
                raise BadRequest(
                    f"Failed to download {label} for node {node_id}: {exc}",
                    location=f"prompt.{node_id}.inputs.{location}",
                ) from None
            if written is not None:
                self._job.input_files.append(written)

    async def directory_input(self, node_id: str, inputs: dict[str, Any]) -> None:
        job = self._job
        # A folder of this request's own, created here (so never one that existed before, e.g. `clipspace`), with
        # a name no other request can have; it is deleted when the request ends.
        self._input_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{job.id}-", dir=self._input_dir))
        job.input_dirs.append(folder)
        for entry in inputs["directory"]:
            try:
                existing = self._media.existing_name(entry) or self._media.existing_path(entry)
                if existing is not None:
                    await asyncio.to_thread(stage_file, existing, folder, existing.name, exclusive=True)
                    continue
                value, _ = await self._media.resolve(entry, folder)
                if value == entry:
                    raise InputError(f"{entry!r} is neither a file in the input folder, a URL nor base64 data")
            except (InputError, FileExistsError) as exc:
                raise BadRequest(
                    f"Failed to download images for node {node_id}: {exc}",
                    location=f"prompt.{node_id}.inputs.directory",
                ) from None
        inputs["directory"] = folder.name


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
