"""ComfyUI's binary websocket messages that carry preview images, and their conversion to JPEG.

A binary message is a 4-byte big-endian event type, then its payload (server.py `encode_bytes`). Two types carry
previews:
- 1, PREVIEW_IMAGE: a 4-byte big-endian image type (1 JPEG, 2 PNG), then the encoded image. It names neither the
  prompt nor the node: it belongs to the prompt ComfyUI runs now.
- 4, PREVIEW_IMAGE_WITH_METADATA (sent to clients that announce `supports_preview_metadata`): a 4-byte big-endian
  length, that many bytes of UTF-8 JSON metadata (`prompt_id`, `node_id`, `display_node_id`, `image_type` as a MIME
  type, …), then the encoded image.
Every other type is not a preview. A message that does not parse is dropped: custom nodes send binary messages of
their own, and a preview is never worth an error.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

from PIL import Image

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4

JPEG = "image/jpeg"
PNG = "image/png"
_IMAGE_TYPES = {1: JPEG, 2: PNG}
_HEADER = struct.Struct(">I")
# Quality of a PNG preview re-encoded for clients (ComfyUI encodes its own JPEG previews at 95): previews are
# small and short-lived, so size matters more than fidelity.
_JPEG_QUALITY = 85


@dataclass(frozen=True)
class Preview:
    content_type: str  # JPEG or PNG
    data: bytes
    # Both None for a type-1 message: whoever receives it knows which prompt runs now.
    prompt_id: str | None = None
    node_id: str | None = None


def decode_preview(message: bytes) -> Preview | None:
    """The preview a binary message carries; None for any other message, and for one that does not parse."""
    if len(message) < 2 * _HEADER.size:
        return None
    (event_type,) = _HEADER.unpack_from(message)
    if event_type == PREVIEW_IMAGE:
        return _plain(message)
    if event_type == PREVIEW_IMAGE_WITH_METADATA:
        return _with_metadata(message)
    return None


def _plain(message: bytes) -> Preview | None:
    (image_type,) = _HEADER.unpack_from(message, _HEADER.size)
    content_type = _IMAGE_TYPES.get(image_type)
    data = message[2 * _HEADER.size :]
    if content_type is None or not data:
        return None
    return Preview(content_type, data)


def _with_metadata(message: bytes) -> Preview | None:
    (length,) = _HEADER.unpack_from(message, _HEADER.size)
    start = 2 * _HEADER.size
    end = start + length
    if end >= len(message):
        return None
    try:
        metadata = json.loads(message[start:end])
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(metadata, dict) or metadata.get("image_type") not in (JPEG, PNG):
        return None
    return Preview(
        metadata["image_type"],
        message[end:],
        prompt_id=_text(metadata.get("prompt_id")),
        node_id=_text(metadata.get("node_id")),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def as_jpeg(preview: Preview) -> bytes:
    """The preview's image as JPEG: as received when it is one, else re-encoded. Blocking (Pillow): call it in a
    worker thread. Raises OSError (or ValueError) when the image does not decode."""
    if preview.content_type == JPEG:
        return preview.data
    with Image.open(io.BytesIO(preview.data)) as image:
        # JPEG has no alpha channel nor palette: previews are flattened to RGB.
        rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()
