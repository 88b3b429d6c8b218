"""The example workflows take the reference server's example fields (names, defaults, bounds), and a workflow
request notes the `input` fields its schema ignored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field, create_model

from comfyui_api.workflows.loader import MIGRATION_DOC, WorkflowBody, discover, ignored_fields
from tests.support.paths import REPO

REQUIRED = object()
RANDOM = object()  # a new random seed per request
LIVE = object()  # read from ComfyUI when the request comes (the warmup's checkpoint, else the first)
UNBOUNDED = (None, None)

# Per route, as the reference server's examples declare them: field → (default, (minimum, maximum)).
SD_SAMPLING = {
    "seed": (RANDOM, (-1, 2**64 - 1)),
    "sampler_name": ("euler", UNBOUNDED),
    "scheduler": ("normal", UNBOUNDED),
    "checkpoint": (LIVE, UNBOUNDED),
}
PROMPT = {"prompt": (REQUIRED, UNBOUNDED)}
IMAGE = {"image": (REQUIRED, UNBOUNDED)}
RESIZE = {"interpolation": ("nearest", UNBOUNDED), "resize_condition": ("always", UNBOUNDED)}
SIZE_512 = {"width": (512, (256, 2048)), "height": (512, (256, 2048))}
SIZE_1024 = {"width": (1024, (256, 2048)), "height": (1024, (256, 2048))}
EXPECTED: dict[str, dict[str, tuple[Any, tuple[float | None, float | None]]]] = {
    "sd1.5/txt2img": {
        **PROMPT,
        **SD_SAMPLING,
        **SIZE_512,
        "negative_prompt": ("", UNBOUNDED),
        "steps": (20, (1, 100)),
        "cfg_scale": (8, (0, 20)),
        "denoise": (1, (0, 1)),
    },
    "sd1.5/img2img": {
        **PROMPT,
        **SD_SAMPLING,
        **IMAGE,
        **RESIZE,
        "negative_prompt": ("text, watermark", UNBOUNDED),
        "steps": (15, (1, 100)),
        "cfg_scale": (8, (0, 20)),
        "denoise": (0.8, (0, 1)),
        "width": (512, (64, 2048)),
        "height": (512, (64, 2048)),
        "resize_method": ("keep proportion", UNBOUNDED),
        "multiple_of": (0, (0, None)),
    },
    "sdxl/txt2img": {
        **PROMPT,
        **SD_SAMPLING,
        **SIZE_1024,
        "negative_prompt": ("text, watermark", UNBOUNDED),
        "steps": (20, (1, 100)),
        "cfg_scale": (8, (0, 20)),
        "denoise": (1, (0, 1)),
    },
    "sdxl/txt2img-with-refiner": {
        **PROMPT,
        **SD_SAMPLING,
        **SIZE_1024,
        "negative_prompt": ("text, watermark", UNBOUNDED),
        "steps": (25, (1, 100)),
        "cfg_scale": (8, (0, 20)),
        "base_start_step": (0, (0, 100)),
        "base_end_step": (20, (0, 100)),
        "refiner_start_step": (20, (0, 100)),
        "refiner_checkpoint": ("sd_xl_refiner_1.0.safetensors", UNBOUNDED),
    },
    "sdxl/img2img": {
        **PROMPT,
        **SD_SAMPLING,
        **IMAGE,
        # The reference gives none, and ComfyUI refuses the graph without one.
        "negative_prompt": ("", UNBOUNDED),
        "width": (4096, (256, 4096)),
        "height": (4096, (256, 4096)),
        "steps": (20, (1, 100)),
        "cfg_scale": (5.5, (0, 20)),
        "sampler_name": ("dpmpp_2m_sde_gpu", UNBOUNDED),
        "scheduler": ("exponential", UNBOUNDED),
        "denoise": (0.75, (0, 1)),
        "upscale_method": ("nearest-exact", UNBOUNDED),
        "target_width": (1024, (256, 4096)),
        "target_height": (1024, (256, 4096)),
    },
    "flux/txt2img": {
        **PROMPT,
        **SD_SAMPLING,
        **SIZE_1024,
        "steps": (4, (1, 100)),
        "cfg_scale": (1, (0, 20)),
        "scheduler": ("simple", UNBOUNDED),
        "denoise": (1, (0, 1)),
    },
    "flux/img2img": {
        **PROMPT,
        **SD_SAMPLING,
        **IMAGE,
        **RESIZE,
        **SIZE_1024,
        "steps": (4, (1, 100)),
        "cfg_scale": (1, (0, 20)),
        "scheduler": ("simple", UNBOUNDED),
        "denoise": (0.8, (0, 1)),
        "resize_method": ("fill / crop", UNBOUNDED),
        # Unbounded in the reference; a negative multiple means nothing.
        "multiple_of": (8, (0, None)),
    },
}
EXAMPLES = {workflow.route: workflow for workflow in discover(REPO / "workflows")}


def test_every_example_is_checked() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("route", sorted(EXPECTED))
def test_an_example_takes_the_reference_fields_with_their_defaults_and_bounds(route: str) -> None:
    schema = EXAMPLES[route].schema
    properties = schema.model_json_schema()["properties"]
    assert set(schema.model_fields) == set(EXPECTED[route])
    for name, (default, bounds) in EXPECTED[route].items():
        field = schema.model_fields[name]
        if default is REQUIRED:
            assert field.is_required(), name
        elif default is RANDOM or default is LIVE:
            assert field.default_factory is not None, name
        else:
            assert field.default == default and type(field.default) is type(default), name
        assert (properties[name].get("minimum"), properties[name].get("maximum")) == bounds, name


@pytest.mark.parametrize("denoise", [0, 0.01, 0.5, 1])
def test_a_denoise_comfyui_can_divide_by_is_taken(denoise: float) -> None:
    assert EXAMPLES["sd1.5/txt2img"].schema(prompt="x", denoise=denoise).denoise == denoise


def test_the_img2img_examples_resize_with_core_nodes_to_the_requested_size() -> None:
    given = {"prompt": "x", "image": "in.png", "checkpoint": "c.safetensors"}
    for route, size in (("sd1.5/img2img", (300, 260)), ("flux/img2img", (296, 256))):  # flux: multiples of 8
        workflow = EXAMPLES[route]
        graph = workflow.generate(workflow.schema(**given, width=300, height=260))
        (resize,) = [node for node in graph.values() if node["class_type"] == "ImageScale"]
        assert (resize["inputs"]["width"], resize["inputs"]["height"], resize["inputs"]["crop"]) == (*size, "center")
    workflow = EXAMPLES["sdxl/img2img"]
    graph = workflow.generate(workflow.schema(**given, target_width=768, target_height=512))
    (resize,) = [node for node in graph.values() if node["class_type"] == "ImageScale"]
    assert (resize["inputs"]["width"], resize["inputs"]["height"]) == (768, 512)


class Lora(BaseModel):
    name: str
    weight: float = 1.0


class Nested(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    prompt: str
    cfg_scale: float = Field(7.0, alias="cfgScale")
    steps: int = Field(20, validation_alias=AliasChoices("steps", "num_steps"))
    seed: int = Field(0, validation_alias=AliasPath("sampling", "seed"))
    loras: list[Lora] = []
    by_name: dict[str, Lora] = {}


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str


def _validate(schema: type[BaseModel], raw: dict[str, Any]) -> WorkflowBody:
    body_model = create_model("Body", __base__=WorkflowBody, input=(schema, ...))
    return body_model.model_validate({"id": "r1", "input": raw, "not_a_field": 1})


def test_the_input_fields_a_schema_ignores_are_named_at_every_level() -> None:
    body = _validate(
        Nested,
        {
            "prompt": "x",
            "cfg": 3,
            "cfgScale": 4,
            "num_steps": 5,
            "sampling": {"seed": 6},
            "loras": [{"name": "a", "strength": 1}, {"name": "b"}],
            "by_name": {"c": {"name": "c", "wieght": 0.5}},
        },
    )
    assert body.ignored == ["input.cfg", "input.loras.0.strength", "input.by_name.c.wieght"]


def test_nothing_is_ignored_when_every_field_is_known_or_kept() -> None:
    assert _validate(Nested, {"prompt": "x", "cfg_scale": 2, "steps": 3}).ignored == []
    assert _validate(Open, {"prompt": "x", "anything": 1}).ignored == []


def test_ignored_fields_takes_anything_json_can_hold() -> None:
    assert list(ignored_fields(["not", "a", "model"], Nested(prompt="x"), "input")) == []
    assert list(ignored_fields({"prompt": "x", "loras": "oops"}, Nested(prompt="x"), "input")) == []


def test_reference_workflow_files_get_one_warning_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a.ts", "a.js", "sub/b.ts", "_private/c.ts", ".hidden.js", "node_modules/zod/index.js", "d.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("export default {};\n")
    with caplog.at_level(logging.WARNING, logger="comfyui_api.workflows.loader"):
        assert discover(tmp_path) == []
    warned = [record for record in caplog.records if getattr(record, "docs", None) == MIGRATION_DOC]
    assert [Path(record.file).relative_to(tmp_path).as_posix() for record in warned] == ["a.js", "a.ts", "sub/b.ts"]
    assert all("Migrating TypeScript workflows" in record.getMessage() for record in warned)
