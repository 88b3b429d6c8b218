"""The storage manager: provider choice, links into target folders, storage events, git clones."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.config import Settings
from comfyui_api.storage.base import DownloadError
from comfyui_api.storage.cache import cache_key
from comfyui_api.storage.manager import StorageManager
from comfyui_api.storage.net import UrlGuard
from tests.support.files import FileServer


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "blob").write_bytes(b"blob")
    with FileServer(root, dispositions={"/blob": "named.ckpt"}) as server:
        yield server


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[tuple[StorageManager, list[tuple[str, dict[str, Any]]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    manager = StorageManager(
        Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path / "comfy"),
        UrlGuard(block_private=False),  # the file server and git repositories are local
        on_event=lambda name, data: events.append((name, data)),
    )
    yield manager, events
    await manager.aclose()


async def test_a_download_is_linked_into_the_target_folder(
    tmp_path: Path, files: FileServer, storage: tuple[StorageManager, list[Any]]
) -> None:
    manager, events = storage
    url = f"{files.url}/model.safetensors"
    result = await manager.download(url, tmp_path / "loras")
    assert result.link == tmp_path / "loras" / f"{cache_key(url)}.safetensors"
    assert result.link.is_symlink() and result.link.read_bytes() == b"weights"
    assert result.target.parent == tmp_path / "cache" and result.downloaded
    assert events == [
        ("file_downloaded", {"url": url, "local_path": str(result.link), "size": 7, "duration": result.duration_s})
    ]
    manager.release(result)
    # A second link to the same cache file under another name: no new download, no new event.
    again = await manager.download(url, tmp_path / "other", filename="mine.safetensors")
    assert again.target == result.target and not again.downloaded and len(events) == 1
    assert (tmp_path / "other" / "mine.safetensors").read_bytes() == b"weights"


async def test_a_filename_without_extension_gets_the_downloaded_one(
    tmp_path: Path, files: FileServer, storage: tuple[StorageManager, list[Any]]
) -> None:
    manager, _ = storage
    result = await manager.download(f"{files.url}/blob", tmp_path / "ckpts", filename="blob")
    assert result.link.name == "blob.ckpt"


async def test_a_stale_link_is_replaced_but_a_real_file_is_left_alone(
    tmp_path: Path, files: FileServer, storage: tuple[StorageManager, list[Any]]
) -> None:
    manager, _ = storage
    target = tmp_path / "loras"
    target.mkdir()
    (target / "dangling.safetensors").symlink_to(tmp_path / "gone")
    (target / "real.safetensors").write_bytes(b"mine")
    url = f"{files.url}/model.safetensors"
    assert (await manager.download(url, target, filename="dangling.safetensors")).link.read_bytes() == b"weights"
    await manager.download(url, target, filename="real.safetensors")
    assert (target / "real.safetensors").read_bytes() == b"mine"


async def test_urls_without_a_provider_are_refused(storage: tuple[StorageManager, list[Any]], tmp_path: Path) -> None:
    manager, _ = storage
    with pytest.raises(DownloadError, match="No storage provider found for URL: ftp://h/x"):
        await manager.download("ftp://h/x", tmp_path)
    assert [provider.name for provider in manager.providers] == ["s3", "huggingface", "http"]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repository(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository with a tagged first commit and a second commit on main."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    git("config", "user.email", "t@example.com", cwd=work)
    git("config", "user.name", "t", cwd=work)
    (work / "model_index.json").write_text('{"version": 1}')
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "one", cwd=work)
    git("tag", "v1", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    (work / "model_index.json").write_text('{"version": 2}')
    git("commit", "--quiet", "-am", "two", cwd=work)
    bare = tmp_path / "diffusion-model.git"
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=tmp_path)
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=bare)
    return bare, first


@pytest.mark.parametrize(("suffix", "version"), [("", 2), ("@v1", 1), ("@main", 2), ("@FIRST", 1)])
async def test_git_urls_are_shallow_clones_at_their_ref(
    tmp_path: Path, storage: tuple[StorageManager, list[Any]], repository: tuple[Path, str], suffix: str, version: int
) -> None:
    manager, _ = storage
    bare, first = repository
    url = f"file://{bare}{suffix.replace('FIRST', first)}"
    folder = await manager.clone_repo(url, tmp_path / "diffusers")
    assert folder == tmp_path / "diffusers" / "diffusion-model"
    assert (folder / "model_index.json").read_text() == f'{{"version": {version}}}'
    assert git("rev-list", "--count", "HEAD", cwd=folder) == "1"  # shallow


async def test_concurrent_clones_of_one_repository_make_one_folder(
    tmp_path: Path, storage: tuple[StorageManager, list[Any]], repository: tuple[Path, str]
) -> None:
    manager, _ = storage
    url = f"file://{repository[0]}"
    folders = await asyncio.gather(*(manager.clone_repo(url, tmp_path / "diffusers") for _ in range(3)))
    assert len(set(folders)) == 1
    assert sorted(path.name for path in (tmp_path / "diffusers").iterdir()) == ["diffusion-model"]


async def test_a_bad_git_url_is_a_download_error(tmp_path: Path, storage: tuple[StorageManager, list[Any]]) -> None:
    manager, _ = storage
    with pytest.raises(DownloadError, match="git clone failed"):
        await manager.clone_repo(f"file://{tmp_path}/missing.git", tmp_path / "diffusers")
    assert not (tmp_path / "diffusers" / "missing").exists()
