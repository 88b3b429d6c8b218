"""Input groups the example workflows share; a workflow's RequestSchema subclasses the ones it needs
(and redeclares a field to change its default)."""

from pydantic import BaseModel, Field

from . import Sampler, Scheduler, model_choice


class Sampling(BaseModel):
    seed: int = Field(0, ge=0, description="Noise seed; the same seed gives the same image")
    steps: int = Field(20, ge=1, le=150, description="Sampling steps")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")


class SdxlSampling(Sampling):
    steps: int = Field(25, ge=1, le=150, description="Sampling steps")
    sampler_name: Sampler = Field("dpmpp_2m", description="Sampler")
    scheduler: Scheduler = Field("karras", description="Noise schedule")


class Prompts(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    cfg: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale")


class Size(BaseModel):
    width: int = Field(512, ge=64, le=2048, multiple_of=8, description="Width in pixels")
    height: int = Field(512, ge=64, le=2048, multiple_of=8, description="Height in pixels")
    batch_size: int = Field(1, ge=1, le=16, description="Images per request")


class SourceImage(BaseModel):
    image: str = Field(description="The input image: http(s)/s3/Azure/Hugging Face URL, base64, or a data: URL")
    # At least ComfyUI's own step (0.01): its samplers divide the steps by it, and a denoise like 1e-308 fails there.
    denoise: float = Field(0.75, ge=0.01, le=1, description="How much to change: near 0 keeps the image, 1 ignores it")


class FluxModels(BaseModel):
    unet: model_choice("diffusion_models") = Field("flux1-dev.safetensors", description="Flux diffusion model")
    clip_l: model_choice("text_encoders") = Field("clip_l.safetensors", description="CLIP-L text encoder")
    t5xxl: model_choice("text_encoders") = Field("t5xxl_fp16.safetensors", description="T5-XXL text encoder")
    vae: model_choice("vae") = Field("ae.safetensors", description="Flux VAE")
    guidance: float = Field(3.5, ge=0, le=30, description="Flux guidance")


class SdxlSize(Size):
    width: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Width in pixels")
    height: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Height in pixels")
