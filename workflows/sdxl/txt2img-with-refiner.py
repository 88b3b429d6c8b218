"""POST /workflow/sdxl/txt2img-with-refiner — SDXL base, then the refiner for the last steps."""

from pydantic import Field

from comfyui_api.workflows import Checkpoint
from comfyui_api.workflows.fields import Prompts, SdxlSampling, SdxlSize
from comfyui_api.workflows.recipes import sdxl_refiner

summary = "Text to image with refiner (SDXL)"


class RequestSchema(SdxlSampling, SdxlSize, Prompts):
    checkpoint: Checkpoint = Field("sd_xl_base_1.0.safetensors", description="SDXL base checkpoint file")
    refiner_steps: int = Field(5, ge=1, le=50, description="The last steps, done by the refiner")
    refiner_checkpoint: Checkpoint = Field("sd_xl_refiner_1.0.safetensors", description="SDXL refiner file")


def generate_workflow(input: RequestSchema) -> dict:
    return sdxl_refiner(**input.model_dump(), filename_prefix="sdxl-refined")
