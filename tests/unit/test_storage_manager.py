"""The storage manager: provider choice, links into target folders, storage events, git clones."""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.config import Settings
from comfyui_api.errors import DownloadError, UnsafeUrl
from comfyui_api.storage import manager as manager_module
from comfyui_api.storage.cache import cache_key
from comfyui_api.storage.git import REQUEST_URL_CONFIG, clone, pinned_resolve
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
    # A request's URL is refused by its scheme before any provider is looked for.
    with pytest.raises(UnsafeUrl, match=r"^ftp://h/x: only http, https and s3 URLs are allowed, not ftp:$"):
        await manager.download("ftp://h/x", tmp_path)
    # An operator's URL skips that check, and still needs a provider.
    with pytest.raises(DownloadError, match="No storage provider found for URL: ftp://h/x"):
        await manager.download("ftp://h/x", tmp_path, trusted=True)
    assert [provider.name for provider in manager.providers] == ["s3", "huggingface", "http"]
    assert not any(tmp_path.glob("x*"))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://user:pw@h/x?sig=secret", "ftp://h/x?<redacted>: only http, https and s3 URLs are allowed, not ftp:"),
        ("file:///etc/passwd", "file:///etc/passwd: only http, https and s3 URLs are allowed, not file:"),
        ("/etc/passwd", "/etc/passwd: only http, https and s3 URLs are allowed, not ?:"),
        ("http://exa mple/x", "http://exa mple/x is not a valid URL: the URL's host contains a space"),
        ("http://h:99999/x", "is not a valid URL: the URL cannot be parsed"),
    ],
)
async def test_check_url_refuses_malformed_urls_and_other_schemes(
    storage: tuple[StorageManager, list[Any]], url: str, reason: str
) -> None:
    manager, _ = storage
    with pytest.raises(UnsafeUrl) as caught:
        await manager.check_url(url)
    assert reason in str(caught.value)
    assert "pw" not in str(caught.value) and "secret" not in str(caught.value)


async def test_a_request_url_to_a_private_address_is_refused_before_any_connection(tmp_path: Path) -> None:
    manager = StorageManager(Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path / "comfy"), UrlGuard())
    with FileServer(tmp_path) as files:
        url = files.url.replace("http://", "http://user:pw@") + "/model.safetensors?sig=secret"
        with pytest.raises(UnsafeUrl) as caught:
            await manager.download(url, tmp_path / "loras")
        assert files.log == []
    await manager.aclose()
    message = str(caught.value)
    assert message.startswith(f"{files.url}/model.safetensors?<redacted> resolves to a loopback address")
    assert "pw" not in message and "secret" not in message
    assert not (tmp_path / "loras").exists()


async def test_a_staged_download_is_a_file_of_its_own_in_the_target_folder(
    tmp_path: Path, files: FileServer, storage: tuple[StorageManager, list[Any]]
) -> None:
    manager, events = storage
    url = f"{files.url}/model.safetensors"
    first = await manager.download(url, tmp_path / "input", stage=True)
    second = await manager.download(url, tmp_path / "input", stage=True)
    for staged in (first, second):
        assert staged.staged and staged.link.parent == tmp_path / "input"
        assert re.fullmatch(rf"{cache_key(url)}-[0-9a-f]{{32}}\.safetensors", staged.link.name)
        assert not staged.link.is_symlink() and staged.link.read_bytes() == b"weights"
        assert os.path.samefile(staged.link, staged.target)  # a hard link (the cache is on the same file system)
    assert first.link != second.link and first.target == second.target
    assert first.downloaded and not second.downloaded and len(events) == 1
    assert events[0][1]["local_path"] == str(first.link)
    unstaged = await manager.download(url, tmp_path / "models")
    assert not unstaged.staged and unstaged.link.is_symlink()


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
    folder = await manager.clone_repo(url, tmp_path / "diffusers", trusted=True)  # file:// only when trusted
    assert folder == tmp_path / "diffusers" / "diffusion-model"
    assert (folder / "model_index.json").read_text() == f'{{"version": {version}}}'
    assert git("rev-list", "--count", "HEAD", cwd=folder) == "1"  # shallow


async def test_concurrent_clones_of_one_repository_make_one_folder(
    tmp_path: Path, storage: tuple[StorageManager, list[Any]], repository: tuple[Path, str]
) -> None:
    manager, _ = storage
    url = f"file://{repository[0]}"
    folders = await asyncio.gather(*(manager.clone_repo(url, tmp_path / "diffusers", trusted=True) for _ in range(3)))
    assert len(set(folders)) == 1
    assert sorted(path.name for path in (tmp_path / "diffusers").iterdir()) == ["diffusion-model"]


async def test_a_bad_git_url_is_a_download_error(tmp_path: Path, storage: tuple[StorageManager, list[Any]]) -> None:
    manager, _ = storage
    with pytest.raises(DownloadError, match="git clone failed"):
        await manager.clone_repo(f"file://{tmp_path}/missing.git", tmp_path / "diffusers", trusted=True)
    assert not (tmp_path / "diffusers" / "missing").exists()


