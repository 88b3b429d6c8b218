"""Hugging Face Hub files (`.../resolve/<rev>/<path>` URLs) through huggingface_hub, in worker threads."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import AccessDenied, DownloadError, UploadError
from ..urls import redact_url, redact_urls_in
from .auth import BearerAuth, DownloadAuth

PUBLIC_HUB = "https://huggingface.co"


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    repo_type: str
    revision: str
    path: str


def parse_hub_url(url: str, endpoint: str) -> HubFile:
    """`<endpoint>/[datasets/|spaces/]<org>/<repo>/resolve/<revision>/<path>`, path percent-decoded."""
    for base in (endpoint.rstrip("/"), PUBLIC_HUB):
        if url.startswith(base + "/"):
            rest = urlsplit(url[len(base) :]).path.lstrip("/")
            break
    else:
        raise DownloadError(f"Not a Hugging Face URL: {redact_url(url)}")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space")):
        if rest.startswith(prefix):
            repo_type, rest = kind, rest[len(prefix) :]
    segments = rest.split("/")
    if len(segments) < 5 or segments[2] != "resolve" or not segments[-1]:
        raise DownloadError(f"Invalid Hugging Face URL (expected <repo>/resolve/<revision>/<path>): {redact_url(url)}")
    return HubFile(
        repo_id=f"{segments[0]}/{segments[1]}",
        repo_type=repo_type,
        revision=unquote(segments[3]),
        path=unquote("/".join(segments[4:])),
    )


class HuggingFaceProvider:
    name = "huggingface"

    def __init__(self, endpoint: str, token: str | None, scratch_dir: Path) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._token = token
        self._scratch_dir = scratch_dir

    def matches(self, url: str) -> bool:
        return url.startswith((PUBLIC_HUB + "/", self._endpoint + "/"))

    def outgoing_urls(self, url: str, auth: DownloadAuth | None) -> list[str]:
        return []  # every Hub URL is fetched from HF_ENDPOINT, which the operator configured

    def _token_for(self, auth: DownloadAuth | None) -> str | bool | None:
        if isinstance(auth, BearerAuth):
            return auth.token.get_secret_value()
        if auth is not None:
            raise DownloadError(f"Auth type {auth.type!r} does not apply to Hugging Face URLs (use bearer)")
        return self._token or None

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        file = parse_hub_url(url, self._endpoint)
        token = self._token_for(auth)

        def fetch() -> None:
            # A private scratch folder on the cache's file system: the file is then moved, not copied,
            # and huggingface_hub's own cache never holds a second copy.
            self._scratch_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self._scratch_dir) as scratch:
                local = hf_hub_download(
                    file.repo_id,
                    file.path,
                    repo_type=file.repo_type,
                    revision=file.revision,
                    token=token,
                    endpoint=self._endpoint,
                    local_dir=scratch,
                )
                shutil.move(os.path.realpath(local), destination)

        await _call(url, fetch)
        return None

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        file = parse_hub_url(url, self._endpoint)
        api = HfApi(endpoint=self._endpoint, token=self._token or None)

        def put() -> None:
            api.create_repo(file.repo_id, repo_type=file.repo_type, exist_ok=True)
            api.upload_file(
                path_or_fileobj=str(source),
                path_in_repo=file.path,
                repo_id=file.repo_id,
                repo_type=file.repo_type,
                revision=file.revision,
                commit_message=f"Upload {file.path}",
            )

        try:
            await _call(url, put)
        except DownloadError as exc:
            raise UploadError(str(exc)) from None

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        file = parse_hub_url(url, self._endpoint)
        token = self._token_for(auth)
        location = hf_hub_url(
            file.repo_id, file.path, repo_type=file.repo_type, revision=file.revision, endpoint=self._endpoint
        )
        await _call(url, lambda: get_hf_file_metadata(location, token=token, endpoint=self._endpoint))


async def _call(url: str, function: Callable[[], object]) -> None:
    try:
        await asyncio.to_thread(function)
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        # The Hub answers 401/404 alike for a private repo without access and for a missing one.
        raise AccessDenied(
            f"Hugging Face repository not found or access denied: {redact_url(url)} ({type(exc).__name__})"
        ) from None
    except RevisionNotFoundError:
        raise DownloadError(f"Hugging Face revision not found: {redact_url(url)}") from None
    except EntryNotFoundError:
        raise DownloadError(f"Hugging Face file not found: {redact_url(url)}") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"Hugging Face error for {redact_url(url)}: {redact_urls_in(str(exc))}") from None
    except httpx2.HTTPError as exc:  # huggingface_hub's HTTP client: the Hub unreachable, a timeout
        raise DownloadError(
            f"Hugging Face request failed for {redact_url(url)}: {type(exc).__name__}: {redact_urls_in(str(exc))}"
        ) from None
    except OSError as exc:
        raise DownloadError(f"Hugging Face download failed for {redact_url(url)}: {redact_urls_in(str(exc))}") from None
