"""POST /workflow/flux/img2img — image to image with Flux.1."""

from pydantic import BaseModel, Field

from comfyui_api.workflows import Sampler, Scheduler, model_choice
from comfyui_api.workflows.recipes import flux_img2img

summary = "Image to image (Flux.1)"


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    image: str = Field(description="The input image: URL, base64, or a data: URL")
    denoise: float = Field(0.75, gt=0, le=1, description="How much to change the image")
    seed: int = Field(0, ge=0, description="Noise seed")
    steps: int = Field(20, ge=1, le=100, description="Sampling steps")
    guidance: float = Field(3.5, ge=0, le=30, description="Flux guidance")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("simple", description="Noise schedule")
    unet: model_choice("diffusion_models") = Field("flux1-dev.safetensors", description="Flux diffusion model")
    clip_l: model_choice("text_encoders") = Field("clip_l.safetensors", description="CLIP-L text encoder")
    t5xxl: model_choice("text_encoders") = Field("t5xxl_fp16.safetensors", description="T5-XXL text encoder")
    vae: model_choice("vae") = Field("ae.safetensors", description="Flux VAE")


def generate_workflow(input: RequestSchema) -> dict:
    return flux_img2img(**input.model_dump(), filename_prefix="flux-img2img")
