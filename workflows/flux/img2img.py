"""POST /workflow/flux/img2img — image to image with Flux.1."""

from pydantic import Field

from comfyui_api.workflows import Scheduler
from comfyui_api.workflows.fields import FluxModels, Sampling, SourceImage
from comfyui_api.workflows.recipes import flux_img2img

summary = "Image to image (Flux.1)"


class RequestSchema(FluxModels, Sampling, SourceImage):
    prompt: str = Field(description="What the image shows")
    scheduler: Scheduler = Field("simple", description="Noise schedule")


def generate_workflow(input: RequestSchema) -> dict:
    return flux_img2img(**input.model_dump(), filename_prefix="flux-img2img")
