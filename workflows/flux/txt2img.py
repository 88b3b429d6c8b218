"""POST /workflow/flux/txt2img — text to image with Flux.1 (dev or schnell)."""

from pydantic import Field

from comfyui_api.workflows import Scheduler
from comfyui_api.workflows.fields import FluxModels, Sampling, Size
from comfyui_api.workflows.recipes import flux_txt2img

summary = "Text to image (Flux.1)"


class RequestSchema(FluxModels, Sampling, Size):
    prompt: str = Field(description="What the image shows")
    width: int = Field(1024, ge=256, le=2048, multiple_of=16, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, multiple_of=16, description="Height in pixels")
    scheduler: Scheduler = Field("simple", description="Noise schedule")


def generate_workflow(input: RequestSchema) -> dict:
    return flux_txt2img(**input.model_dump(), filename_prefix="flux")
