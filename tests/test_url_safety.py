"""Safe URL fetching end to end: every front door refuses URLs that reach loopback, without opening a connection,
and URL inputs reach ComfyUI as regular files staged for the request alone.

Network rule: the refused targets here are real listeners on loopback that count the connections they accept.
Private, link-local, metadata and public addresses are covered in tests/unit/test_net.py with an injected resolver
and a connect hook, never with a packet.
"""

from __future__ import annotations

import base64
import io
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from comfyui_api.storage.cache import cache_key
from tests.support.graphs import Graph, node, png_bytes, slow, solid
from tests.support.listeners import Listener, self_signed_certificate
from tests.support.server import ApiServer, run_in_background, trusting, wait_until

IMAGE_COLOR = (10, 200, 30)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Targets:
    refused: Listener  # never trusted: must never see a connection
    refused6: Listener | None
    files: Listener  # trusted: serves the test image
    redirector: Listener  # trusted: redirects to `refused`
    https_redirector: Listener  # trusted, https: redirects to `files` over plain http
    hooks: Listener  # trusted: a webhook receiver that redirects to `refused`

    def untrusted(self) -> list[Listener]:
        return [listener for listener in (self.refused, self.refused6) if listener is not None]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def targets(certificate: tuple[Path, Path]) -> Iterator[Targets]:
    image = png_bytes(32, 32, IMAGE_COLOR)
    with (
        Listener(body=image) as refused,
        Listener(body=image) as files,
        Listener() as redirector,
        Listener(tls=certificate) as https_redirector,
        Listener() as hooks,
    ):
        refused6 = Listener(host="::1", body=image) if ipv6_loopback() else None
        redirector.redirect("/a.png", f"{refused.url}/a.png")
        https_redirector.redirect("/a.png", f"{files.url}/a.png")
        hooks.redirect("/hook", f"{refused.url}/hook", status=307)
        yield Targets(refused, refused6, files, redirector, https_redirector, hooks)
        if refused6 is not None:
            refused6.close()


@pytest.fixture(scope="module")
def guarded(make_server: Callable[..., ApiServer], targets: Targets, certificate: tuple[Path, Path]) -> ApiServer:
    server = make_server(
        "guarded",
        SSL_CERT_FILE=str(certificate[0]),  # the https listener's self-signed certificate
        LRU_CACHE_SIZE_GB="1",
        **trusting(targets.files.url, targets.redirector.url, targets.https_redirector.url, targets.hooks.url),
    )
    (server.base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    return server.start()


def load_image(url: str) -> Graph:
    return {"8": node("LoadImage", image=url), "9": node("SaveImage", images=["8", 0], filename_prefix="loaded")}


def load_checkpoint(url: str) -> Graph:
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name=url),
        "9": node("SaveImage", images=["1", 0], filename_prefix="never"),
    }


# --- the SSRF matrix ------------------------------------------------------------------------------------------

Case = tuple[str, Callable[[Targets, ApiServer], str], str]

DIRECT: list[Case] = [
    ("loopback-ip", lambda t, s: f"http://127.0.0.1:{t.refused.port}/a.png", "a loopback address (127.0.0.1)"),
    ("localhost", lambda t, s: f"http://localhost:{t.refused.port}/a.png", "a loopback address"),
    ("comfyui-port", lambda t, s: f"http://127.0.0.1:{s.comfy_port}/view?filename=x.png", "a loopback address"),
    (
        "ipv6-loopback",
        lambda t, s: f"http://[::1]:{(t.refused6 or t.refused).port}/a.png",
        "a loopback address (::1)",
    ),
    (
        "ipv4-mapped",
        lambda t, s: f"http://[::ffff:127.0.0.1]:{t.refused.port}/a.png",
        "an IPv4-embedded loopback address (::ffff:127.0.0.1)",
    ),
    ("decimal", lambda t, s: f"http://2130706433:{t.refused.port}/a.png", "a loopback address (127.0.0.1)"),
    ("octal", lambda t, s: f"http://0177.0.0.1:{t.refused.port}/a.png", "a loopback address (127.0.0.1)"),
]
REDIRECTS: list[Case] = [
    (
        "redirect-to-loopback",
        lambda t, s: f"{t.redirector.url}/a.png",
        "redirects to http://127.0.0.1:{port}/a.png, which resolves to a loopback address (127.0.0.1)",
    ),
    ("https-to-http", lambda t, s: f"{t.https_redirector.url}/a.png", "refused a redirect from https to http"),
]


def expected(text: str, targets: Targets) -> str:
    return text.replace("{port}", str(targets.refused.port))


def ids(cases: list[Case]) -> list[str]:
    return [case[0] for case in cases]


def assert_refused(response: httpx.Response, location: str, text: str, targets: Targets) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["location"] == location
    assert text in body["error"], body["error"]
    assert all(listener.connections == 0 for listener in targets.untrusted())


