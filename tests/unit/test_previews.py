"""ComfyUI's binary preview messages, built as its server.py builds them (`send_image`, `send_image_with_metadata`,
`encode_bytes`), and their conversion to JPEG."""

from __future__ import annotations

import io
import json
import struct

import pytest
from PIL import Image

from comfyui_api.comfy.previews import JPEG, PNG, Preview, as_jpeg, decode_preview


def encoded(pillow_format: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (16, 8), (10, 200, 30, 128)[: len(mode)]).save(buffer, format=pillow_format, quality=95)
    return buffer.getvalue()


def plain_frame(pillow_format: str, image: bytes) -> bytes:
    """A type-1 message (PREVIEW_IMAGE): image type 1 for JPEG, 2 for PNG, then the image."""
    image_type = 1 if pillow_format == "JPEG" else 2
    return struct.pack(">I", 1) + struct.pack(">I", image_type) + image


def metadata_frame(metadata: object, image: bytes) -> bytes:
    """A type-4 message (PREVIEW_IMAGE_WITH_METADATA): metadata length, JSON metadata, then the image."""
    packed = json.dumps(metadata).encode("utf-8")
    return struct.pack(">I", 4) + struct.pack(">I", len(packed)) + packed + image


@pytest.mark.parametrize(("pillow_format", "content_type"), [("JPEG", JPEG), ("PNG", PNG)])
def test_a_plain_preview_carries_its_image_and_no_prompt(pillow_format: str, content_type: str) -> None:
    image = encoded(pillow_format)
    assert decode_preview(plain_frame(pillow_format, image)) == Preview(content_type, image)


def test_a_preview_with_metadata_names_its_prompt_and_node() -> None:
    image = encoded("PNG")
    metadata = {
        "node_id": "12",
        "prompt_id": "0b7e7c5e-8c43-4c2a-9d4e-5b0f0a8f6c11",
        "display_node_id": "12",
        "parent_node_id": None,
        "real_node_id": "12",
        "image_type": "image/png",
    }
    preview = decode_preview(metadata_frame(metadata, image))
    assert preview == Preview(PNG, image, prompt_id="0b7e7c5e-8c43-4c2a-9d4e-5b0f0a8f6c11", node_id="12")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        struct.pack(">I", 1),
        plain_frame("JPEG", b""),
        struct.pack(">II", 1, 3) + b"image",  # an image type ComfyUI never sends
        struct.pack(">II", 3, 0) + b"text",  # TEXT: not a preview
        struct.pack(">II", 2, 0) + b"image",  # UNENCODED_PREVIEW_IMAGE never goes out as such
        struct.pack(">II", 4, 1000) + b"{}",  # metadata longer than the message
        struct.pack(">II", 4, 2) + b"{}",  # metadata and no image
        struct.pack(">II", 4, 5) + b"{oops" + b"image",
        struct.pack(">II", 4, 2) + b"\xff\xfe" + b"image",
        metadata_frame(["a", "list"], b"image"),
        metadata_frame({"prompt_id": "p"}, b"image"),  # no image type
        metadata_frame({"image_type": "image/webp"}, b"image"),
    ],
    ids=[
        "empty",
        "type-only",
        "no-image",
        "unknown-image-type",
        "text",
        "unencoded",
        "metadata-too-long",
        "metadata-only",
        "metadata-not-json",
        "metadata-not-utf8",
        "metadata-not-object",
        "metadata-without-type",
        "metadata-other-type",
    ],
)
def test_any_other_or_malformed_message_is_no_preview(message: bytes) -> None:
    assert decode_preview(message) is None


def test_a_jpeg_preview_is_sent_as_it_came() -> None:
    image = encoded("JPEG")
    assert as_jpeg(Preview(JPEG, image)) == image


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_png_preview_is_converted_to_jpeg(mode: str) -> None:
    converted = as_jpeg(Preview(PNG, encoded("PNG", mode)))
    with Image.open(io.BytesIO(converted)) as image:
        assert image.format == "JPEG"
        assert image.size == (16, 8)


def test_a_png_preview_that_does_not_decode_raises() -> None:
    with pytest.raises(OSError):
        as_jpeg(Preview(PNG, b"\x89PNG\r\n\x1a\nnot really"))
