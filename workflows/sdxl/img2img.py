"""POST /workflow/sdxl/img2img — image to image with an SDXL checkpoint.

The fields, defaults and bounds are those of the reference server's example of the same route: the input image is
resized to target_width x target_height (scaled to cover it, then centre-cropped), while width and height are
the size SDXL's text encoders are told about."""

from typing import Literal

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Denoise, Seed, seed_field
from comfyui_api.workflows.recipes import sdxl_img2img

summary = "Image to image (SDXL)"
description = "Redraws an input image, resized to target_width x target_height, guided by a prompt."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    # The reference leaves this without a default, and ComfyUI then rejects the graph: empty is what it meant.
    negative_prompt: str = Field("", description="What the image must not show")
    width: int = Field(4096, ge=256, le=4096, description="Size conditioning: the width the text encoders are given")
    height: int = Field(4096, ge=256, le=4096, description="Size conditioning: the height the text encoders are given")
    seed: Seed = seed_field()
    steps: int = Field(20, ge=1, le=100, description="Sampling steps")
    cfg_scale: float = Field(5.5, ge=0, le=20, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("dpmpp_2m_sde_gpu", description="Sampler")
    scheduler: Scheduler = Field("exponential", description="Noise schedule")
    denoise: Denoise = Field(0.75, description="How much to change: 0 keeps the image, 1 ignores it")
    checkpoint: Checkpoint = Field(
        default_factory=default_checkpoint, description="SDXL checkpoint file (default: the warmup prompt's)"
    )
    image: str = Field(description="The input image: http(s)/s3/Azure/Hugging Face URL, base64, or a data: URL")
    upscale_method: Literal["nearest-exact"] = Field("nearest-exact", description="How the input image is resampled")
    target_width: int = Field(1024, ge=256, le=4096, description="Width of the result in pixels")
    target_height: int = Field(1024, ge=256, le=4096, description="Height of the result in pixels")


def generate_workflow(input: RequestSchema) -> dict:
    return sdxl_img2img(**input.model_dump(), filename_prefix="sdxl-img2img")
