"""API-format graphs the tests send: small enough to run in about a second on a CPU."""

from __future__ import annotations

import io
import itertools
import json
import struct
from typing import Any

from PIL import Image

from .paths import CHECKPOINT_NAME

Graph = dict[str, dict[str, Any]]


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _sample(latent: list[Any], *, steps: int, seed: int, denoise: float, prefix: str) -> Graph:
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT_NAME),
        "2": node("CLIPTextEncode", text="a cat", clip=["1", 1]),
        "3": node("CLIPTextEncode", text="", clip=["1", 1]),
        "5": node(
            "KSampler",
            model=["1", 0],
            positive=["2", 0],
            negative=["3", 0],
            latent_image=latent,
            seed=seed,
            steps=steps,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            denoise=denoise,
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["1", 2]),
        "7": node("SaveImage", images=["6", 0], filename_prefix=prefix),
    }


def txt2img(width: int = 64, height: int = 64, *, batch: int = 1, steps: int = 1, seed: int = 1) -> Graph:
    graph = _sample(["4", 0], steps=steps, seed=seed, denoise=1.0, prefix="txt2img")
    graph["4"] = node("EmptyLatentImage", width=width, height=height, batch_size=batch)
    return graph


def img2img(image: str, *, size: int = 64, steps: int = 2) -> Graph:
    graph = _sample(["9", 0], steps=steps, seed=2, denoise=0.5, prefix="img2img")
    graph["8"] = node("LoadImage", image=image)
    graph["10"] = node("ImageScale", image=["8", 0], upscale_method="bilinear", width=size, height=size, crop="center")
    graph["9"] = node("VAEEncode", pixels=["10", 0], vae=["1", 2])
    return graph


def solid(width: int, height: int, color: int = 0, prefix: str = "solid") -> Graph:
    return {
        "1": node("EmptyImage", width=width, height=height, batch_size=1, color=color),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }


# Each slow graph's image has a colour of its own: ComfyUI would answer a graph it ran before from its cache at once.
_slow_graphs = itertools.count()


def slow(size: int = 1536, blurs: int = 3) -> Graph:
    """Several seconds of work between nodes, so an interrupt or a kill lands mid-prompt; never the same graph
    twice in a test process, so none is ever answered from ComfyUI's cache."""
    color = 0x808080 + next(_slow_graphs) % 0x7F7F7F
    graph: Graph = {"1": node("EmptyImage", width=size, height=size, batch_size=1, color=color)}
    previous = "1"
    for index in range(blurs):
        node_id = str(index + 2)
        graph[node_id] = node("ImageBlur", image=[previous, 0], blur_radius=31, sigma=10.0)
        previous = node_id
    graph["99"] = node("SaveImage", images=[previous, 0], filename_prefix="slow")
    return graph


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def lora_bytes(seed: int = 0) -> bytes:
    """A valid safetensors LoRA file whose one tensor matches no layer: ComfyUI loads it and applies nothing."""
    header = json.dumps({f"unused_{seed}.lora_up.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    encoded = header.encode().ljust(len(header) + (-len(header) % 8))
    return struct.pack("<Q", len(encoded)) + encoded + b"\0\0\0\0"


def img2img_with_lora(image: str, lora: str, *, size: int = 64) -> Graph:
    """img2img whose model and CLIP pass through a LoraLoader (node 11)."""
    graph = img2img(image, size=size)
    graph["11"] = node(
        "LoraLoader", model=["1", 0], clip=["1", 1], lora_name=lora, strength_model=1.0, strength_clip=1.0
    )
    graph["5"]["inputs"]["model"] = ["11", 0]
    for encoder in ("2", "3"):
        graph[encoder]["inputs"]["clip"] = ["11", 1]
    return graph
