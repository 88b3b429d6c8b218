"""Provider details against the real storage servers, below the HTTP API: private Hugging Face repos,
Azure SAS and wrong keys, and URL inputs of every media kind (audio, video, image directories)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from azure.storage.blob import BlobSasPermissions, generate_blob_sas

from comfyui_api.app import url_guard
from comfyui_api.config import Settings
from comfyui_api.errors import AccessDenied, DownloadError
from comfyui_api.pipeline.jobs import Job
from comfyui_api.pipeline.preprocess import Preprocessor
from comfyui_api.storage.auth import BearerAuth, QueryAuth
from comfyui_api.storage.azure import AzureProvider, azure_service_client
from comfyui_api.storage.cache import cache_key
from comfyui_api.storage.huggingface import HuggingFaceProvider
from comfyui_api.storage.manager import StorageManager
from tests.support.files import FileServer
from tests.support.graphs import node, png_bytes
from tests.support.services import Azurite, FakeHub


@pytest.fixture(scope="module")
def private_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    with FakeHub(tmp_path_factory.mktemp("private-hub"), token="hf_right") as hub:
        hub.add_file("org/private", "weights.safetensors", b"private weights")
        yield hub


async def test_a_private_hugging_face_file_needs_a_token(private_hub: FakeHub, tmp_path: Path) -> None:
    url = "https://huggingface.co/org/private/resolve/main/weights.safetensors"
    anonymous = HuggingFaceProvider(private_hub.url, None, tmp_path / "scratch")
    with pytest.raises(AccessDenied, match="repository not found or access denied"):
        await anonymous.download(url, tmp_path / "a", None)
    with pytest.raises(DownloadError):
        await anonymous.download(url, tmp_path / "b", BearerAuth(type="bearer", token="hf_wrong"))
    # HF_TOKEN from the environment, or a request's bearer token.
    await HuggingFaceProvider(private_hub.url, "hf_right", tmp_path / "scratch").download(url, tmp_path / "c", None)
    await anonymous.download(url, tmp_path / "d", BearerAuth(type="bearer", token="hf_right"))
    assert (tmp_path / "c").read_bytes() == (tmp_path / "d").read_bytes() == b"private weights"
    await anonymous.check_access(url, BearerAuth(type="bearer", token="hf_right"))
    assert not any((tmp_path / "scratch").iterdir())  # nothing left behind in the scratch folder


@pytest.fixture
def blob(azurite: Azurite) -> str:
    azurite.create_container("sas")
    azurite.put("sas", "dir/x.png", b"png bytes")
    return f"{azurite.blob_endpoint}/sas/dir/x.png"


async def test_azure_uses_a_sas_in_the_url_or_from_the_request(azurite: Azurite, blob: str, tmp_path: Path) -> None:
    sas = generate_blob_sas(
        azurite.account,
        "sas",
        "dir/x.png",
        account_key=azurite.key,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    wrong_key = Settings(
        azure_storage_connection_string=azurite.connection_string.replace(azurite.key, "d3Jvbmcta2V5"),
        comfy_home=tmp_path,
    )
    client = azure_service_client(wrong_key)
    assert client is not None
    provider = AzureProvider(client)
    with pytest.raises(AccessDenied):
        await provider.download(blob, tmp_path / "denied", None)
    # A SAS, in the URL or as the request's query credential, wins over the environment's key.
    await provider.download(f"{blob}?{sas}", tmp_path / "a.png", None)
    params = dict(parse_qsl(sas))
    signature = params.pop("sig")
    auth = QueryAuth(type="query", query_param="sig", query_value=signature)
    await provider.download(f"{blob}?{urlencode(params)}", tmp_path / "b.png", auth)
    await provider.check_access(f"{blob}?{urlencode(params)}", auth)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes() == b"png bytes"


@pytest.fixture
def media_files(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(8, 8))
    (root / "b.png").write_bytes(png_bytes(9, 9))
    (root / "clip.mp4").write_bytes(b"\0\0\0\x20ftypisom" + b"\0" * 32)
    (root / "voice.flac").write_bytes(b"fLaC" + b"\0" * 32)
    with FileServer(root) as server:
        yield server


@pytest.fixture
async def storage(tmp_path: Path, media_files: FileServer) -> AsyncIterator[StorageManager]:
    # The loopback file server is trusted (HTTP_TRUSTED_ORIGINS), as an operator lists an in-cluster service.
    settings = Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path, http_trusted_origins=media_files.url)
    manager = StorageManager(settings, url_guard(settings, None))
    yield manager
    await manager.aclose()


async def test_every_media_input_kind_accepts_urls(
    media_files: FileServer, storage: StorageManager, tmp_path: Path
) -> None:
    input_dir = tmp_path / "input"
    preprocessor = Preprocessor(
        input_dir=input_dir,
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        storage=storage,
    )
    url = media_files.url
    prompt = {
        "1": node("LoadAudio", audio=f"{url}/voice.flac"),
        "2": node("LoadVideo", file=f"{url}/clip.mp4"),
        "3": node("VHS_LoadImages", directory=[f"{url}/a.png", f"{url}/b.png"]),
    }
    job = Job(id="media")
    await preprocessor.run(prompt, job)

    def assert_staged(path: Path, name: str) -> None:
        """A file of this request's own (to delete when it ends): the URL's cache name plus a random part, a hard
        link or copy of the cached bytes, not a symlink."""
        key = cache_key(f"{url}/{name}")
        assert re.fullmatch(rf"{re.escape(key)}-[0-9a-f]{{32}}{re.escape(Path(name).suffix)}", path.name), path.name
        assert not path.is_symlink() and path.read_bytes() == (media_files.root / name).read_bytes()
        assert path in job.input_files

    audio, video = Path(prompt["1"]["inputs"]["audio"]), Path(prompt["2"]["inputs"]["file"])
    assert audio.parent == video.parent == input_dir
    assert_staged(audio, "voice.flac")
    assert_staged(video, "clip.mp4")
    # The directory is a fresh folder of the request's own, `<request id>-<random>`, holding staged files.
    directory = input_dir / prompt["3"]["inputs"]["directory"]
    assert directory.name.startswith("media-") and job.input_dirs == [directory]
    entries = {path.name[: len(cache_key(url))]: path for path in directory.iterdir()}
    assert sorted(entries) == sorted(cache_key(f"{url}/{name}") for name in ("a.png", "b.png"))
    for name in ("a.png", "b.png"):
        assert_staged(entries[cache_key(f"{url}/{name}")], name)
    assert len(job.downloads) == 4
