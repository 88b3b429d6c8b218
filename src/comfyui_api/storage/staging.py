"""Placing cached files where ComfyUI reads them.

Inputs are hard links to the cache file (same file system), else copies: ComfyUI 0.28 and later refuse a symlinked
input that resolves outside its input folder. A hard link also keeps the bytes alive when the cache evicts the entry,
so eviction never breaks a running request. Model files stay symlinks into the cache (ComfyUI follows those).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


def stage_file(source: Path, folder: Path, name: str, *, exclusive: bool = False) -> Path:
    """`folder/name` as a hard link to `source`, else a copy, made under a temporary name and renamed into place
    (atomic, so concurrent stagings of one file never see each other's partial copy). `exclusive`: raise
    FileExistsError rather than replace a file already there."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    if exclusive and final.exists():
        raise FileExistsError(f"{name} is listed twice")
    temporary = folder / f".{uuid.uuid4().hex}.part"
    try:
        try:
            os.link(source, temporary)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(source, temporary)
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return final


def unique_name(cached: Path) -> str:
    """A name for one request's staged copy of a cache file: the cache name plus a random part, so requests that
    stage the same file never share (and never delete) each other's copy."""
    return f"{cached.stem}-{uuid.uuid4().hex}{cached.suffix}"


def symlink(link: Path, target: Path) -> None:
    """Point `link` at `target`, replacing a stale link atomically; a real file there is left alone."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    if link.exists() and not link.is_symlink():
        logger.warning("a file already has the link's name; leaving it", extra={"path": str(link)})
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{uuid.uuid4().hex}.link")
    temporary.symlink_to(target)
    os.replace(temporary, link)
