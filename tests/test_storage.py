"""Inputs and models from URLs, end to end: each real storage server feeding real img2img runs."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from comfyui_api.storage.cache import cache_key
from tests.support.files import FileServer
from tests.support.graphs import img2img, img2img_with_lora, lora_bytes, png_bytes, txt2img
from tests.support.paths import CHECKPOINT_NAME
from tests.support.server import ApiServer, closed_port, trusting, wait_until
from tests.support.services import Azurite, FakeHub, SeaweedS3


@dataclass
class Sources:
    """The same image and LoRA, published on every kind of storage."""

    files: FileServer
    private: FileServer
    s3: SeaweedS3
    azurite: Azurite
    hub: FakeHub
    # A loopback origin where nothing listens (its port reserved here, so the server can trust it up front).
    dead: str

    def urls(self, kind: str, name: str) -> str:
        return {
            "http": f"{self.files.url}/{name}",
            "s3": f"s3://inputs/{name}",
            "azure": f"{self.azurite.blob_endpoint}/inputs/{name}",
            "huggingface": f"https://huggingface.co/org/inputs/resolve/main/{name.replace(' ', '%20')}",
        }[kind]


@pytest.fixture(scope="module")
def sources(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: SeaweedS3,
    azurite: Azurite,
    fake_hub: FakeHub,
    checkpoint: Path,
) -> Iterator[Sources]:
    root = tmp_path_factory.mktemp("published")
    private_root = tmp_path_factory.mktemp("private")
    published = {"cat.png": png_bytes(80, 80, (20, 120, 220)), "style lora.safetensors": lora_bytes(1)}
    for name, data in published.items():
        (root / name).write_bytes(data)
        (private_root / name).write_bytes(data)
    (root / "api" / "models").mkdir(parents=True)
    (root / "api" / "models" / "77").write_bytes(lora_bytes(77))
    shutil.copy(checkpoint, root / "remote.safetensors")
    s3_server.create_bucket("inputs")
    azurite.create_container("inputs")
    for name, data in published.items():
        s3_server.put("inputs", name, data)
        azurite.put("inputs", name, data)
        fake_hub.add_file("org/inputs", name, data)
    with (
        FileServer(root, dispositions={"/api/models/77": "detail.safetensors"}, drop={"/drops.png"}) as files,
        FileServer(private_root, basic=("alice", "s3cret")) as private,
    ):
        yield Sources(files, private, s3_server, azurite, fake_hub, f"http://127.0.0.1:{closed_port()}")


@pytest.fixture(scope="module")
def storage_server(make_server: Callable[..., ApiServer], sources: Sources) -> ApiServer:
    env = {**sources.s3.env(), **sources.azurite.env(), **sources.hub.env()}
    # The plain HTTP file servers are loopback services the operator trusts, as it would an in-cluster one; so is
    # the dead origin, so that a connection to it fails as a connection error rather than at the URL guard.
    server = make_server("storage", **env, **trusting(sources.files.url, sources.private.url, sources.dead))
    for folder in ("loras", "vae", "diffusers"):
        (server.base / "models" / folder).mkdir(parents=True, exist_ok=True)
    return server.start()


def post(server: ApiServer, graph: dict[str, Any], **fields: Any) -> httpx.Response:
    return server.http.post("/prompt", json={"prompt": graph, **fields})


def image_size(data: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(data))).size


@pytest.mark.parametrize("kind", ["http", "s3", "azure", "huggingface"])
def test_each_provider_feeds_a_load_image_and_a_lora(storage_server: ApiServer, sources: Sources, kind: str) -> None:
    image_url, lora_url = sources.urls(kind, "cat.png"), sources.urls(kind, "style lora.safetensors")
    response = post(storage_server, img2img_with_lora(image_url, lora_url))
    assert response.status_code == 200, response.text
    body = response.json()
    assert image_size(body["images"][0]) == (64, 64)
    # The LoRA input names a link in the model folder, named after the URL's hash.
    lora_name = body["prompt"]["11"]["inputs"]["lora_name"]
    assert lora_name == f"{cache_key(lora_url)}.safetensors"
    link = storage_server.base / "models" / "loras" / lora_name
    assert link.is_symlink() and link.resolve().parent == (storage_server.base / "cache").resolve()
    assert link.read_bytes() == lora_bytes(1)
    # The image input is the request's own hard link or copy of the cache file in the input folder, named after
    # the URL's hash plus a random part, and deleted when the request ends.
    image_path = Path(body["prompt"]["8"]["inputs"]["image"])
    assert image_path.parent == storage_server.base / "input"
    assert re.fullmatch(rf"{re.escape(cache_key(image_url))}-[0-9a-f]{{32}}\.png", image_path.name), image_path.name
    wait_until(lambda: not image_path.exists(), 10, "the staged input to be deleted")
    if kind == "huggingface":
        assert any(r["path"] == "/org/inputs/resolve/main/style%20lora.safetensors" for r in sources.hub.requests)


def test_a_checkpoint_by_url_runs_txt2img(storage_server: ApiServer, sources: Sources) -> None:
    graph = txt2img(64, 64)
    url = f"{sources.files.url}/remote.safetensors"
    graph["1"]["inputs"]["ckpt_name"] = url
    response = post(storage_server, graph)
    assert response.status_code == 200, response.text
    name = response.json()["prompt"]["1"]["inputs"]["ckpt_name"]
    assert name == f"{cache_key(url)}.safetensors"
    assert (storage_server.base / "models" / "checkpoints" / name).stat().st_size == (
        storage_server.base / "models" / "checkpoints" / CHECKPOINT_NAME
    ).stat().st_size


def test_private_files_need_matching_credentials_even_from_the_cache(
    storage_server: ApiServer, sources: Sources
) -> None:
    url = f"{sources.private.url}/cat.png"
    graph = img2img(url)

    anonymous = post(storage_server, graph)
    assert anonymous.status_code == 400
    assert anonymous.json()["location"] == "prompt.8.inputs.image"
    assert "Authentication failed: 401" in anonymous.json()["error"]

    right = [
        {
            "url_pattern": f"{sources.private.url}/**",
            "auth": {"type": "basic", "username": "alice", "password": "s3cret"},
        }
    ]
    wrong = [
        {"url_pattern": f"{sources.private.url}/*", "auth": {"type": "basic", "username": "alice", "password": "x"}}
    ]
    first = post(storage_server, graph, credentials=right)
    assert first.status_code == 200, first.text
    assert "credentials" not in first.json() and "s3cret" not in first.text

    # Now cached, but still private: no credentials or wrong ones are refused, right ones served from cache.
    cached_anonymous = post(storage_server, graph)
    assert cached_anonymous.status_code == 400
    assert "Authentication required to access cached file" in cached_anonymous.json()["error"]
    assert "Authentication failed" in post(storage_server, graph, credentials=wrong).json()["error"]
    assert post(storage_server, graph, credentials=right).status_code == 200
    assert sources.private.count("/cat.png") == 1


def test_wrong_s3_credentials_are_a_400_at_the_loader(storage_server: ApiServer, sources: Sources) -> None:
    graph = img2img_with_lora(sources.urls("http", "cat.png"), "s3://inputs/other.safetensors")
    sources.s3.put("inputs", "other.safetensors", lora_bytes(2))
    credentials = [
        {
            "url_pattern": "s3://inputs/**",
            "auth": {"type": "s3", "access_key_id": sources.s3.access_key, "secret_access_key": "wrong"},
        }
    ]
    response = post(storage_server, graph, credentials=credentials)
    assert response.status_code == 400
    body = response.json()
    assert body["location"] == "prompt.11.inputs"
    assert body["error"].startswith("Failed to process model for node 11: S3 access denied")
    # Without the request's credentials, the environment's keys apply and the object is readable.
    assert post(storage_server, graph).status_code == 200


@pytest.mark.parametrize(
    ("make_url", "cause"),
    [
        (lambda s: f"{s.files.url}/missing.png", "404"),
        (lambda s: f"{s.dead}/cat.png", "ConnectError"),
        (lambda s: "s3://inputs/missing.png", "S3 object not found"),
        (lambda s: f"{s.azurite.blob_endpoint}/inputs/missing.png", "Azure blob not found"),
        (lambda s: "https://huggingface.co/org/inputs/resolve/main/missing.png", "Hugging Face file not found"),
        (lambda s: "ftp://example.com/cat.png", "only http, https and s3 URLs are allowed, not ftp:"),
    ],
)
def test_unreachable_inputs_are_a_400_naming_the_input(
    storage_server: ApiServer, sources: Sources, make_url: Callable[[Sources], str], cause: str
) -> None:
    response = post(storage_server, img2img(make_url(sources)))
    assert response.status_code == 400
    body = response.json()
    assert body["location"] == "prompt.8.inputs.image"
    assert body["error"].startswith("Failed to download image for node 8: ")
    assert cause in body["error"]


def test_a_dropped_download_leaves_no_cache_entry_and_a_retry_succeeds(
    storage_server: ApiServer, sources: Sources
) -> None:
    (sources.files.root / "drops.png").write_bytes(png_bytes(64, 64))
    url = f"{sources.files.url}/drops.png"
    assert post(storage_server, img2img(url)).status_code == 400
    assert not any(
        path.name.startswith((cache_key(url), f".{cache_key(url)}")) for path in storage_server.files_under("cache")
    )
    sources.files.drop.discard("/drops.png")
    assert post(storage_server, img2img(url)).status_code == 200


def test_ten_concurrent_prompts_with_one_model_url_download_it_once(
    storage_server: ApiServer, sources: Sources
) -> None:
    (sources.files.root / "shared.safetensors").write_bytes(lora_bytes(10))
    lora = f"{sources.files.url}/shared.safetensors"
    image = base64.b64encode(png_bytes(64, 64)).decode()
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: post(storage_server, img2img_with_lora(image, lora)), range(10)))
    assert [response.status_code for response in responses] == [200] * 10
    assert sources.files.count("/shared.safetensors") == 1


# POST /download ---------------------------------------------------------------------------------------


def download(server: ApiServer, **body: Any) -> httpx.Response:
    return server.http.post("/download", json=body)


def test_download_and_wait(storage_server: ApiServer, sources: Sources) -> None:
    url = sources.urls("s3", "style lora.safetensors")
    response = download(storage_server, url=url, model_type="loras", filename="mine.safetensors", wait=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed" and body["filename"] == "mine.safetensors"
    assert body["size"] == len(lora_bytes(1)) and body["duration"] >= 0
    assert (storage_server.base / "models" / "loras" / "mine.safetensors").read_bytes() == lora_bytes(1)
    assert "mine.safetensors" in storage_server.http.get(f"{storage_server.comfy_url}/models/loras").json()
    assert "mine.safetensors" in storage_server.http.get("/models").json()["loras"]  # our listing is current too


def test_download_in_the_background(storage_server: ApiServer, sources: Sources) -> None:
    url = sources.urls("huggingface", "style lora.safetensors")
    response = download(storage_server, url=url, model_type="loras")
    assert response.status_code == 202
    assert response.json() == {
        "url": url,
        "model_type": "loras",
        "filename": "style lora.safetensors",
        "status": "started",
    }
    target = storage_server.base / "models" / "loras" / "style lora.safetensors"
    wait_until(target.exists, 60, "the background download")


def test_download_names_an_extensionless_url_from_content_disposition(
    storage_server: ApiServer, sources: Sources
) -> None:
    response = download(storage_server, url=f"{sources.files.url}/api/models/77", model_type="vae", wait=True)
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "77.safetensors"
    assert (storage_server.base / "models" / "vae" / "77.safetensors").read_bytes() == lora_bytes(77)


def test_download_with_auth(storage_server: ApiServer, sources: Sources) -> None:
    url = f"{sources.private.url}/style%20lora.safetensors"
    refused = download(storage_server, url=url, model_type="loras", filename="p.safetensors", wait=True)
    assert refused.status_code == 400 and "401" in refused.json()["error"]
    auth = {"type": "basic", "username": "alice", "password": "s3cret"}
    accepted = download(storage_server, url=url, model_type="loras", filename="p.safetensors", wait=True, auth=auth)
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize(
    ("body", "location", "message"),
    [
        ({"url": "https://example.com/x.safetensors", "model_type": "nope"}, "model_type", "Unknown model type: nope"),
        ({"url": "not a url", "model_type": "loras"}, "url", "http(s)"),
        ({"url": "https://example.com/x", "model_type": "loras", "filename": "../escape.bin"}, "filename", "plain"),
        ({"url": "https://example.com/x", "model_type": "loras", "filename": "a/b.bin"}, "filename", "plain"),
        ({"url": "https://example.com/x", "model_type": "loras", "filename": ".."}, "filename", "'.' or '..'"),
        ({"model_type": "loras"}, "url", "Field required"),
    ],
)
def test_download_rejects_bad_requests(
    storage_server: ApiServer, body: dict[str, Any], location: str, message: str
) -> None:
    response = download(storage_server, **body)
    assert response.status_code == 400
    assert response.json()["location"] == location
    assert message in response.json()["error"]


def test_download_of_a_missing_file_is_a_400(storage_server: ApiServer, sources: Sources) -> None:
    response = download(storage_server, url=f"{sources.files.url}/nothing.bin", model_type="loras", wait=True)
    assert response.status_code == 400
    assert "404" in response.json()["error"]
