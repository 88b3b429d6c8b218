"""Recognise inline media: strict base64 and data: URLs, and the file type of decoded bytes."""

from __future__ import annotations

import base64
import binascii
import re

from ..errors import InvalidInlineData

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/\-_]+={0,2}$")

# Shorter strings are more likely names than inline files; the smallest real image is far longer.
_MIN_BASE64_LENGTH = 32


def is_data_url(value: str) -> bool:
    return _DATA_URL.match(value) is not None


def looks_like_base64(value: str) -> bool:
    """True when the value is made only of base64 characters (so meant as inline data)."""
    compact = "".join(value.split())
    return len(compact) >= _MIN_BASE64_LENGTH and _BASE64_CHARS.match(compact) is not None


def decode_inline(value: str) -> bytes:
    """Decode a data: URL or a (standard or URL-safe) base64 string, strictly."""
    match = _DATA_URL.match(value)
    payload = value[match.end() :] if match else value
    compact = "".join(payload.split())
    if not compact or _BASE64_CHARS.match(compact) is None:
        raise InvalidInlineData("the value is not valid base64")
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInlineData(f"the value is not valid base64: {exc}") from exc


# ISO media brands (the 4 bytes after "ftyp") by prefix; any other brand is a plain MP4.
_FTYP_BRANDS = (
    (b"M4A", "m4a"),
    (b"M4V", "m4v"),
    (b"3gp", "3gp"),
    (b"qt", "mov"),
    (b"avi", "avif"),
    (b"hei", "heic"),
    (b"mif1", "heic"),
)


def _ftyp_extension(head: bytes) -> str | None:
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    return next((extension for prefix, extension in _FTYP_BRANDS if brand.startswith(prefix)), "mp4")


def sniff_extension(data: bytes) -> str | None:
    """The file extension for the first bytes of a file, or None when the type is unknown."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"RIFF"):
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(head[8:12])
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ico"
    ftyp = _ftyp_extension(head)
    if ftyp:
        return ftyp
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in data[:4096] else "mkv"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "wmv"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    return None
