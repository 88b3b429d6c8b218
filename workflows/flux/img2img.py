"""POST /workflow/flux/img2img — image to image with a Flux.1 checkpoint (dev or schnell, all in one file).

The fields, defaults and bounds are those of the reference server's example of the same route. Its resize node
(ImageResize+, "fill / crop") comes from a custom node pack; ComfyUI's own ImageScale does the same here: the image
is scaled to cover width x height and the overflow cropped evenly from both sides."""

from typing import Literal

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Denoise, Seed, seed_field
from comfyui_api.workflows.recipes import sd_img2img

summary = "Image to image (Flux.1)"
description = "Redraws an input image, resized to width x height, guided by a prompt."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    width: int = Field(1024, ge=256, le=2048, description="Width of the result in pixels")
    height: int = Field(1024, ge=256, le=2048, description="Height of the result in pixels")
    seed: Seed = seed_field()
    steps: int = Field(4, ge=1, le=100, description="Sampling steps")
    cfg_scale: float = Field(1, ge=0, le=20, description="Classifier-free guidance scale (1: none, as Flux wants)")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("simple", description="Noise schedule")
    denoise: Denoise = Field(0.8, description="How much to change: 0 keeps the image, 1 ignores it")
    checkpoint: Checkpoint = Field(
        default_factory=default_checkpoint, description="Flux.1 checkpoint file (default: the warmup prompt's)"
    )
    image: str = Field(description="The input image: http(s)/s3/Azure/Hugging Face URL, base64, or a data: URL")
    interpolation: Literal["nearest"] = Field("nearest", description="How the input image is resampled")
    resize_method: Literal["fill / crop"] = Field(
        "fill / crop", description="Scaled to cover width x height, then centre-cropped"
    )
    resize_condition: Literal["always"] = Field("always", description="When the input image is resized")
    multiple_of: int = Field(8, ge=0, description="Above 1: width and height are rounded down to a multiple of it")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_img2img(
        prompt=input.prompt,
        seed=input.seed,
        steps=input.steps,
        cfg_scale=input.cfg_scale,
        sampler_name=input.sampler_name,
        scheduler=input.scheduler,
        denoise=input.denoise,
        checkpoint=input.checkpoint,
        image=input.image,
        width=input.width,
        height=input.height,
        multiple_of=input.multiple_of,
        upscale_method="nearest-exact",  # ImageScale's name for "nearest", the only interpolation offered
        filename_prefix="flux-img2img",
    )
