"""Turn one media input value (image, video, audio, directory entry) into something ComfyUI can load."""

from __future__ import annotations

import asyncio
import copy
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..errors import DownloadError, InputError, InvalidInlineData
from ..urls import redact_url
from .media import decode_inline, is_data_url, looks_like_base64, sniff_extension

# Downloads a URL into a folder and returns the file's path; provided by the storage layer.
UrlFetcher = Callable[[str, Path], Awaitable[Path]]

_ANNOTATION = re.compile(r"^(?P<name>.*?)\s*\[(?P<kind>input|output)\]$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(value: str) -> bool:
    return _URL.match(value) is not None


_MAX_PATH = 4096


class MediaInputs:
    def __init__(
        self,
        input_dir: Path,
        output_dir: Path,
        fetch_url: UrlFetcher | None = None,
        allowed_dirs: tuple[Path, ...] = (),
    ) -> None:
        self._dirs = {"input": input_dir, "output": output_dir}
        self._input_dir = input_dir
        self._fetch_url = fetch_url
        # Absolute paths may name files under these folders only (any other readable file would reach a loader).
        self._allowed_roots = tuple(folder.resolve() for folder in (input_dir, output_dir, *allowed_dirs))

    def fetching_with(self, fetch_url: UrlFetcher) -> MediaInputs:
        """The same folders and rules, downloading URLs with `fetch_url` (one request's downloads)."""
        media = copy.copy(self)
        media._fetch_url = fetch_url
        return media

    def existing_name(self, value: str) -> Path | None:
        """The file a ComfyUI-style name refers to (`x.png`, `sub/x.png`, `x.png [output]`), if present."""
        match = _ANNOTATION.match(value)
        name, kind = (match["name"], match["kind"]) if match else (value, "input")
        if not name or "\x00" in name or len(name) >= _MAX_PATH:
            return None
        base = self._dirs[kind].resolve()
        candidate = _existing_file(base / name)
        return candidate if candidate is not None and candidate.is_relative_to(base) else None

    def existing_path(self, value: str) -> Path | None:
        """The file an absolute or ./-relative path names (reference compatibility), if present under INPUT_DIR,
        OUTPUT_DIR or INPUT_ALLOWED_DIRS (symlinks resolved): any other readable file would reach a loader."""
        resolved = self._path(value)
        return resolved if resolved is not None and self._allowed(resolved) and resolved.is_file() else None

    def _path(self, value: str) -> Path | None:
        if not value.startswith(("/", "./", "../")) or "\x00" in value or len(value) >= _MAX_PATH:
            return None
        try:
            return Path(value).resolve()
        except (OSError, RuntimeError):  # a name too long, a symlink loop
            return None

    def _allowed(self, path: Path) -> bool:
        return any(path.is_relative_to(root) for root in self._allowed_roots)

    def _path_error(self, value: str) -> InputError:
        resolved = self._path(value)
        if resolved is not None and not self._allowed(resolved):
            return InputError(
                f"Local file not allowed: {value}: only files under INPUT_DIR, OUTPUT_DIR or INPUT_ALLOWED_DIRS "
                "can be used"
            )
        return InputError(f"Local file not found: {value}")

    async def resolve(self, value: str, dest_dir: Path | None = None) -> tuple[str, Path | None]:
        """The value to give ComfyUI, and the file written for this request (to delete later), if any."""
        if self.existing_name(value) is not None:
            return value, None
        if is_url(value):
            if self._fetch_url is None:
                raise InputError(f"No storage provider found for URL: {redact_url(value)}")
            try:
                path = await self._fetch_url(value, dest_dir or self._input_dir)
            except DownloadError as exc:
                raise InputError(str(exc)) from None
            return str(path), None
        local = self.existing_path(value)
        if local is not None:
            return str(local), None
        if is_data_url(value) or looks_like_base64(value):
            path = await asyncio.to_thread(self._write_inline, value, dest_dir or self._input_dir)
            return str(path), path
        if value.startswith(("/", "./", "../")):
            raise self._path_error(value)
        # Anything else is a name for ComfyUI to validate, with its own error if it is wrong.
        return value, None

    @staticmethod
    def _write_inline(value: str, folder: Path) -> Path:
        try:
            data = decode_inline(value)
        except InvalidInlineData as exc:
            raise InputError(f"Failed to parse base64 encoded file: {exc}") from None
        extension = sniff_extension(data)
        if extension is None:
            raise InputError("Failed to parse base64 encoded file: Could not determine file type from base64 data")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4()}.{extension}"
        temporary = path.with_name(f".{path.name}.part")
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
        return path


def _existing_file(path: Path) -> Path | None:
    try:
        resolved = path.resolve()
        return resolved if resolved.is_file() else None
    except OSError:  # e.g. a name too long for the file system
        return None
