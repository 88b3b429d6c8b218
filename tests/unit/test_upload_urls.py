"""Where each upload block puts an output file: the reference server's rules, so that objects land where a client
written for it expects them. S3 `prefix` and Azure `blob_prefix` are joined to the file name as given (no '/' added);
hf_upload's `directory` is a folder and http_upload's `url_prefix` a folder URL ('/' between them and the name)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comfyui_api.storage.uploads import AzureBlobUpload, HfUpload, HttpUpload, S3Upload, UploadBlock, upload_url

HF = "https://huggingface.co"
AZURE = "http://127.0.0.1:10000/devstoreaccount1"
NAME = "job-7_out_00001_.png"


def url_of(block: UploadBlock, name: str = NAME) -> str:
    return upload_url(block, name, hf_endpoint=HF, azure_base=AZURE)


@pytest.mark.parametrize(
    ("prefix", "url"),
    [
        ("runs/42-", f"s3://outputs/runs/42-{NAME}"),
        ("runs/", f"s3://outputs/runs/{NAME}"),
        ("runs", f"s3://outputs/runs{NAME}"),
        ("", f"s3://outputs/{NAME}"),
        ("/runs/", f"s3://outputs/runs/{NAME}"),
    ],
)
def test_an_s3_prefix_is_joined_to_the_name_as_given(prefix: str, url: str) -> None:
    assert url_of(S3Upload(bucket="outputs", prefix=prefix)) == url


@pytest.mark.parametrize(
    ("blob_prefix", "url"),
    [
        ("runs/42-", f"{AZURE}/outputs/runs/42-{NAME}"),
        ("runs/", f"{AZURE}/outputs/runs/{NAME}"),
        ("runs", f"{AZURE}/outputs/runs{NAME}"),
        ("/runs/", f"{AZURE}/outputs/runs/{NAME}"),
        (None, f"{AZURE}/outputs/{NAME}"),
    ],
)
def test_an_azure_blob_prefix_is_joined_to_the_name_as_given(blob_prefix: str | None, url: str) -> None:
    fields = {"container": "outputs"} if blob_prefix is None else {"container": "outputs", "blob_prefix": blob_prefix}
    assert url_of(AzureBlobUpload.model_validate(fields)) == url


def test_a_blob_name_is_percent_encoded_in_its_url() -> None:
    assert url_of(AzureBlobUpload(container="outputs", blob_prefix="my runs/#1-"), "a b.png") == (
        f"{AZURE}/outputs/my%20runs/%231-a%20b.png"
    )


@pytest.mark.parametrize(
    ("directory", "path"),
    [("/", NAME), ("outputs", f"outputs/{NAME}"), ("outputs/", f"outputs/{NAME}"), ("a b/c", f"a%20b/c/{NAME}")],
)
def test_an_hf_upload_directory_is_a_folder(directory: str, path: str) -> None:
    assert url_of(HfUpload(repo="org/outputs", directory=directory)) == f"{HF}/org/outputs/resolve/main/{path}"


def test_an_hf_dataset_upload_names_its_kind_and_revision() -> None:
    block = HfUpload(repo="org/data", repo_type="dataset", revision="v1")
    assert url_of(block) == f"{HF}/datasets/org/data/resolve/v1/{NAME}"


@pytest.mark.parametrize("url_prefix", ["http://files.example/put", "http://files.example/put/"])
def test_an_http_upload_url_prefix_is_a_folder(url_prefix: str) -> None:
    assert url_of(HttpUpload(url_prefix=url_prefix)) == f"http://files.example/put/{NAME}"


def test_the_s3_prefix_is_required_as_in_the_reference() -> None:
    with pytest.raises(ValidationError, match="prefix"):
        S3Upload.model_validate({"bucket": "outputs"})
