"""Workflow endpoints and /models, end to end: the example SD1.5 workflows on the random checkpoint with the
reference server's field names, random seeds, validation, ignored input fields, broken modules and the reference's
TypeScript files, nested routes, the OpenAPI document, and delivery options."""

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

from comfyui_api.workflows.catalog import combo_options
from comfyui_api.workflows.loader import discover
from tests.support.graphs import png_bytes, txt2img
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

# A workflow whose graph carries the seed as given, -1 included: the pipeline draws it, as for /prompt.
RAW_SEED = """
from pydantic import BaseModel

from comfyui_api.workflows import default_checkpoint
from comfyui_api.workflows.recipes import sd_txt2img


class RequestSchema(BaseModel):
    seed: int = -1


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(checkpoint=default_checkpoint(), prompt="a cat", seed=input.seed, width=64, height=64, steps=1)
"""

# What a folder of the reference server's workflows holds: TypeScript sources, their transpiled JavaScript, and
# perhaps a TypeScript project's node_modules.
REFERENCE_FILES = ("ref/txt2img.ts", "ref/txt2img.js", "ref/nested/img2img.ts")


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
    (folder / "tests" / "raw_seed.py").write_text(RAW_SEED)
    for name in (*REFERENCE_FILES, "ref/node_modules/zod/index.js"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("export default {};\n")
    s3_server.create_bucket("workflow-outputs")
    return make_server("workflows", WORKFLOW_DIR=str(folder), **s3_server.env(), **trusting(receiver.url)).start()


def post(server: ApiServer, route: str, **body: Any) -> httpx.Response:
    return server.http.post(f"/workflow/{route}", json=body)


def size_of(data: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(data))).size


def warnings_for(server: ApiServer, message: str) -> list[dict[str, Any]]:
    return [entry for entry in server.log_entries() if entry.get("level") == "warning" and entry.get("msg") == message]


