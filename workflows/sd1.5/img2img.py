"""POST /workflow/sd1.5/img2img — image to image with a Stable Diffusion 1.5 checkpoint."""

from pydantic import Field

from comfyui_api.workflows import Checkpoint, default_checkpoint
from comfyui_api.workflows.fields import Prompts, Sampling, SourceImage
from comfyui_api.workflows.recipes import sd_img2img

summary = "Image to image (SD1.5)"
description = "Redraws an input image guided by a prompt."


class RequestSchema(Sampling, SourceImage, Prompts):
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint, description="SD1.5 checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_img2img(**input.model_dump(), filename_prefix="img2img")
