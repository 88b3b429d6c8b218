"""POST /workflow/sd1.5/img2img — image to image with a Stable Diffusion 1.5 checkpoint.

The fields, defaults and bounds are those of the reference server's example of the same route. Its resize node
(ImageResize+) comes from a custom node pack; this one uses ComfyUI's own ImageScale, which scales the image to
cover width x height and crops the overflow evenly from both sides, so the result is always width x height
(ImageResize+'s "keep proportion" fits the image inside instead, so one side can come out shorter)."""

from typing import Literal

from pydantic import BaseModel, Field

from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint
from comfyui_api.workflows.fields import Denoise, Seed, seed_field
from comfyui_api.workflows.recipes import sd_img2img

summary = "Image to image (SD1.5)"
description = "Redraws an input image, resized to width x height, guided by a prompt."


class RequestSchema(BaseModel):
    prompt: str = Field(description="What the image shows")
    negative_prompt: str = Field("text, watermark", description="What the image must not show")
    seed: Seed = seed_field()
    steps: int = Field(15, ge=1, le=100, description="Sampling steps")
    cfg_scale: float = Field(8, ge=0, le=20, description="Classifier-free guidance scale")
    sampler_name: Sampler = Field("euler", description="Sampler")
    scheduler: Scheduler = Field("normal", description="Noise schedule")
    denoise: Denoise = Field(0.8, description="How much to change: 0 keeps the image, 1 ignores it")
    checkpoint: Checkpoint = Field(default_factory=default_checkpoint, description="SD1.5 checkpoint file")
    image: str = Field(description="The input image: http(s)/s3/Azure/Hugging Face URL, base64, or a data: URL")
    width: int = Field(512, ge=64, le=2048, description="Width of the result in pixels")
    height: int = Field(512, ge=64, le=2048, description="Height of the result in pixels")
    interpolation: Literal["nearest"] = Field("nearest", description="How the input image is resampled")
    resize_method: Literal["keep proportion"] = Field(
        "keep proportion", description="Resized without distortion: scaled to cover width x height, centre-cropped"
    )
    resize_condition: Literal["always"] = Field("always", description="When the input image is resized")
    multiple_of: int = Field(0, ge=0, description="Above 1: width and height are rounded down to a multiple of it")


def generate_workflow(input: RequestSchema) -> dict:
    return sd_img2img(
        prompt=input.prompt,
        negative_prompt=input.negative_prompt,
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
        filename_prefix="img2img",
    )
