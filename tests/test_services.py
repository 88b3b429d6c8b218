"""Self-tests of the test services (tests/support/): each is a real server that behaves like the real thing."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from uuid import uuid4

import boto3
import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient
from botocore.exceptions import ClientError
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.support.files import FileServer
from tests.support.services import Azurite, FakeHub, SeaweedS3


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:10]}"


# S3 ------------------------------------------------------------------------------------------------


def test_s3_put_get_and_wrong_secret(s3_server: SeaweedS3) -> None:
    bucket = unique("bucket")
    s3_server.create_bucket(bucket)
    s3_server.put(bucket, "dir/my file.png", b"\x89PNG data", ContentType="image/png")
    assert s3_server.get(bucket, "dir/my file.png") == b"\x89PNG data"
    head = s3_server.client().head_object(Bucket=bucket, Key="dir/my file.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == 9

    wrong = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
        region_name=s3_server.region,
    )
    with pytest.raises(ClientError) as caught:
        wrong.get_object(Bucket=bucket, Key="dir/my file.png")
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_s3_env_is_enough_for_a_plain_boto3_client(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = unique("env")
    client = boto3.session.Session().client("s3")  # endpoint, keys and region all from the environment
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert s3_server.get(bucket, "k") == b"v"


# Azure Blob ----------------------------------------------------------------------------------------


def test_azurite_put_get_and_wrong_key(azurite: Azurite) -> None:
    container = unique("container")
    azurite.create_container(container)
    azurite.put(container, "dir/my file.png", b"blob data")
    assert azurite.get(container, "dir/my file.png") == b"blob data"
    assert azurite.blob_endpoint.startswith("http://127.0.0.1:") and azurite.account == "devstoreaccount1"

    wrong_key = base64.b64encode(b"x" * 64).decode()
    wrong = BlobServiceClient(
        azurite.blob_endpoint, credential={"account_name": azurite.account, "account_key": wrong_key}
    )
    with pytest.raises(HttpResponseError) as caught:
        wrong.get_blob_client(container, "dir/my file.png").download_blob(retry_total=0).readall()
    assert caught.value.status_code == 403


# Hugging Face --------------------------------------------------------------------------------------


@pytest.fixture
def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads HF_HUB_DISABLE_XET at import: patch the constant it reads at call time."""
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)


