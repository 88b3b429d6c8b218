"""POST /workflow/sdxl/txt2img — text to image with an SDXL checkpoint."""

from pydantic import Field

from comfyui_api.workflows import Checkpoint
from comfyui_api.workflows.fields import Prompts, SdxlSampling, SdxlSize
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (SDXL)"


class RequestSchema(SdxlSampling, SdxlSize, Prompts):
    checkpoint: Checkpoint = Field("sd_xl_base_1.0.safetensors", description="SDXL base checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), filename_prefix="sdxl")
