"""The model key a job is routed by: the same for two graphs that load the same models, whatever else differs."""

from __future__ import annotations

from typing import Any

from comfyui_api.fleet.routing import model_key
from tests.support.graphs import slow, txt2img


def _with_lora(graph: dict[str, Any], lora: str) -> dict[str, Any]:
    lora_node = {
        "class_type": "LoraLoader",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 1, "strength_clip": 1},
    }
    return {**graph, "90": lora_node}


def test_graphs_loading_the_same_models_share_a_key_whatever_else_differs() -> None:
    assert model_key(txt2img(64, 64, seed=1)) == model_key(txt2img(128, 96, steps=4, seed=7))


def test_each_model_a_graph_loads_counts_in_its_key() -> None:
    plain = model_key(txt2img())
    with_lora = model_key(_with_lora(txt2img(), "a.safetensors"))
    assert len({plain, with_lora, model_key(_with_lora(txt2img(), "b.safetensors"))}) == 3


def test_a_graph_without_a_model_loader_has_no_key() -> None:
    assert model_key(slow()) is None
    assert model_key({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ["2", 0]}}}) is None
    assert model_key({"1": "not a node", "2": {"class_type": "VAELoader"}}) is None


def test_a_key_is_a_short_hex_name_for_a_queue() -> None:
    key = model_key(txt2img())
    assert key is not None and len(key) == 16 and int(key, 16) >= 0
