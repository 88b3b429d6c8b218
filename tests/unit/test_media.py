"""Inline media: file type sniffing and strict base64 / data: URL decoding."""

from __future__ import annotations

import base64

import pytest

from comfyui_api.pipeline.media import (
    InvalidInlineData,
    decode_inline,
    is_data_url,
    looks_like_base64,
    sniff_extension,
)
from tests.unit.samples import IMAGE_FORMATS, image_bytes


def _ebml(doctype: bytes) -> bytes:
    """An EBML header (as Matroska and WebM files start) declaring `doctype`."""
    return b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84" + doctype + b"\x00" * 32


@pytest.mark.parametrize(("pillow_format", "extension"), IMAGE_FORMATS.items())
def test_sniff_extension_recognises_images_written_by_pillow(pillow_format: str, extension: str) -> None:
    assert sniff_extension(image_bytes(pillow_format)) == extension


@pytest.mark.parametrize(
    ("head", "extension"),
    [
        (b"RIFF\x24\x08\x00\x00WAVEfmt " + b"\x00" * 20, "wav"),
        (b"fLaC\x00\x00\x00\x22" + b"\x00" * 34, "flac"),
        (b"OggS\x00\x02" + b"\x00" * 40, "ogg"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 8, "mp3"),
        (b"\xff\xfb\x90\x00" * 8, "mp3"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", "mp4"),
        (b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom", "m4a"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "mov"),
        (_ebml(b"webm"), "webm"),
        (_ebml(b"matroska"), "mkv"),
        (b"%PDF-1.7\n" + b"\x00" * 20, "pdf"),
    ],
)
def test_sniff_extension_recognises_hand_made_headers(head: bytes, extension: str) -> None:
    assert sniff_extension(head) == extension


@pytest.mark.parametrize("data", [b"", b"hello, world", b"RIFF\x00\x00\x00\x00XXXX", b"\x00" * 64])
def test_sniff_extension_returns_none_for_unknown_data(data: bytes) -> None:
    assert sniff_extension(data) is None


def test_standard_base64_decodes_to_the_original_bytes(png_bytes: bytes) -> None:
    encoded = base64.b64encode(png_bytes).decode()

    assert looks_like_base64(encoded)
    assert decode_inline(encoded) == png_bytes


def test_url_safe_base64_decodes_to_the_original_bytes() -> None:
    data = bytes(range(256)) * 2  # every byte value, so the encoding holds '-' and '_'
    encoded = base64.urlsafe_b64encode(data).decode()
    assert "-" in encoded
    assert "_" in encoded

    assert looks_like_base64(encoded)
    assert decode_inline(encoded) == data


def test_base64_without_padding_decodes(png_bytes: bytes) -> None:
    encoded = base64.b64encode(png_bytes).decode()
    unpadded = encoded.rstrip("=")
    assert unpadded != encoded

    assert looks_like_base64(unpadded)
    assert decode_inline(unpadded) == png_bytes


def test_base64_with_whitespace_and_newlines_decodes(png_bytes: bytes) -> None:
    encoded = base64.encodebytes(png_bytes).decode()  # wrapped at 76 characters
    assert "\n" in encoded.strip()
    spaced = "  " + encoded.replace("\n", "\r\n ") + "\t"

    assert looks_like_base64(spaced)
    assert decode_inline(spaced) == png_bytes


def test_a_data_url_with_a_mime_type_decodes(png_bytes: bytes) -> None:
    url = "data:image/png;base64," + base64.b64encode(png_bytes).decode()

    assert is_data_url(url)
    assert decode_inline(url) == png_bytes


def test_a_data_url_without_a_mime_type_decodes(png_bytes: bytes) -> None:
    url = "data:;base64," + base64.b64encode(png_bytes).decode()

    assert is_data_url(url)
    assert decode_inline(url) == png_bytes


def test_a_data_url_with_parameters_decodes(png_bytes: bytes) -> None:
    url = "data:image/png;name=x.png;base64," + base64.b64encode(png_bytes).decode()

    assert is_data_url(url)
    assert decode_inline(url) == png_bytes


def test_a_data_url_is_not_plain_base64(png_bytes: bytes) -> None:
    assert not looks_like_base64("data:image/png;base64," + base64.b64encode(png_bytes).decode())


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        "abcd*efgh" * 5,
        "A" * 33,  # one character more than a multiple of four
        "data:image/png;base64,",
        "data:image/png;base64,%%%%",
        "",
    ],
)
def test_invalid_inline_data_raises(value: str) -> None:
    with pytest.raises(InvalidInlineData):
        decode_inline(value)


@pytest.mark.parametrize(
    "value",
    ["aGVsbG8=", "cat", "example.png", "ComfyUI_00001_.png", "sub/folder/image.png", "image.png [output]"],
)
def test_short_strings_and_file_names_are_not_base64(value: str) -> None:
    assert not looks_like_base64(value)


def test_a_plain_file_name_is_not_a_data_url() -> None:
    assert not is_data_url("data.png")
    assert not is_data_url("data:image/png,rawtext")
