"""POST /workflow/sdxl/txt2img — text to image with an SDXL checkpoint.

The fields, defaults and bounds are those of the reference server's example of the same route."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Denoise, Seed, seed_field
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (SDXL)"
description = "Generates an image from a prompt with an SDXL checkpoint."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    width: int = Field(1024, ge=256, le=2048, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, description="Height in pixels")
    seed: Seed = seed_field()
    steps: int = Field(20, ge=1, le=100, description="Sampling steps")
    cfg_scale: float = Field(8, ge=0, le=20, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")
    denoise: Denoise = Field(1, description="Denoising strength")
    checkpoint: Checkpoint = Field(
        default_factory=default_checkpoint, description="SDXL checkpoint file (default: the warmup prompt's)"
    )


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), filename_prefix="sdxl")
