"""Workflow endpoints and /models, end to end: the example SD1.5 workflows on the random checkpoint,
validation, broken modules, nested routes, the OpenAPI document, and delivery options."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.graphs import png_bytes
from tests.support.paths import CHECKPOINT_NAME, REPO
from tests.support.receiver import WebhookReceiver
from tests.support.server import ApiServer, trusting
from tests.support.services import SeaweedS3

ECHO = """
from pydantic import BaseModel, Field

summary = "Solid colour"


class RequestSchema(BaseModel):
    size: int = Field(16, ge=8, le=256, description="Square size in pixels")
    fail: bool = Field(False, description="Make generate_workflow raise")


async def generate_workflow(input: RequestSchema) -> dict:
    if input.fail:
        raise RuntimeError("asked to fail")
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": input.size, "height": input.size, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "echo"}},
    }
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    """The webhook test's receiver, started before the server so that the server can trust its loopback origin."""
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def workflow_server(
    make_server: Callable[..., ApiServer],
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: SeaweedS3,
    receiver: WebhookReceiver,
) -> ApiServer:
    folder = tmp_path_factory.mktemp("workflows")
    shutil.copytree(REPO / "workflows", folder, dirs_exist_ok=True)
    (folder / "tests" / "deep" / "er").mkdir(parents=True)
    (folder / "tests" / "deep" / "er" / "solid.py").write_text(ECHO)
    (folder / "tests" / "broken.py").write_text("this is not python(\n")
    (folder / "tests" / "incomplete.py").write_text(
        "from pydantic import BaseModel\nclass RequestSchema(BaseModel):\n    x: int\n"
    )
    s3_server.create_bucket("workflow-outputs")
    return make_server("workflows", WORKFLOW_DIR=str(folder), **s3_server.env(), **trusting(receiver.url)).start()


def post(server: ApiServer, route: str, **body: Any) -> httpx.Response:
    return server.http.post(f"/workflow/{route}", json=body)


def size_of(data: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(data))).size


