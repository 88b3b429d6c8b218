"""POST /workflow/sd1.5/txt2img — text to image with a Stable Diffusion 1.5 checkpoint.

The fields, defaults and bounds are those of the reference server's example of the same route."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Denoise, Seed, seed_field
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (SD1.5)"
description = "Generates an image from a prompt with a Stable Diffusion 1.5 checkpoint."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("", description="What the image must not show")
    width: int = Field(512, ge=256, le=2048, description="Width in pixels")
    height: int = Field(512, ge=256, le=2048, description="Height in pixels")
    seed: Seed = seed_field()
    steps: int = Field(20, ge=1, le=100, description="Sampling steps")
    cfg_scale: float = Field(8, ge=0, le=20, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")
    denoise: Denoise = Field(1, description="Denoising strength")
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint, description="SD1.5 checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), filename_prefix="txt2img")
