"""POST /workflow/sdxl/txt2img-with-refiner — SDXL base, then the refiner for the last steps."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler
from comfyui_api.workflows.recipes import sdxl_refiner

summary = "Text to image with refiner (SDXL)"


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    width: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Height in pixels")
    seed: int = Field(0, ge=0, description="Noise seed")
    steps: int = Field(25, ge=2, le=150, description="Sampling steps in all")
    refiner_steps: int = Field(5, ge=1, le=50, description="The last steps, done by the refiner")
    cfg: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("dpmpp_2m", description="Sampler")
    scheduler: Scheduler = Field("karras", description="Noise schedule")
    checkpoint: Checkpoint = Field("sd_xl_base_1.0.safetensors", description="SDXL base checkpoint file")
    refiner_checkpoint: Checkpoint = Field("sd_xl_refiner_1.0.safetensors", description="SDXL refiner file")


def generate_workflow(input: RequestSchema) -> dict:
    return sdxl_refiner(**input.model_dump(), filename_prefix="sdxl-refined")
