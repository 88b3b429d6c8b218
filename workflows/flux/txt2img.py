"""POST /workflow/flux/txt2img — text to image with a Flux.1 checkpoint (dev or schnell, all in one file).

The fields, defaults and bounds are those of the reference server's example of the same route: one checkpoint
holding the diffusion model, text encoders and VAE (such as flux1-schnell-fp8.safetensors), no negative prompt."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Denoise, Seed, seed_field
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (Flux.1)"
description = "Generates an image from a prompt with a Flux.1 checkpoint."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    width: int = Field(1024, ge=256, le=2048, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, description="Height in pixels")
    seed: Seed = seed_field()
    steps: int = Field(4, ge=1, le=100, description="Sampling steps")
    cfg_scale: float = Field(1, ge=0, le=20, description="Classifier-free guidance scale (1: none, as Flux wants)")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("simple", description="Noise schedule")
    denoise: Denoise = Field(1, description="Denoising strength")
    checkpoint: Checkpoint = Field(
        default_factory=default_checkpoint, description="Flux.1 checkpoint file (default: the warmup prompt's)"
    )


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), latent="EmptySD3LatentImage", filename_prefix="flux")