def test_sd15_txt2img_makes_an_image_of_the_requested_size(workflow_server: ApiServer) -> None:
    response = post(workflow_server, "sd1.5/txt2img", input={"prompt": "a cat", "width": 96, "height": 64, "steps": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert size_of(body["images"][0]) == (96, 64)
    # The response is /prompt's plus the validated input, defaults filled in (the random checkpoint).
    assert body["input"]["checkpoint"] == CHECKPOINT_NAME and body["input"]["sampler_name"] == "euler"
    assert body["prompt"]["4"]["inputs"]["ckpt_name"] == CHECKPOINT_NAME


def test_sd15_img2img_makes_an_image(workflow_server: ApiServer) -> None:
    image = base64.b64encode(png_bytes(64, 64)).decode()
    response = post(workflow_server, "sd1.5/img2img", input={"prompt": "a dog", "image": image, "steps": 2})
    assert response.status_code == 200, response.text
    assert size_of(response.json()["images"][0]) == (64, 64)


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        ({"input": {"width": 64}}, "input.prompt"),
        ({"input": {"prompt": "x", "width": 63}}, "input.width"),
        ({"input": {"prompt": "x", "sampler_name": "no-such-sampler"}}, "input.sampler_name"),
        ({"input": {"prompt": "x", "checkpoint": "missing.safetensors"}}, "input.checkpoint"),
        ({}, "input"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(
    workflow_server: ApiServer, payload: dict[str, Any], location: str
) -> None:
    response = post(workflow_server, "sd1.5/txt2img", **payload)
    assert response.status_code == 400
    assert response.json()["location"] == location


@pytest.mark.parametrize("denoise", [1e-308, 0.0, 0.001, 1.5])
def test_a_denoise_comfyui_cannot_divide_by_is_a_400(workflow_server: ApiServer, denoise: float) -> None:
    image = base64.b64encode(png_bytes(8, 8)).decode()
    response = post(workflow_server, "sd1.5/img2img", input={"prompt": "x", "image": image, "denoise": denoise})
    assert response.status_code == 400, response.text
    assert response.json()["location"] == "input.denoise"


def test_an_unknown_sampler_lists_the_available_ones(workflow_server: ApiServer) -> None:
    response = post(workflow_server, "sd1.5/txt2img", input={"prompt": "x", "sampler_name": "nope"})
    assert "available: euler" in response.json()["error"]


def test_generate_workflow_raising_is_a_400_at_input(workflow_server: ApiServer) -> None:
    response = post(workflow_server, "tests/deep/er/solid", input={"fail": True})
    assert response.status_code == 400
    assert response.json() == {"error": "Failed to generate workflow prompt: asked to fail", "location": "input"}


def test_nested_folders_are_nested_routes_and_async_generators_work(workflow_server: ApiServer) -> None:
    response = post(workflow_server, "tests/deep/er/solid", input={"size": 24}, id="nested")
    assert response.status_code == 200, response.text
    assert size_of(response.json()["images"][0]) == (24, 24)
    assert response.json()["filenames"] == ["nested_echo_00001_.png"]


def test_broken_modules_are_skipped_with_a_log_line(workflow_server: ApiServer) -> None:
    skipped = {
        Path(entry["file"]).name: entry["reason"]
        for entry in workflow_server.log_entries()
        if entry.get("msg") == "skipping workflow module"
    }
    assert set(skipped) == {"broken.py", "incomplete.py"}
    assert skipped["broken.py"].startswith("SyntaxError")
    assert "generate_workflow" in skipped["incomplete.py"]
    assert workflow_server.http.post("/workflow/tests/broken", json={"input": {}}).status_code == 404


def test_the_openapi_document_lists_every_workflow_with_its_inputs(workflow_server: ApiServer) -> None:
    document = workflow_server.http.get("/docs/json").json()
    routes = {path for path in document["paths"] if path.startswith("/workflow/")}
    assert routes == {
        "/workflow/sd1.5/txt2img",
        "/workflow/sd1.5/img2img",
        "/workflow/sdxl/txt2img",
        "/workflow/sdxl/txt2img-with-refiner",
        "/workflow/sdxl/img2img",
        "/workflow/flux/txt2img",
        "/workflow/flux/img2img",
        "/workflow/tests/deep/er/solid",
    }
    operation = document["paths"]["/workflow/sd1.5/txt2img"]["post"]
    assert operation["summary"] == "Text to image (SD1.5)"
    assert "| `prompt` | string | What the image shows | **Required** |" in operation["description"]
    schemas = document["components"]["schemas"]
    body = schemas[operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert {"input", "id", "webhook_v2", "s3", "convert_output"} <= set(body["properties"])
    assert "prompt" not in body["properties"]
    inputs = schemas[body["properties"]["input"]["$ref"].rsplit("/", 1)[-1]]
    assert "euler" in inputs["properties"]["sampler_name"]["enum"]
    assert CHECKPOINT_NAME in inputs["properties"]["checkpoint"]["enum"]


def test_a_workflow_request_takes_an_upload_block(workflow_server: ApiServer, s3_server: SeaweedS3) -> None:
    response = post(
        workflow_server,
        "tests/deep/er/solid",
        id="wf-upload",
        input={"size": 16},
        s3={"bucket": "workflow-outputs", "prefix": "wf"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["images"] == ["s3://workflow-outputs/wf/wf-upload_echo_00001_.png"]
    assert Image.open(io.BytesIO(s3_server.get("workflow-outputs", "wf/wf-upload_echo_00001_.png"))).size == (16, 16)


def test_a_workflow_request_takes_a_webhook(workflow_server: ApiServer, receiver: WebhookReceiver) -> None:
    response = post(workflow_server, "tests/deep/er/solid", id="wf-hook", input={"size": 8}, webhook_v2=receiver.url)
    assert response.status_code == 202
    assert response.json()["input"] == {"size": 8, "fail": False}
    (hook,) = receiver.wait_for(lambda requests: len(requests) >= 1, timeout_s=60)
    assert hook.json()["type"] == "prompt.complete" and hook.json()["id"] == "wf-hook"


def test_models_lists_the_random_checkpoint(workflow_server: ApiServer) -> None:
    models = workflow_server.http.get("/models").json()
    assert CHECKPOINT_NAME in models["checkpoints"]
    assert "custom_nodes" not in models
    # A folder of MODEL_DIR that ComfyUI does not know is listed from disk.
    (workflow_server.base / "models" / "my_extras").mkdir()
    (workflow_server.base / "models" / "my_extras" / "thing.bin").write_bytes(b"x")
    assert workflow_server.http.get("/models").json()["my_extras"] == ["thing.bin"]
