"""POST /workflow/flux/txt2img — text to image with Flux.1 (dev or schnell)."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Sampler, Scheduler, model_choice
from comfyui_api.workflows.recipes import flux_txt2img

summary = "Text to image (Flux.1)"


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    width: int = Field(1024, ge=256, le=2048, multiple_of=16, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, multiple_of=16, description="Height in pixels")
    batch_size: int = Field(1, ge=1, le=4, description="Images per request")
    seed: int = Field(0, ge=0, description="Noise seed")
    steps: int = Field(20, ge=1, le=100, description="Sampling steps (4 for schnell)")
    guidance: float = Field(3.5, ge=0, le=30, description="Flux guidance")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("simple", description="Noise schedule")
    unet: model_choice("diffusion_models") = Field("flux1-dev.safetensors", description="Flux diffusion model")
    clip_l: model_choice("text_encoders") = Field("clip_l.safetensors", description="CLIP-L text encoder")
    t5xxl: model_choice("text_encoders") = Field("t5xxl_fp16.safetensors", description="T5-XXL text encoder")
    vae: model_choice("vae") = Field("ae.safetensors", description="Flux VAE")


def generate_workflow(input: RequestSchema) -> dict:
    return flux_txt2img(**input.model_dump(), filename_prefix="flux")
