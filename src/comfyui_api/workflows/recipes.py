"""API-format graphs of the common Stable Diffusion and Flux workflows, for workflow modules to build on.

Each function returns the graph a ComfyUI user would export (Save → Export (API)) for that workflow, with
the given values filled in.
"""

from __future__ import annotations

from typing import Any

Graph = dict[str, dict[str, Any]]


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
    negative_prompt: str = "",
    width: int = 512,
    height: int = 512,
    batch_size: int = 1,
    seed: int = 0,
    steps: int = 20,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    filename_prefix: str = "ComfyUI",
) -> Graph:
    """Checkpoint → text encoders → empty latent → KSampler → VAE decode → save (SD1.5, SDXL)."""
    return {
        "4": _node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=checkpoint),
        **_encoders(["4", 1], prompt, negative_prompt),
        "5": _node("EmptyLatentImage", "Empty Latent Image", width=width, height=height, batch_size=batch_size),
        "3": _node(
            "KSampler",
            "KSampler",
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=1.0,
            model=["4", 0],
            positive=["6", 0],
            negative=["7", 0],
            latent_image=["5", 0],
        ),
        "8": _node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
        "9": _node("SaveImage", "Save Image", filename_prefix=filename_prefix, images=["8", 0]),
    }


def sd_img2img(*, image: str, denoise: float = 0.75, **txt2img: Any) -> Graph:
    """The txt2img graph with the latent encoded from `image` (a URL, base64 or an input file name)."""
    graph = sd_txt2img(**txt2img)
    del graph["5"]
    graph["10"] = _node("LoadImage", "Load Image", image=image)
    graph["11"] = _node("VAEEncode", "VAE Encode", pixels=["10", 0], vae=["4", 2])
    graph["3"]["inputs"].update(latent_image=["11", 0], denoise=denoise)
    return graph


def sdxl_refiner(*, refiner_checkpoint: str, refiner_steps: int = 5, **txt2img: Any) -> Graph:
    """SDXL base for the first steps, then the refiner for the last `refiner_steps` (KSamplerAdvanced)."""
    graph = sd_txt2img(**txt2img)
    base = graph.pop("3")["inputs"]
    total = base["steps"]
    switch = max(0, total - refiner_steps)
    shared = {"noise_seed": base["seed"], "steps": total, "cfg": base["cfg"], "sampler_name": base["sampler_name"]}
    shared["scheduler"] = base["scheduler"]
    graph.update(
        {
            "12": _node("CheckpointLoaderSimple", "Load Refiner", ckpt_name=refiner_checkpoint),
            **_encoders(["12", 1], graph["6"]["inputs"]["text"], graph["7"]["inputs"]["text"], ("15", "16")),
            "10": _node(
                "KSamplerAdvanced",
                "Base",
                add_noise="enable",
                start_at_step=0,
                end_at_step=switch,
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
                start_at_step=switch,
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


def flux_txt2img(
    *,
    prompt: str,
    unet: str = "flux1-dev.safetensors",
    clip_l: str = "clip_l.safetensors",
    t5xxl: str = "t5xxl_fp16.safetensors",
    vae: str = "ae.safetensors",
    width: int = 1024,
    height: int = 1024,
    batch_size: int = 1,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 3.5,
    sampler_name: str = "euler",
    scheduler: str = "simple",
    filename_prefix: str = "ComfyUI",
) -> Graph:
    """Flux (dev or schnell): separate UNet, dual CLIP and VAE loaders, guidance, custom sampler."""
    return {
        "12": _node("UNETLoader", "Load Diffusion Model", unet_name=unet, weight_dtype="default"),
        "11": _node("DualCLIPLoader", "DualCLIPLoader", clip_name1=t5xxl, clip_name2=clip_l, type="flux"),
        "10": _node("VAELoader", "Load VAE", vae_name=vae),
        "6": _node("CLIPTextEncode", "Prompt", text=prompt, clip=["11", 0]),
        "26": _node("FluxGuidance", "FluxGuidance", guidance=guidance, conditioning=["6", 0]),
        "27": _node("EmptySD3LatentImage", "Empty Latent", width=width, height=height, batch_size=batch_size),
        "25": _node("RandomNoise", "Noise", noise_seed=seed),
        "16": _node("KSamplerSelect", "Sampler", sampler_name=sampler_name),
        "17": _node("BasicScheduler", "Scheduler", scheduler=scheduler, steps=steps, denoise=1.0, model=["12", 0]),
        "22": _node("BasicGuider", "Guider", model=["12", 0], conditioning=["26", 0]),
        "13": _node(
            "SamplerCustomAdvanced",
            "Sample",
            noise=["25", 0],
            guider=["22", 0],
            sampler=["16", 0],
            sigmas=["17", 0],
            latent_image=["27", 0],
        ),
        "8": _node("VAEDecode", "VAE Decode", samples=["13", 0], vae=["10", 0]),
        "9": _node("SaveImage", "Save Image", filename_prefix=filename_prefix, images=["8", 0]),
    }


def flux_img2img(*, image: str, denoise: float = 0.75, **txt2img: Any) -> Graph:
    graph = flux_txt2img(**txt2img)
    del graph["27"]
    graph["30"] = _node("LoadImage", "Load Image", image=image)
    graph["31"] = _node("VAEEncode", "VAE Encode", pixels=["30", 0], vae=["10", 0])
    graph["13"]["inputs"]["latent_image"] = ["31", 0]
    graph["17"]["inputs"]["denoise"] = denoise
    return graph
