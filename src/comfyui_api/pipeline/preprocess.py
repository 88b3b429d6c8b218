"""Rewrite a prompt before queueing: output filename prefixes and inline or remote media inputs.

Nodes are visited in key order and each matches at most one rule, as in the reference server.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from .inputs import InputError, MediaInputs
from .jobs import Job

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


def require_saving_node(prompt: dict[str, dict[str, Any]]) -> None:
    if not any(saves_output(node["inputs"]) for node in prompt.values()):
        raise BadRequest(NO_SAVING_NODE, location="prompt")


def rewrite_prefix(prefix: str, job_id: str, prepend: bool) -> str:
    return f"{job_id}_{prefix}" if prepend else job_id


class Preprocessor:
    def __init__(self, media: MediaInputs, input_dir: Path, *, prepend_filenames: bool) -> None:
        self._media = media
        self._input_dir = input_dir
        self._prepend = prepend_filenames

    async def run(self, prompt: dict[str, dict[str, Any]], job: Job) -> None:
        """Rewrite `prompt` in place; files written for the job are recorded on it for cleanup."""
        for node_id, node in prompt.items():
            inputs: dict[str, Any] = node["inputs"]
            class_type = node["class_type"]
            if is_saving_node(inputs):
                inputs["filename_prefix"] = rewrite_prefix(inputs["filename_prefix"], job.id, self._prepend)
            elif isinstance(inputs.get("image"), str):
                await self._media_input(job, node_id, inputs, ("image",), "image", "image")
            elif class_type in DIRECTORY_NODES and _is_string_list(inputs.get("directory")):
                await self._directory_input(job, node_id, inputs)
            elif class_type in VIDEO_NODES:
                await self._media_input(job, node_id, inputs, ("video", "file"), "video", "video")
            elif class_type == "LoadAudio":
                await self._media_input(job, node_id, inputs, ("audio",), "audio", "audio")

    async def _media_input(
        self, job: Job, node_id: str, inputs: dict[str, Any], names: Iterable[str], label: str, location: str
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
                job.input_files.append(written)

    async def _directory_input(self, job: Job, node_id: str, inputs: dict[str, Any]) -> None:
        folder = self._input_dir / job.id
        job.input_dirs.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for entry in inputs["directory"]:
            try:
                existing = self._media.existing_name(entry) or self._media.existing_path(entry)
                if existing is not None:
                    (folder / existing.name).symlink_to(existing)
                    continue
                value, _ = await self._media.resolve(entry, folder)
                if value == entry:
                    raise InputError(f"{entry!r} is neither a file in the input folder, a URL nor base64 data")
            except (InputError, FileExistsError) as exc:
                raise BadRequest(
                    f"Failed to download images for node {node_id}: {exc}",
                    location=f"prompt.{node_id}.inputs.directory",
                ) from None
        inputs["directory"] = job.id


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
