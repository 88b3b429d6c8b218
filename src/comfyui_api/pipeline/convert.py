"""`convert_output`: re-encode still-image outputs as JPEG or WebP with Pillow.

Option names are the reference server's (sharp's). Pillow's encoders expose fewer knobs than libvips:
`trellisQuantisation`, `overshootDeringing`, `smartSubsample` and `preset` are accepted for compatibility
but cannot change Pillow's output; each other option has its documented effect.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

_STILL_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM"}
_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


class JpegOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: int = Field(80, ge=1, le=100)
    progressive: bool = False
    chromaSubsampling: Literal["4:2:0", "4:2:2", "4:4:4"] = "4:2:0"  # the reference server's (camelCase) names
    optimizeCoding: bool = True
    mozjpeg: bool = False
    trellisQuantisation: bool = False
    overshootDeringing: bool = False
    optimizeScans: bool = False
    quantisationTable: int = Field(0, ge=0, le=8)


class WebpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: int = Field(80, ge=1, le=100)
    alphaQuality: int = Field(100, ge=0, le=100)
    lossless: bool = False
    nearLossless: bool = False
    smartSubsample: bool = False
    preset: Literal["default", "photo", "picture", "drawing", "icon", "text"] = "default"
    effort: int = Field(4, ge=0, le=6)


class JpegOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["jpeg", "jpg"]
    options: JpegOptions | None = Field(None, description="Unknown keys (WebP's among them) are a 400.")


class WebpOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["webp"]
    options: WebpOptions | None = Field(None, description="Unknown keys (JPEG's among them) are a 400.")


# One variant per format, chosen by `format`: its options are validated against that format's only, and the OpenAPI
# document shows which options each format takes.
ConvertOutput = Annotated[JpegOutput | WebpOutput, Field(discriminator="format")]


def converted_name(name: str, fmt: str) -> str:
    """The output name with its last extension replaced by the requested format's."""
    stem, dot, _ = name.rpartition(".")
    return f"{stem if dot else name}.{fmt}"


def convert_file(path: Path, spec: ConvertOutput) -> Path | None:
    """Write the converted image beside `path` and return its path; None when `path` is not a still image."""
    try:
        with Image.open(path) as image:
            if image.format not in _STILL_FORMATS or getattr(image, "n_frames", 1) > 1:
                return None
            image.load()
            target = path.with_name(converted_name(path.name, spec.format))
            temporary = target.with_name(f".{target.name}.part")
            if spec.format == "webp":
                _save_webp(image, temporary, spec.options if isinstance(spec.options, WebpOptions) else WebpOptions())
            else:
                _save_jpeg(image, temporary, spec.options if isinstance(spec.options, JpegOptions) else JpegOptions())
    except (OSError, Image.DecompressionBombError):
        return None
    os.replace(temporary, target)
    return target


def _save_jpeg(image: Image.Image, target: Path, options: JpegOptions) -> None:
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    progressive = options.progressive or options.mozjpeg or options.optimizeScans
    rgb.save(
        target,
        format="JPEG",
        quality=options.quality,
        progressive=progressive,
        optimize=options.optimizeCoding or options.mozjpeg,
        subsampling=_SUBSAMPLING[options.chromaSubsampling],
        # Table 1 is mozjpeg's flat table; 0 (the default) is the standard Annex K table Pillow also uses.
        **({"qtables": [[16] * 64, [16] * 64]} if options.quantisationTable == 1 else {}),
    )


def _save_webp(image: Image.Image, target: Path, options: WebpOptions) -> None:
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    lossless = options.lossless or options.nearLossless
    if options.nearLossless and not options.lossless:
        # libwebp's near-lossless mode: snap pixel values to coarser steps (more for lower quality), then
        # encode losslessly; Pillow does not expose the mode, so the same preprocessing is done here.
        bits = min(5, (100 - options.quality) // 20)
        image = ImageOps.posterize(image.convert("RGB"), 8 - bits) if bits else image
    image.save(
        target,
        format="WEBP",
        quality=options.quality,
        alpha_quality=options.alphaQuality,
        lossless=lossless,
        method=options.effort,
    )
