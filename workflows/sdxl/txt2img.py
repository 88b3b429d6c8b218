"""POST /workflow/sdxl/txt2img — text to image with an SDXL checkpoint."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler
from comfyui_api.workflows.recipes import sd_txt2img

summary = "Text to image (SDXL)"


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    width: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Height in pixels")
    batch_size: int = Field(1, ge=1, le=8, description="Images per request")
    seed: int = Field(0, ge=0, description="Noise seed")
    steps: int = Field(25, ge=1, le=150, description="Sampling steps")
    cfg: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("dpmpp_2m", description="Sampler")
    scheduler: Scheduler = Field("karras", description="Noise schedule")
    checkpoint: Checkpoint = Field("sd_xl_base_1.0.safetensors", description="SDXL base checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_txt2img(**input.model_dump(), filename_prefix="sdxl")
