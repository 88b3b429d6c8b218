"""Small media samples for the unit tests: real images written by Pillow."""

from __future__ import annotations

import base64
import io

from PIL import Image

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def image_bytes(pillow_format: str = "PNG", size: tuple[int, int] = (4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=pillow_format)
    return buffer.getvalue()


def png_base64() -> str:
    return base64.b64encode(image_bytes("PNG")).decode()
