"""POST /workflow/sdxl/txt2img-with-refiner — SDXL base for the first steps, then the refiner.

The fields, defaults and bounds are those of the reference server's example of the same route."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Seed, seed_field
from comfyui_api.workflows.recipes import sdxl_refiner

summary = "Text to image with refiner (SDXL)"
description = "Generates an image with an SDXL base checkpoint and finishes it with the refiner."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    width: int = Field(1024, ge=256, le=2048, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, description="Height in pixels")
    seed: Seed = seed_field()
    steps: int = Field(25, ge=1, le=100, description="Sampling steps, base and refiner together")
    cfg_scale: float = Field(8, ge=0, le=20, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")
    base_start_step: int = Field(0, ge=0, le=100, description="First step the base checkpoint samples")
    base_end_step: int = Field(20, ge=0, le=100, description="Step where the base checkpoint stops")
    refiner_start_step: int = Field(20, ge=0, le=100, description="Step where the refiner takes over")
    checkpoint: Checkpoint = Field(
        default_factory=default_checkpoint, description="SDXL base checkpoint file (default: the warmup prompt's)"
    )
    refiner_checkpoint: Checkpoint = Field("sd_xl_refiner_1.0.safetensors", description="SDXL refiner checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sdxl_refiner(**input.model_dump(), filename_prefix="sdxl-refined")