@pytest.mark.parametrize("prefix", ["file://", "ssh://git@localhost", "git@localhost:"])
async def test_a_request_git_url_other_than_http_is_refused(
    tmp_path: Path, storage: tuple[StorageManager, list[Any]], repository: tuple[Path, str], prefix: str
) -> None:
    manager, _ = storage
    with pytest.raises(UnsafeUrl, match="only http and https URLs are allowed for a git repository"):
        await manager.clone_repo(f"{prefix}{repository[0]}", tmp_path / "diffusers")
    assert not (tmp_path / "diffusers").exists()


class GitServer:
    """Git's smart HTTP protocol on loopback (`git http-backend` as a CGI program) for the repositories under
    `root`; with `redirect_to`, every request is answered with a 302 to the same path there instead."""

    def __init__(self, root: Path, redirect_to: str | None = None) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "PATH": os.environ.get("PATH", ""),
                    "GIT_PROJECT_ROOT": str(root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "REMOTE_ADDR": "127.0.0.1",
                }
                output = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, content = output.partition(b"\r\n\r\n")
                headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
                status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() != "status":
                        self.send_header(name, value.strip())
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> GitServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize(("suffix", "version"), [("", 2), ("@v1", 1), ("@FIRST", 1)])
async def test_a_request_git_url_over_http_is_cloned(
    tmp_path: Path, storage: tuple[StorageManager, list[Any]], repository: tuple[Path, str], suffix: str, version: int
) -> None:
    manager, _ = storage  # its guard lets loopback through
    bare, first = repository
    with GitServer(bare.parent) as server:
        url = f"{server.url}/{bare.name}{suffix.replace('FIRST', first)}"
        folder = await manager.clone_repo(url, tmp_path / "diffusers")
    assert folder == tmp_path / "diffusers" / "diffusion-model"
    assert (folder / "model_index.json").read_text() == f'{{"version": {version}}}'
    assert git("rev-list", "--count", "HEAD", cwd=folder) == "1"  # shallow


async def test_a_request_git_url_is_cloned_without_following_redirects(
    tmp_path: Path, storage: tuple[StorageManager, list[Any]], repository: tuple[Path, str]
) -> None:
    """A redirect's target would escape the URL guard's check; an operator's URL may still redirect."""
    manager, _ = storage
    bare, _ = repository
    with GitServer(bare.parent) as server, GitServer(bare.parent, redirect_to=server.url) as redirector:
        url = f"{redirector.url}/{bare.name}"
        with pytest.raises(DownloadError, match=r"git clone failed: .*302"):  # the redirect, not followed
            await manager.clone_repo(url, tmp_path / "request")
        assert not (tmp_path / "request" / "diffusion-model").exists()
        folder = await manager.clone_repo(url, tmp_path / "operator", trusted=True)
    assert (folder / "model_index.json").read_text() == '{"version": 2}'


async def test_a_request_git_url_to_a_private_address_is_refused(tmp_path: Path) -> None:
    manager = StorageManager(Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path / "comfy"), UrlGuard())
    with pytest.raises(UnsafeUrl, match=r"^http://127\.0\.0\.1:9/repo\.git resolves to a loopback address"):
        await manager.clone_repo("http://user:pw@127.0.0.1:9/repo.git", tmp_path / "diffusers")
    await manager.aclose()
    assert not (tmp_path / "diffusers").exists()


async def test_git_connects_to_the_address_the_guard_checked(tmp_path: Path, repository: tuple[Path, str]) -> None:
    """git resolves names itself; the pin (libcurl's resolve list) makes it use the checked address. `git.test`
    has no DNS entry at all, so only the pin can make this clone work."""
    bare, _ = repository
    with GitServer(bare.parent) as server:
        port = server.url.rsplit(":", 1)[1]
        url = f"http://git.test:{port}/{bare.name}"
        await clone(url, tmp_path / "pinned", config={**REQUEST_URL_CONFIG, **pinned_resolve(url, "127.0.0.1")})
    assert (tmp_path / "pinned" / "model_index.json").read_text() == '{"version": 2}'


async def test_a_request_git_url_is_pinned_to_its_checked_public_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cloning from a public address cannot run here (no traffic leaves loopback), so the clone itself is replaced
    by a recorder: what is checked is the configuration git would get."""
    recorded: list[dict[str, str] | None] = []

    async def record(url: str, destination: Path, *, config: dict[str, str] | None = None) -> None:
        recorded.append(config)
        destination.mkdir(parents=True)

    monkeypatch.setattr(manager_module, "clone", record)
    guard = UrlGuard(resolver=lambda host, port: ["93.184.216.34"])
    manager = StorageManager(Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path / "comfy"), guard)
    await manager.clone_repo("https://models.test/org/diffusion-model.git@v1", tmp_path / "diffusers")
    await manager.aclose()
    assert recorded == [{**REQUEST_URL_CONFIG, "http.curloptResolve": "models.test:443:93.184.216.34"}]