@pytest.mark.parametrize(("case", "url", "text"), DIRECT + REDIRECTS, ids=ids(DIRECT + REDIRECTS))
def test_an_image_input(guarded: ApiServer, targets: Targets, case: str, url: Any, text: str) -> None:
    response = guarded.http.post("/prompt", json={"prompt": load_image(url(targets, guarded))})
    assert_refused(response, "prompt.8.inputs.image", expected(text, targets), targets)
    assert response.json()["error"].startswith("Failed to download image for node 8: ")


@pytest.mark.parametrize(("case", "url", "text"), DIRECT + REDIRECTS, ids=ids(DIRECT + REDIRECTS))
def test_a_model_loader(guarded: ApiServer, targets: Targets, case: str, url: Any, text: str) -> None:
    response = guarded.http.post("/prompt", json={"prompt": load_checkpoint(url(targets, guarded))})
    assert_refused(response, "prompt.1.inputs", expected(text, targets), targets)
    assert response.json()["error"].startswith("Failed to process model for node 1: ")


@pytest.mark.parametrize(("case", "url", "text"), DIRECT, ids=ids(DIRECT))
def test_download_refuses_before_its_202(guarded: ApiServer, targets: Targets, case: str, url: Any, text: str) -> None:
    body = {"url": url(targets, guarded), "model_type": "loras", "wait": False}
    assert_refused(guarded.http.post("/download", json=body), "url", text, targets)


@pytest.mark.parametrize(("case", "url", "text"), REDIRECTS, ids=ids(REDIRECTS))
def test_download_refuses_a_redirect(guarded: ApiServer, targets: Targets, case: str, url: Any, text: str) -> None:
    body = {"url": url(targets, guarded), "model_type": "loras", "wait": True}
    assert_refused(guarded.http.post("/download", json=body), "url", expected(text, targets), targets)


@pytest.mark.parametrize(("case", "url", "text"), DIRECT, ids=ids(DIRECT))
def test_webhook_v2_refuses_before_its_202(
    guarded: ApiServer, targets: Targets, case: str, url: Any, text: str
) -> None:
    response = guarded.http.post("/prompt", json={"prompt": solid(8, 8), "webhook_v2": url(targets, guarded)})
    assert_refused(response, "webhook_v2", text, targets)
    assert response.json()["error"].startswith("webhook_v2: ")


@pytest.mark.parametrize(("case", "url", "text"), DIRECT, ids=ids(DIRECT))
def test_http_upload_refuses_before_it_runs(
    guarded: ApiServer, targets: Targets, case: str, url: Any, text: str
) -> None:
    body = {"prompt": solid(8, 8), "http_upload": {"url_prefix": url(targets, guarded).removesuffix("/a.png")}}
    assert_refused(guarded.http.post("/prompt", json=body), "http_upload.url_prefix", text, targets)


def test_a_webhook_that_redirects_to_loopback_is_not_followed(guarded: ApiServer, targets: Targets) -> None:
    """The receiver's origin is trusted, so the 202 comes; its redirect to an untrusted loopback port is refused
    when the webhook is sent, and logged."""
    body = {"prompt": solid(8, 8), "id": "hook-redirect", "webhook_v2": f"{targets.hooks.url}/hook"}
    assert guarded.http.post("/prompt", json=body).status_code == 202
    failure = wait_until(
        lambda: next((entry for entry in guarded.log_entries() if entry.get("msg") == "webhook delivery failed"), None),
        120,
        "the webhook to fail",
    )
    assert "resolves to a loopback address" in failure["last_error"]
    assert targets.hooks.requests and targets.refused.connections == 0


def test_a_trusted_origin_is_fetched(guarded: ApiServer, targets: Targets) -> None:
    response = guarded.http.post("/prompt", json={"prompt": load_image(f"{targets.files.url}/trusted.png")})
    assert response.status_code == 200, response.text
    assert pixel(response.json()["images"][0]) == IMAGE_COLOR


# --- malformed URLs and hostile names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("http://[::1/a.png", "is not a valid URL"),
        ("http://files.test/a\u0000.png", "is not a valid URL"),
        ("http://" + "h" * 10_000 + "/a.png", "is not a valid URL"),
        ("ftp://files.test/a.png", "only http, https and s3 URLs are allowed"),
        ("file:///etc/passwd", "only http, https and s3 URLs are allowed"),
        ("gopher://files.test:70/_x", "only http, https and s3 URLs are allowed"),
    ],
    ids=["bracket", "nul", "long-host", "ftp", "file", "gopher"],
)
def test_malformed_urls_are_a_400_at_their_field(guarded: ApiServer, url: str, text: str) -> None:
    response = guarded.http.post("/prompt", json={"prompt": load_image(url)})
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "prompt.8.inputs.image"
    assert text in response.json()["error"]
    assert guarded.http.get("/health").status_code == 200


