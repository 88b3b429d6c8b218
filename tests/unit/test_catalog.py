"""Each app's catalog is its own: workflow field types see the catalog of the app serving the request (validation,
defaults and the OpenAPI document), and none outside a request, where they accept anything."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from comfyui_api.app import create_app
from comfyui_api.comfy.process import ComfyProcess
from comfyui_api.config import Settings
from comfyui_api.workflows import Checkpoint, Sampler, default_checkpoint, model_choice
from comfyui_api.workflows.catalog import Catalog, current_catalog, using_catalog
from comfyui_api.workflows.loader import Workflow, mount

Lora = model_choice("loras")


class Inputs(BaseModel):
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint)
    sampler_name: Sampler = "euler"
    lora: Lora | None = None


def _catalog(samplers: list[str], checkpoints: list[str], loras: list[str]) -> Catalog:
    catalog = Catalog()
    catalog.samplers = samplers
    catalog.models = {"checkpoints": checkpoints, "loras": loras}
    return catalog


def _app(tmp_path: Path, samplers: list[str], checkpoints: list[str], loras: list[str]) -> FastAPI:
    settings = Settings(comfy_home=tmp_path / "comfy", cache_dir=tmp_path / "cache", workflow_dir=tmp_path / "wf")
    app = create_app(settings, process=ComfyProcess([], {}))
    catalog: Catalog = app.state.catalog
    catalog.samplers = samplers
    catalog.models = {"checkpoints": checkpoints, "loras": loras}
    workflow = Workflow("check", Inputs, lambda _: {}, None, None, tmp_path / "check.py")
    with using_catalog(catalog):
        mount(app, [workflow], markdown_descriptions=True)
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _input_schema(document: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"]["Inputs"]["properties"]


async def test_two_apps_see_only_their_own_catalog(tmp_path: Path) -> None:
    one = _app(tmp_path / "one", ["euler", "ddim"], ["one.safetensors"], ["one-lora.safetensors"])
    two = _app(tmp_path / "two", ["lcm"], ["two.safetensors"], [])

    async with _client(one) as first, _client(two) as second:
        documents = await asyncio.gather(first.get("/docs/json"), second.get("/docs/json"))
        # Concurrent requests to both apps: each runs in its own task, with its own app's catalog.
        answers = await asyncio.gather(
            *(
                client.post("/workflow/check", json={"input": {"sampler_name": "uni_pc"}})
                for _ in range(5)
                for client in (first, second)
            )
        )

    one_inputs, two_inputs = (_input_schema(document.json()) for document in documents)
    assert one_inputs["sampler_name"]["enum"] == ["euler", "ddim"]
    assert one_inputs["checkpoint"]["enum"] == ["one.safetensors"]
    assert two_inputs["sampler_name"]["enum"] == ["lcm"]
    assert two_inputs["checkpoint"]["enum"] == ["two.safetensors"]
    assert "| `sampler_name` | enum |" in documents[0].json()["paths"]["/workflow/check"]["post"]["description"]
    for index, answer in enumerate(answers):
        assert answer.status_code == 400
        assert answer.json()["location"] == "input.sampler_name"
        assert answer.json()["error"].endswith("available: euler, ddim" if index % 2 == 0 else "available: lcm")
    assert current_catalog() is None  # nothing is left behind by a request


def test_the_default_checkpoint_is_the_current_catalogs() -> None:
    one = _catalog(["euler"], ["one.safetensors", "other.safetensors"], [])
    two = _catalog(["euler"], ["two.safetensors"], [])
    two.warmup_checkpoint = "warm.safetensors"

    with using_catalog(one):
        assert Inputs().checkpoint == "one.safetensors"
        with using_catalog(two):
            assert Inputs().checkpoint == "warm.safetensors"
        assert default_checkpoint() == "one.safetensors"


def test_outside_an_app_the_field_types_accept_anything() -> None:
    assert current_catalog() is None

    inputs = Inputs.model_validate({"checkpoint": "any.ckpt", "sampler_name": "made_up", "lora": "x"})

    assert (inputs.checkpoint, inputs.sampler_name, inputs.lora) == ("any.ckpt", "made_up", "x")
    assert Inputs().checkpoint is None
    assert "enum" not in str(Inputs.model_json_schema())


def test_a_value_outside_the_current_catalog_is_refused() -> None:
    with using_catalog(_catalog(["euler"], ["one.safetensors"], ["a.safetensors"])), pytest.raises(ValueError) as exc:
        Inputs.model_validate({"lora": "b.safetensors"})

    assert "unknown loras file 'b.safetensors'; available: a.safetensors" in str(exc.value)