def test_sd15_txt2img_makes_an_image_of_the_requested_size(workflow_server: ApiServer) -> None:
    response = post(
        workflow_server, "sd1.5/txt2img", input={"prompt": "a cat", "width": 320, "height": 256, "steps": 1}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert size_of(body["images"][0]) == (320, 256)
    # The response is /prompt's plus the validated input, the reference example's defaults filled in (and the
    # random checkpoint, the first ComfyUI lists).
    assert body["input"]["checkpoint"] == CHECKPOINT_NAME and body["input"]["sampler_name"] == "euler"
    assert body["input"]["cfg_scale"] == 8 and body["input"]["negative_prompt"] == "" and body["input"]["denoise"] == 1
    assert body["prompt"]["4"]["inputs"]["ckpt_name"] == CHECKPOINT_NAME


def test_sd15_txt2img_takes_every_field_of_the_reference_example(workflow_server: ApiServer) -> None:
    given = {
        "prompt": "a cat",
        "negative_prompt": "a dog",
        "width": 256,
        "height": 256,
        "seed": 42,
        "steps": 1,
        "cfg_scale": 6.5,
        "sampler_name": "euler",
        "scheduler": "karras",
        "denoise": 0.9,
        "checkpoint": CHECKPOINT_NAME,
    }
    response = post(workflow_server, "sd1.5/txt2img", id="reference-fields", input=given)
    assert response.status_code == 200, response.text
    assert response.json()["input"] == given
    sampler = response.json()["prompt"]["3"]["inputs"]
    assert (sampler["seed"], sampler["cfg"], sampler["scheduler"], sampler["denoise"]) == (42, 6.5, "karras", 0.9)
    assert response.json()["prompt"]["7"]["inputs"]["text"] == "a dog"
    assert not [
        entry
        for entry in workflow_server.log_entries()
        if entry.get("request_id") == "reference-fields" and entry.get("level") == "warning"
    ]


@pytest.mark.parametrize(
    ("source", "asked", "expected"),
    [
        ((64, 64), {"width": 96, "height": 64}, (96, 64)),
        ((80, 40), {"width": 64, "height": 64}, (64, 64)),
        # The reference example's multiple_of rounds the size down.
        ((64, 64), {"width": 100, "height": 70, "multiple_of": 16}, (96, 64)),
    ],
)
def test_sd15_img2img_resizes_the_image_to_width_by_height(
    workflow_server: ApiServer, source: tuple[int, int], asked: dict[str, int], expected: tuple[int, int]
) -> None:
    image = base64.b64encode(png_bytes(*source)).decode()
    given = {"prompt": "a dog", "image": image, "steps": 1, "interpolation": "nearest", **asked}
    given |= {"resize_method": "keep proportion", "resize_condition": "always", "cfg_scale": 7}
    response = post(workflow_server, "sd1.5/img2img", input=given)
    assert response.status_code == 200, response.text
    assert size_of(response.json()["images"][0]) == expected
    resize = response.json()["prompt"]["11"]
    assert resize["class_type"] == "ImageScale" and resize["inputs"]["crop"] == "center"


def test_every_example_graph_gives_each_core_node_the_inputs_comfyui_declares(workflow_server: ApiServer) -> None:
    """The SDXL and Flux examples cannot run on the SD1.5 checkpoint: their graphs are checked against ComfyUI's
    own node declarations instead (every node known, required inputs given, no unknown ones, choices valid)."""
    declared = httpx.get(f"{workflow_server.comfy_url}/object_info", timeout=60).json()
    given = {"prompt": "x", "image": "in.png", "checkpoint": CHECKPOINT_NAME, "refiner_checkpoint": CHECKPOINT_NAME}
    for workflow in discover(REPO / "workflows"):
        graph = workflow.generate(
            workflow.schema(**{k: v for k, v in given.items() if k in workflow.schema.model_fields})
        )
        for node_id, node in graph.items():
            where = f"{workflow.route}: node {node_id}"
            spec = declared[node["class_type"]]["input"]
            required, optional = spec.get("required", {}), spec.get("optional", {})
            assert set(required) <= set(node["inputs"]) <= set(required) | set(optional), where
            for name, value in node["inputs"].items():
                choices = combo_options({**required, **optional}[name])
                # LoadImage's choices are the input folder's files; the pipeline puts the image there.
                if choices and name != "image":
                    assert value in choices, f"{where}: {name}={value!r}"


def test_sdxl_with_refiner_runs_its_two_samplers(workflow_server: ApiServer) -> None:
    given = {"prompt": "a cat", "width": 256, "height": 256, "steps": 2, "base_end_step": 1, "refiner_start_step": 1}
    response = post(
        workflow_server, "sdxl/txt2img-with-refiner", input={**given, "refiner_checkpoint": CHECKPOINT_NAME}
    )
    assert response.status_code == 200, response.text
    assert size_of(response.json()["images"][0]) == (256, 256)
    base, refiner = response.json()["prompt"]["10"]["inputs"], response.json()["prompt"]["11"]["inputs"]
    assert (base["end_at_step"], refiner["start_at_step"]) == (1, 1)
    assert base["noise_seed"] == response.json()["input"]["seed"]


def test_identical_requests_without_a_seed_run_with_different_seeds(workflow_server: ApiServer) -> None:
    # img2img at its smallest size: the same sampler and seed field as txt2img, at a fraction of the work.
    image = base64.b64encode(png_bytes(64, 64)).decode()
    given = {"prompt": "a cat", "image": image, "width": 64, "height": 64, "steps": 1}
    first, second = (post(workflow_server, "sd1.5/img2img", input=given).json() for _ in range(2))
    seeds = [body["input"]["seed"] for body in (first, second)]
    assert [body["prompt"]["3"]["inputs"]["seed"] for body in (first, second)] == seeds
    assert seeds[0] != seeds[1] and all(0 <= seed < 2**53 for seed in seeds)
    # A new seed, a new image: not ComfyUI's cached result of the first request.
    assert first["images"][0] != second["images"][0]


def test_a_seed_of_minus_one_in_a_workflow_input_runs_with_a_random_seed(workflow_server: ApiServer) -> None:
    given = {"prompt": "a cat", "seed": -1, "width": 256, "height": 256, "steps": 1}
    response = post(workflow_server, "sd1.5/txt2img", input=given)
    assert response.status_code == 200, response.text
    seed = response.json()["input"]["seed"]
    assert seed >= 0 and response.json()["prompt"]["3"]["inputs"]["seed"] == seed


def test_a_seed_of_minus_one_in_a_generated_graph_runs_with_a_random_seed(workflow_server: ApiServer) -> None:
    response = post(workflow_server, "tests/raw_seed", input={})
    assert response.status_code == 200, response.text
    assert response.json()["input"] == {"seed": -1}
    assert response.json()["prompt"]["3"]["inputs"]["seed"] >= 0


def test_a_seed_of_minus_one_in_a_prompt_runs_with_a_random_seed(workflow_server: ApiServer) -> None:
    response = workflow_server.http.post("/prompt", json={"prompt": txt2img(seed=-1)})
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["prompt"]["5"]["inputs"]["seed"] < 2**53


def test_an_unknown_input_field_is_ignored_with_one_warning_naming_it(workflow_server: ApiServer) -> None:
    response = post(workflow_server, "tests/deep/er/solid", id="unknown-field", input={"size": 8, "colour": "red"})
    assert response.status_code == 200, response.text
    # The echo shows what ran: the validated input.
    assert response.json()["input"] == {"size": 8, "fail": False}
    (warning,) = [
        entry
        for entry in warnings_for(workflow_server, "ignoring input fields the workflow does not know")
        if entry.get("request_id") == "unknown-field"
    ]
    assert warning["fields"] == ["input.colour"] and warning["route"] == "/workflow/tests/deep/er/solid"


def test_reference_typescript_files_get_one_warning_each(workflow_server: ApiServer) -> None:
    warnings = warnings_for(
        workflow_server,
        "skipping a TypeScript/JavaScript workflow file: workflows are Python modules here; see the README's "
        "section 'Migrating TypeScript workflows'",
    )
    folder = Path(workflow_server.env["WORKFLOW_DIR"])
    assert sorted(entry["file"] for entry in warnings) == sorted(str(folder / name) for name in REFERENCE_FILES)
    assert {entry["docs"] for entry in warnings} == {"README.md#migrating-typescript-workflows"}


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


@pytest.mark.parametrize("denoise", [1e-308, 0.001, -0.5, 1.5])
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
        "/workflow/tests/raw_seed",
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
        s3={"bucket": "workflow-outputs", "prefix": "wf/"},
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