@pytest.mark.parametrize(
    "filename", ["../escape.safetensors", "a/b.safetensors", "x\u0000.safetensors", "\uff0e\uff0e\uff0fx", "x" * 256]
)
def test_hostile_download_file_names_are_a_400(guarded: ApiServer, targets: Targets, filename: str) -> None:
    body = {"url": f"{targets.files.url}/model.safetensors", "model_type": "loras", "filename": filename}
    response = guarded.http.post("/download", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "filename"


def test_a_download_file_name_is_normalised(guarded: ApiServer, targets: Targets) -> None:
    body = {
        "url": f"{targets.files.url}/model.safetensors",
        "model_type": "loras",
        "filename": "\uff4d\uff59-lora.safetensors",  # fullwidth "my"
        "wait": True,
    }
    response = guarded.http.post("/download", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "my-lora.safetensors"
    assert (guarded.base / "models" / "loras" / "my-lora.safetensors").is_symlink()  # models stay symlinks


def test_an_absolute_path_outside_the_input_and_output_folders_is_a_400(guarded: ApiServer) -> None:
    response = guarded.http.post("/prompt", json={"prompt": load_image("/etc/passwd")})
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "prompt.8.inputs.image"
    assert "Local file not allowed: /etc/passwd" in response.json()["error"]


def test_a_directory_input_never_touches_a_folder_that_existed(guarded: ApiServer, targets: Targets) -> None:
    """`id: "clipspace"` once deleted ComfyUI's own input/clipspace: the request now gets a folder of its own."""
    clipspace = guarded.base / "input" / "clipspace"
    clipspace.mkdir(parents=True, exist_ok=True)
    (clipspace / "keep.png").write_bytes(png_bytes(4, 4))
    graph = {
        "1": node("VHS_LoadImages", directory=[f"{targets.files.url}/d1.png", f"{targets.files.url}/d2.png"]),
        "2": node("SaveImage", images=["1", 0], filename_prefix="dir"),
    }
    response = guarded.http.post("/prompt", json={"prompt": graph, "id": "clipspace"})
    # This ComfyUI has no VHS nodes, so it rejects the graph, after the folder was staged (and then removed).
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "prompt"
    assert (clipspace / "keep.png").read_bytes() == png_bytes(4, 4)
    assert sorted(path.name for path in (guarded.base / "input").iterdir()) == ["clipspace"]


# --- staging -----------------------------------------------------------------------------------------------------


def pixel(image_b64: str) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(image_b64))).convert("RGB")
    return image.getpixel((0, 0))  # type: ignore[return-value]


def symlinks(folder: Path) -> list[Path]:
    """What `find folder -type l` lists."""
    return [path for path in folder.rglob("*") if path.is_symlink()]


def staged_inputs(server: ApiServer) -> list[Path]:
    return [path for path in (server.base / "input").iterdir() if path.suffix == ".png" and "-" in path.stem]


def test_a_url_input_is_a_regular_file_of_its_own_that_survives_eviction(guarded: ApiServer, targets: Targets) -> None:
    """While the request waits behind a slow prompt: its input is a hard link to the cache file (never a
    symlink); deleting the cache entry then (what eviction does) does not fail it; afterwards nothing is left."""
    url = f"{targets.files.url}/staged.png"
    busy = run_in_background(lambda: guarded.http.post("/prompt", json={"prompt": slow(), "id": "busy"}))
    guarded.wait_comfy_running()
    waiting = run_in_background(lambda: guarded.http.post("/prompt", json={"prompt": load_image(url), "id": "staged"}))
    (staged,) = wait_until(lambda: staged_inputs(guarded), 120, "the input to be staged")
    cached = next((guarded.base / "cache").glob(f"{cache_key(url)}*.png"))
    assert not staged.is_symlink() and staged.stat().st_nlink == 2
    assert os.stat(staged).st_ino == os.stat(cached).st_ino
    assert staged.read_bytes() == png_bytes(32, 32, IMAGE_COLOR)
    assert symlinks(guarded.base / "input") == []
    cached.unlink()
    response = waiting(300)
    assert busy(300).status_code == 200
    assert response.status_code == 200, response.text
    assert pixel(response.json()["images"][0]) == IMAGE_COLOR
    assert response.json()["prompt"]["8"]["inputs"]["image"] == str(staged)
    assert not staged.exists() and staged_inputs(guarded) == []
    assert symlinks(guarded.base / "input") == []


def test_two_requests_for_one_url_each_get_their_own_copy(guarded: ApiServer, targets: Targets) -> None:
    url = f"{targets.files.url}/shared.png"

    def post(index: int) -> Callable[[], httpx.Response]:
        return lambda: guarded.http.post("/prompt", json={"prompt": load_image(url), "id": f"shared-{index}"})

    waits = [run_in_background(post(index)) for index in range(2)]
    responses = [wait(300) for wait in waits]
    assert [response.status_code for response in responses] == [200, 200], [r.text for r in responses]
    assert all(pixel(response.json()["images"][0]) == IMAGE_COLOR for response in responses)
    staged = {response.json()["prompt"]["8"]["inputs"]["image"] for response in responses}
    assert len(staged) == 2 and not any(Path(path).exists() for path in staged)
    assert staged_inputs(guarded) == [] and symlinks(guarded.base / "input") == []
