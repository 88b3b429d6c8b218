"""Git repositories (DiffusersLoader models, custom nodes): ref parsing and shallow clones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DownloadError
from ..urls import redact_url, url_port

_SHA = re.compile(r"^[0-9a-f]{7,40}$")

# The reference server's URL forms, first match wins: (pattern, group holding the ref).
_REF_FORMS = (
    re.compile(r"^(?P<base>.+?)@(?P<ref>[^/@]+)$"),  # npm/pip style: <repo>@<ref>
    re.compile(r"^(?P<base>.+?)/-/tree/(?P<ref>.+)$"),  # GitLab
    re.compile(r"^(?P<base>.+?)/-/commit/(?P<ref>[^/]+)$"),  # GitLab
    re.compile(r"^(?P<base>.+?)/tree/(?P<ref>.+)$"),  # GitHub
    re.compile(r"^(?P<base>.+?)/commit/(?P<ref>[^/]+)$"),
    re.compile(r"^(?P<base>.+?)/releases/tag/(?P<ref>[^/]+)$"),
    re.compile(r"^(?P<base>.+?)/src/(?P<ref>[^/]+)(?:/.*)?$"),  # Bitbucket
    re.compile(r"^(?P<base>.+?)/commits/(?P<ref>[^/]+)$"),
)


def parse_git_url(url: str) -> tuple[str, str | None]:
    """(repository URL, ref or None). The `@` form must not be mistaken for URL user-info."""
    scheme, separator, rest = url.partition("://")
    for form in _REF_FORMS:
        match = form.match(rest if separator else url)
        if match and "/" in match["base"]:
            base = f"{scheme}{separator}{match['base']}" if separator else match["base"]
            return base, match["ref"]
    return url, None


def repo_dir_name(url: str) -> str:
    base, _ = parse_git_url(url)
    name = base.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not name or name in (".", ".."):
        raise DownloadError(f"Cannot name a folder after the git URL {redact_url(url)}")
    return name


# For URLs named in a request: http(s) only (no file://, ssh or ext:: helpers), and no redirects (whose target
# would escape the URL guard's check).
REQUEST_URL_CONFIG = {
    "protocol.allow": "never",
    "protocol.http.allow": "always",
    "protocol.https.allow": "always",
    "http.followRedirects": "false",
}


def pinned_resolve(url: str, address: str | None) -> dict[str, str]:
    """git (libcurl) configuration that connects to `address`, the one the URL guard checked, for the URL's host:
    git resolves names itself, and a second answer could point elsewhere (DNS rebinding). Nothing for None."""
    if address is None:
        return {}
    base, _ = parse_git_url(url)
    parts = urlsplit(base)
    shown = f"[{address}]" if ":" in address else address
    return {"http.curloptResolve": f"{parts.hostname}:{url_port(parts)}:{shown}"}


# One git command (a clone, a fetch) may take this long: a stalled server must not hold a repository's lock for
# ever.
GIT_TIMEOUT_S = 600.0


def _config_env(config: dict[str, str]) -> dict[str, str]:
    env = {"GIT_CONFIG_COUNT": str(len(config))}
    for index, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


async def _git(*args: str, cwd: Path | None = None, config: dict[str, str] | None = None) -> None:
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Never wait for a password on a terminal nobody watches.
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **_config_env(config or {})},
        # A group of its own: git's helpers (git-remote-https) hold the output pipe, and must die with it.
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(GIT_TIMEOUT_S):
            output, _ = await process.communicate()
    except BaseException as exc:
        # Timed out, or the request's deadline cancelled us: git must not go on without an owner.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(process.wait())
        if isinstance(exc, TimeoutError):
            raise DownloadError(f"git {args[0]} did not finish within {GIT_TIMEOUT_S:g} s") from None
        raise
    if process.returncode != 0:
        message = output.decode(errors="replace").strip().splitlines()
        raise DownloadError(f"git {args[0]} failed: {message[-1] if message else process.returncode}")


async def clone(url: str, destination: Path, *, config: dict[str, str] | None = None) -> None:
    """A shallow clone of `url` at its ref into `destination` (which must not exist); atomic. `config` is git
    configuration for every git command of the clone."""
    base, ref = parse_git_url(url)
    staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
    try:
        if ref is None or not _SHA.match(ref):
            branch = ["--branch", ref] if ref else []
            await _git("clone", "--depth", "1", "--quiet", *branch, base, str(staging), config=config)
        else:
            staging.mkdir(parents=True)
            await _git("init", "--quiet", cwd=staging)
            await _git("remote", "add", "origin", base, cwd=staging)
            await _git("fetch", "--depth", "1", "--quiet", "origin", ref, cwd=staging, config=config)
            await _git("checkout", "--quiet", "FETCH_HEAD", cwd=staging)
        staging.rename(destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
