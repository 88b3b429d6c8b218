"""API-format graphs of the common Stable Diffusion and Flux workflows, for workflow modules to build on.

Each function returns the graph a ComfyUI user would export (Save → Export (API)) for that workflow, with the given
values filled in. Parameters are named as the reference server's example workflows name their request fields
(`cfg_scale`, `negative_prompt`, …), so a RequestSchema with those names can be passed as `**input.model_dump()`.
Only core ComfyUI nodes are used.
"""

from __future__ import annotations

from typing import Any, Literal

Graph = dict[str, dict[str, Any]]
# ImageScale's methods.
UpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _encoders(clip: list[Any], prompt: str, negative: str, ids: tuple[str, str] = ("6", "7")) -> Graph:
    return {
        ids[0]: _node("CLIPTextEncode", "Positive prompt", text=prompt, clip=clip),
        ids[1]: _node("CLIPTextEncode", "Negative prompt", text=negative, clip=clip),
    }


def sd_txt2img(
    *,
    checkpoint: str,
    prompt: str,
    seed: int,
    negative_prompt: str = "",
    width: int = 512,
    height: int = 512,
    batch_size: int = 1,
    steps: int = 20,
    cfg_scale: float = 8.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    denoise: float = 1.0,
    latent: Literal["EmptyLatentImage", "EmptySD3LatentImage"] = "EmptyLatentImage",
    filename_prefix: str = "ComfyUI",
) -> Graph:
    """Checkpoint → text encoders → empty latent → KSampler → VAE decode → save (SD1.5, SDXL; Flux and SD3
    checkpoints with `latent="EmptySD3LatentImage"`)."""
    return {
        "4": _node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=checkpoint),
        **_encoders(["4", 1], prompt, negative_prompt),
        "5": _node(latent, "Empty Latent Image", width=width, height=height, batch_size=batch_size),
        "3": _node(
            "KSampler",
            "KSampler",
            seed=seed,
            steps=steps,
            cfg=cfg_scale,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            model=["4", 0],
            positive=["6", 0],
            negative=["7", 0],
            latent_image=["5", 0],
        ),
        "8": _node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
        "9": _node("SaveImage", "Save Image", filename_prefix=filename_prefix, images=["8", 0]),
    }


def sd_img2img(
    *,
    image: str,
    width: int = 512,
    height: int = 512,
    multiple_of: int = 0,
    upscale_method: UpscaleMethod = "nearest-exact",
    denoise: float = 0.8,
    **txt2img: Any,
) -> Graph:
    """The txt2img graph with the latent encoded from `image` (a URL, base64 or an input file name), first scaled to
    cover `width` x `height` and centre-cropped to it, so the result is exactly that size (each side first rounded
    down to a multiple of `multiple_of` when that is above 1)."""
    if multiple_of > 1:
        width, height = (max(multiple_of, side - side % multiple_of) for side in (width, height))
    graph = sd_txt2img(width=width, height=height, denoise=denoise, **txt2img)
    del graph["5"]
    graph["10"] = _node("LoadImage", "Load Image", image=image)
    graph["11"] = _node(
        "ImageScale",
        "Resize Image",
        upscale_method=upscale_method,
        width=width,
        height=height,
        crop="center",
        image=["10", 0],
    )
    graph["12"] = _node("VAEEncode", "VAE Encode", pixels=["11", 0], vae=["4", 2])
    graph["3"]["inputs"]["latent_image"] = ["12", 0]
    return graph


def sdxl_img2img(
    *,
    target_width: int = 1024,
    target_height: int = 1024,
    width: int = 1024,
    height: int = 1024,
    **img2img: Any,
) -> Graph:
    """The img2img graph at `target_width` x `target_height`, its prompts encoded with SDXL's size conditioning
    (`width` x `height`: the size the model is told the image has)."""
    graph = sd_img2img(width=target_width, height=target_height, **img2img)
    size = {
        "width": width,
        "height": height,
        "crop_w": 0,
        "crop_h": 0,
        "target_width": target_width,
        "target_height": target_height,
    }
    for node_id, title in (("6", "Positive prompt"), ("7", "Negative prompt")):
        text = graph[node_id]["inputs"]["text"]
        graph[node_id] = _node("CLIPTextEncodeSDXL", title, **size, text_g=text, text_l=text, clip=["4", 1])
    return graph


def sdxl_refiner(
    *,
    refiner_checkpoint: str,
    base_start_step: int = 0,
    base_end_step: int = 20,
    refiner_start_step: int = 20,
    **txt2img: Any,
) -> Graph:
    """SDXL base from `base_start_step` to `base_end_step` (KSamplerAdvanced, leftover noise kept), then the refiner
    from `refiner_start_step` to the end, each with its own checkpoint and text encoders."""
    graph = sd_txt2img(**txt2img)
    base = graph.pop("3")["inputs"]
    shared = {
        "noise_seed": base["seed"],
        "steps": base["steps"],
        "cfg": base["cfg"],
        "sampler_name": base["sampler_name"],
        "scheduler": base["scheduler"],
    }
    graph.update(
        {
            "12": _node("CheckpointLoaderSimple", "Load Refiner", ckpt_name=refiner_checkpoint),
            **_encoders(["12", 1], graph["6"]["inputs"]["text"], graph["7"]["inputs"]["text"], ("15", "16")),
            "10": _node(
                "KSamplerAdvanced",
                "Base",
                add_noise="enable",
                start_at_step=base_start_step,
                end_at_step=base_end_step,
                return_with_leftover_noise="enable",
                model=["4", 0],
                positive=["6", 0],
                negative=["7", 0],
                latent_image=["5", 0],
                **shared,
            ),
            "11": _node(
                "KSamplerAdvanced",
                "Refiner",
                add_noise="disable",
                start_at_step=refiner_start_step,
                end_at_step=10000,
                return_with_leftover_noise="disable",
                model=["12", 0],
                positive=["15", 0],
                negative=["16", 0],
                latent_image=["10", 0],
                **shared,
            ),
        }
    )
    graph["8"]["inputs"].update(samples=["11", 0], vae=["12", 2])
    return graph
