"""POST /workflow/sdxl/img2img — image to image with an SDXL checkpoint."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler
from comfyui_api.workflows.recipes import sd_img2img

summary = "Image to image (SDXL)"


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    image: str = Field(description="The input image: URL, base64, or a data: URL")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    denoise: float = Field(0.6, gt=0, le=1, description="How much to change the image")
    seed: int = Field(0, ge=0, description="Noise seed")
    steps: int = Field(25, ge=1, le=150, description="Sampling steps")
    cfg: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("dpmpp_2m", description="Sampler")
    scheduler: Scheduler = Field("karras", description="Noise schedule")
    checkpoint: Checkpoint = Field("sd_xl_base_1.0.safetensors", description="SDXL checkpoint file")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_img2img(**input.model_dump(), filename_prefix="sdxl-img2img")
