"""Find a finished prompt's output files on disk, in order, and delete them afterwards."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ApiError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    path: Path
    # Relative to the output folder: "name.png", or "sub/name.png" for a sub-folder output.
    name: str


def collect_outputs(entry: dict[str, Any], output_dir: Path, node_order: Iterable[str] = ()) -> list[OutputFile]:
    """Every `type: output` file of a history entry: nodes in `node_order` first, then the rest."""
    outputs: dict[str, Any] = entry.get("outputs") or {}
    ordered = [node for node in node_order if node in outputs]
    listed = set(ordered)
    ordered += [node for node in outputs if node not in listed]
    base = output_dir.resolve()
    files: list[OutputFile] = []
    seen: set[Path] = set()
    for node_id in ordered:
        node_outputs = outputs[node_id]
        if not isinstance(node_outputs, dict):
            continue
        for items in node_outputs.values():
            for item in items if isinstance(items, list) else ():
                if not isinstance(item, dict) or not item.get("filename"):
                    continue
                # Temp and preview files are not results; items without a type come from older nodes.
                if item.get("type", "output") != "output":
                    continue
                relative = Path(item.get("subfolder") or "") / str(item["filename"])
                path = (base / relative).resolve()
                if not path.is_relative_to(base) or path in seen:
                    continue
                seen.add(path)
                files.append(OutputFile(node_id=node_id, path=path, name=relative.as_posix()))
    return files


def require_present(files: list[OutputFile]) -> None:
    missing = [file.name for file in files if not file.path.is_file()]
    if missing:
        raise ApiError(f"ComfyUI reported output files that do not exist: {', '.join(missing)}")


def delete_files(paths: Iterable[Path], *, stop_at: Path) -> None:
    """Unlink files, then every folder left empty between them and `stop_at`."""
    folders: set[Path] = set()
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not delete a file", extra={"path": str(path), "reason": str(exc)})
        folders.add(path.parent)
    stop = stop_at.resolve()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder.resolve()
        while current != stop and current.is_relative_to(stop):
            with contextlib.suppress(OSError):
                os.rmdir(current)
            if current.exists():
                break
            current = current.parent
