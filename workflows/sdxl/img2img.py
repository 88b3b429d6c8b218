"""POST /workflow/sdxl/img2img — image to image with an SDXL checkpoint."""

from pydantic import Field

from comfyui_api.workflows import Checkpoint
from comfyui_api.workflows.fields import Prompts, SdxlSampling, SourceImage
from comfyui_api.workflows.recipes import sd_img2img

summary = "Image to image (SDXL)"


class RequestSchema(SdxlSampling, SourceImage, Prompts):
    denoise: float = Field(0.6, ge=0.01, le=1, description="How much to change the image")
    checkpoint: Checkpoint = Field("sd_xl_base_1.0.safetensors", description="SDXL checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_img2img(**input.model_dump(), filename_prefix="sdxl-img2img")
