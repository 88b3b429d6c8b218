"""POST /workflow/sd1.5/txt2img — text to image with a Stable Diffusion 1.5 checkpoint."""

from pydantic import Field

from comfyui_api.workflows import Checkpoint, default_checkpoint
from comfyui_api.workflows.fields import Prompts, Sampling, Size
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (SD1.5)"
description = "Generates images from a prompt with a Stable Diffusion 1.5 checkpoint."


class RequestSchema(Sampling, Size, Prompts):
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint, description="SD1.5 checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), filename_prefix="txt2img")
