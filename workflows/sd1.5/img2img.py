"""POST /workflow/sd1.5/img2img — image to image with a Stable Diffusion 1.5 checkpoint."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.recipes import sd_img2img

summary = "Image to image (SD1.5)"
description = "Redraws an input image (a URL, base64 or a data: URL) guided by a prompt."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    image: str = Field(description="The input image: http(s)/s3/Azure/Hugging Face URL, base64, or a data: URL")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    denoise: float = Field(0.75, gt=0, le=1, description="How much to change: 0 keeps the image, 1 ignores it")
    seed: int = Field(0, ge=0, description="Noise seed")
    steps: int = Field(20, ge=1, le=150, description="Sampling steps")
    cfg: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint, description="SD1.5 checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_img2img(**input.model_dump(), filename_prefix="img2img")
