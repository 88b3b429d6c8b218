"""POST /workflow/sd1.5/txt2img — text to image with a Stable Diffusion 1.5 checkpoint."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (SD1.5)"
description = "Generates images from a prompt with a Stable Diffusion 1.5 checkpoint."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    width: int = Field(512, ge=64, le=2048, multiple_of=8, description="Width in pixels")
    height: int = Field(512, ge=64, le=2048, multiple_of=8, description="Height in pixels")
    batch_size: int = Field(1, ge=1, le=16, description="Images per request")
    seed: int = Field(0, ge=0, description="Noise seed; the same seed gives the same image")
    steps: int = Field(20, ge=1, le=150, description="Sampling steps")
    cfg: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint, description="SD1.5 checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), filename_prefix="txt2img")
