"""Cache names, URL parsing for each provider, and extension discovery."""

from __future__ import annotations

import pytest

from comfyui_api.errors import DownloadError
from comfyui_api.storage.azure import is_azure_url, parse_blob_url
from comfyui_api.storage.base import extension_for_content_type, url_extension
from comfyui_api.storage.cache import cache_key
from comfyui_api.storage.git import parse_git_url, repo_dir_name
from comfyui_api.storage.huggingface import HubFile, parse_hub_url
from comfyui_api.storage.s3 import parse_s3_url


def test_cache_key_matches_the_reference_vector() -> None:
    url = "https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor&size=pruned&fp=fp16"
    assert cache_key(url) == "Pk6VSKLStckZydwGhX0bM8TqaqHEW9yt"


@pytest.mark.parametrize(
    ("url", "extension"),
    [
        ("https://h/a/model.safetensors", ".safetensors"),
        ("https://h/a/My%20Model.SafeTensors?x=1", ".safetensors"),
        ("https://h/api/download/models/123", ""),
        ("s3://b/k/image.png", ".png"),
        ("https://h/a/file.thisisaverylongextension", ""),
    ],
)
def test_url_extension(url: str, extension: str) -> None:
    assert url_extension(url) == extension


def test_extension_for_content_type() -> None:
    assert extension_for_content_type("image/png") == ".png"
    assert extension_for_content_type("image/jpeg; charset=x") == ".jpg"
    assert extension_for_content_type("application/octet-stream") == ".bin"
    assert extension_for_content_type(None) == ""


def test_s3_urls() -> None:
    assert parse_s3_url("s3://bucket/dir/my%20file.png") == ("bucket", "dir/my file.png")
    with pytest.raises(DownloadError):
        parse_s3_url("s3://bucket/")


def test_azure_urls() -> None:
    assert is_azure_url("https://acct.blob.core.windows.net/c/b.png")
    assert is_azure_url("http://127.0.0.1:10000/devstoreaccount1/c/b.png")
    assert not is_azure_url("https://example.com/c/b.png")
    assert parse_blob_url("https://acct.blob.core.windows.net/c/dir/b.png") == ("c", "dir/b.png")
    assert parse_blob_url("http://127.0.0.1:10000/devstoreaccount1/c/b%20x.png") == ("c", "b x.png")
    with pytest.raises(DownloadError):
        parse_blob_url("https://acct.blob.core.windows.net/c")


def test_hugging_face_urls() -> None:
    endpoint = "http://127.0.0.1:9999"
    assert parse_hub_url("https://huggingface.co/org/repo/resolve/main/dir/my%20file.safetensors", endpoint) == HubFile(
        "org/repo", "model", "main", "dir/my file.safetensors"
    )
    assert parse_hub_url(f"{endpoint}/datasets/org/data/resolve/v1.0/x.png?download=true", endpoint) == HubFile(
        "org/data", "dataset", "v1.0", "x.png"
    )
    with pytest.raises(DownloadError):
        parse_hub_url("https://huggingface.co/org/repo/blob/main/x.png", endpoint)


@pytest.mark.parametrize(
    ("url", "base", "ref"),
    [
        ("https://github.com/u/repo", "https://github.com/u/repo", None),
        ("https://github.com/u/repo@v1.2", "https://github.com/u/repo", "v1.2"),
        ("https://github.com/u/repo.git@main", "https://github.com/u/repo.git", "main"),
        ("https://gitlab.com/u/r/-/tree/feat", "https://gitlab.com/u/r", "feat"),
        ("https://gitlab.com/u/r/-/commit/abc1234", "https://gitlab.com/u/r", "abc1234"),
        ("https://github.com/u/repo/tree/dev", "https://github.com/u/repo", "dev"),
        ("https://github.com/u/repo/commit/abc1234", "https://github.com/u/repo", "abc1234"),
        ("https://github.com/u/repo/releases/tag/v1", "https://github.com/u/repo", "v1"),
        ("https://bitbucket.org/u/r/src/main/dir/f", "https://bitbucket.org/u/r", "main"),
        ("https://x.org/u/r/commits/abc", "https://x.org/u/r", "abc"),
        ("https://user:pw@host.com/u/repo", "https://user:pw@host.com/u/repo", None),
    ],
)
def test_git_ref_parsing(url: str, base: str, ref: str | None) -> None:
    assert parse_git_url(url) == (base, ref)


def test_git_repo_folder_name() -> None:
    assert repo_dir_name("https://github.com/u/my-model.git@v1") == "my-model"
    assert repo_dir_name("https://github.com/u/my-model/tree/main") == "my-model"