def test_hub_download_paths_with_spaces_datasets_and_branches(fake_hub: FakeHub, tmp_path: Path) -> None:
    repo = unique("org/model")
    commit = fake_hub.add_file(repo, "dir/my file.png", b"picture")
    fake_hub.add_file(repo, "dir/my file.png", b"other branch", revision="dev")
    fake_hub.clear_requests()

    path = hf_hub_download(repo, "dir/my file.png", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"picture"
    assert f"/snapshots/{commit}/dir/my file.png" in path
    assert [(r["method"], r["path"]) for r in fake_hub.requests] == [
        ("HEAD", f"/{repo}/resolve/main/dir/my%20file.png"),
        ("GET", f"/{repo}/resolve/main/dir/my%20file.png"),
    ]
    dev = hf_hub_download(repo, "dir/my file.png", revision="dev", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(dev).read_bytes() == b"other branch"

    dataset = unique("org/data")
    fake_hub.add_file(dataset, "train.csv", b"a,b\n1,2\n", repo_type="dataset")
    got = hf_hub_download(dataset, "train.csv", repo_type="dataset", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(got).read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(RepositoryNotFoundError):  # the same id as a model does not exist
        hf_hub_download(dataset, "train.csv", endpoint=fake_hub.url, cache_dir=tmp_path)


def test_hub_errors_map_to_huggingface_hub_exceptions(fake_hub: FakeHub, tmp_path: Path) -> None:
    repo = unique("org/model")
    fake_hub.add_file(repo, "weights.bin", b"w")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo, "missing.bin", endpoint=fake_hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "weights.bin", revision="nope", endpoint=fake_hub.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(unique("org/none"), "weights.bin", endpoint=fake_hub.url, cache_dir=tmp_path)


def test_hub_upload_then_download(fake_hub: FakeHub, tmp_path: Path, no_xet: None) -> None:
    api = HfApi(endpoint=fake_hub.url)
    repo = unique("org/outputs")
    api.create_repo(repo)
    api.create_repo(repo, exist_ok=True)
    info = api.upload_file(path_or_fileobj=b"first image", path_in_repo="out/img 1.png", repo_id=repo)
    assert info.oid and len(info.oid) == 40
    path = hf_hub_download(repo, "out/img 1.png", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"first image"
    with pytest.raises(RepositoryNotFoundError):  # upload_file does not create the repo
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=unique("org/missing"))


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # huggingface_hub's LFS PUT
def test_hub_token_and_lfs_upload(tmp_path: Path, no_xet: None) -> None:
    """A hub of its own: a required token, and LFS (batch + basic transfer + verify) from 1 KiB up."""
    with FakeHub(tmp_path / "hub", token="hf_secret", lfs_threshold=1024) as hub:
        repo = unique("org/private")
        hub.add_file(repo, "model.safetensors", b"seeded")
        with pytest.raises(RepositoryNotFoundError):  # no token: the Hub hides private repos
            hf_hub_download(repo, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "a", token=False)
        with pytest.raises(HfHubHTTPError) as caught:
            hf_hub_download(repo, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "b", token="hf_wrong")
        assert caught.value.response.status_code == 401
        assert not isinstance(caught.value, RepositoryNotFoundError)

        api = HfApi(endpoint=hub.url, token="hf_secret")
        data = os.urandom(300_000)
        api.upload_file(path_or_fileobj=data, path_in_repo="big/model.safetensors", repo_id=repo)
        paths = [r["path"] for r in hub.requests]
        assert f"/{repo}.git/info/lfs/objects/batch" in paths
        assert f"/_lfs/{hashlib.sha256(data).hexdigest()}" in paths
        got = hf_hub_download(repo, "big/model.safetensors", endpoint=hub.url, cache_dir=tmp_path, token="hf_secret")
        assert Path(got).read_bytes() == data
        assert hub.requests[-1]["authorization"] == "Bearer hf_secret"
        assert hub.env()["HF_TOKEN"] == "hf_secret"


# FileServer ----------------------------------------------------------------------------------------


def test_file_server_auth_disposition_range_and_head(tmp_path: Path) -> None:
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "123").write_bytes(b"0123456789")
    dispositions = {"/download/123": "model.safetensors"}
    with FileServer(tmp_path, basic=("user", "pass"), dispositions=dispositions) as files:
        url = f"{files.url}/download/123"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=("user", "wrong")).status_code == 401
        response = httpx.get(url, auth=("user", "pass"))
        assert response.status_code == 200 and response.content == b"0123456789"
        assert response.headers["content-disposition"] == 'attachment; filename="model.safetensors"'
        assert response.headers["content-type"] == "application/octet-stream"
        head = httpx.head(url, auth=("user", "pass"))
        assert head.status_code == 200 and head.headers["content-length"] == "10" and head.content == b""
        ranged = httpx.get(url, auth=("user", "pass"), headers={"Range": "bytes=2-4"})
        assert ranged.status_code == 206 and ranged.content == b"234"
        assert ranged.headers["content-range"] == "bytes 2-4/10"
        assert files.count("/download/123") == 2  # authorized GETs only
        files.fail("/download/123", 503)
        assert httpx.get(url, auth=("user", "pass")).status_code == 503
        assert files.count("/download/123") == 3
        assert httpx.get(f"{files.url}/download/missing", auth=("user", "pass")).status_code == 404


def test_file_server_drop_put_bearer_and_stop(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(2_000_000))
    with FileServer(tmp_path, bearer="tok", drop={"/big.bin"}) as files:
        auth = {"Authorization": "Bearer tok"}
        assert httpx.get(f"{files.url}/big.bin").status_code == 401
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{files.url}/big.bin", headers=auth)

        response = httpx.put(f"{files.url}/uploads/a/out 1.png", content=b"png bytes", headers=auth)
        assert response.status_code == 201
        assert (tmp_path / "uploads" / "a" / "out 1.png").read_bytes() == b"png bytes"
        chunked = httpx.put(f"{files.url}/uploads/b.bin", content=iter([b"ab", b"cd"]), headers=auth)
        assert chunked.status_code == 201 and (tmp_path / "uploads" / "b.bin").read_bytes() == b"abcd"
        assert files.puts == ["/uploads/a/out%201.png", "/uploads/b.bin"]
        assert httpx.get(f"{files.url}/uploads/a/out%201.png", headers=auth).content == b"png bytes"

        files.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{files.url}/big.bin", headers=auth)


def test_file_server_keeps_its_original_interface(tmp_path: Path) -> None:
    (tmp_path / "warmup.json").write_text("{}")
    with FileServer(tmp_path, auth_header=("X-Token", "sesame")) as files:
        assert httpx.get(f"{files.url}/warmup.json").status_code == 401
        assert httpx.get(f"{files.url}/warmup.json", headers={"X-Token": "sesame"}).json() == {}
        assert httpx.get(f"{files.url}/nothing", headers={"X-Token": "sesame"}).status_code == 404
        assert files.requests == ["/warmup.json", "/nothing"]  # authorized GETs, as before
