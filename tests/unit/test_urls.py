"""URL helpers: the one redaction policy, origins as the operator writes them, and safe leaf names."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from comfyui_api.logs import configure_logging
from comfyui_api.urls import (
    InvalidName,
    parse_origins,
    redact_url,
    redact_urls_in,
    safe_leaf_name,
    url_leaf_name,
    url_origin,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host.test:8443/a/b?sig=1#frag", "https://host.test:8443/a/b?<redacted>"),
        ("http://[::1]:9/x?y", "http://[::1]:9/x?<redacted>"),
        (
            "https://bucket.s3.amazonaws.com/k.png?X-Amz-Credential=AKIA&X-Amz-Signature=abc",
            "https://bucket.s3.amazonaws.com/k.png?<redacted>",
        ),
        (
            "https://acct.blob.core.windows.net/c/b.png?sv=2024&sig=abc",
            "https://acct.blob.core.windows.net/c/b.png?<redacted>",
        ),
        ("s3://bucket/key.png", "s3://bucket/key.png"),
        ("https://host.test/plain.png", "https://host.test/plain.png"),
        ("http://[::1/a.png?sig=secret", "<unparseable URL>"),
        ("not a url?token=secret", "not a url"),
    ],
)
def test_redact_url_drops_user_info_and_the_whole_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_origins_are_canonical() -> None:
    assert parse_origins(
        " HTTP://MinIO.Internal:9000 , https://files.test:443,https://files.test/, http://[::1]:80"
    ) == (
        "http://minio.internal:9000",
        "https://files.test",
        "http://[::1]",
    )
    assert url_origin("https://Files.Test.:8443/a?b") == "https://files.test:8443"


@pytest.mark.parametrize(
    "entry",
    [
        "minio:9000",
        "ftp://files.test",
        "http://files.test/path",
        "http://files.test?x=1",
        "http://user:pw@files.test",
        "http://*.files.test",
        "http://[::1/",
        "http://files.test:99999",
    ],
)
def test_malformed_origins_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_origins(entry)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("model.safetensors", "model.safetensors"),
        ("\uff4d\uff4f\uff44\uff45\uff4c.safetensors", "model.safetensors"),  # NFKC: fullwidth letters
        ("\ufb01le.png", "file.png"),  # NFKC: the "fi" ligature
        ("résumé.png", "résumé.png"),
    ],
)
def test_safe_leaf_names_are_normalised(name: str, safe: str) -> None:
    assert safe_leaf_name(name) == safe


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x.png",
        "a/b.png",
        "a\\b.png",
        "\uff0e\uff0e\uff0fx.png",  # fullwidth "../", which NFKC turns into the real thing
        "x\x00.png",
        "x\n.png",
        "x\u202e.png",  # a right-to-left override
        "a..b.png",
        "x" * 252 + ".png",  # 256 bytes
        "é" * 128 + ".png",  # 260 bytes in UTF-8
    ],
)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        safe_leaf_name(name)


def test_url_leaf_names() -> None:
    assert url_leaf_name("https://h.test/models/a%20b.safetensors?x=1") == "a b.safetensors"
    assert url_leaf_name("https://h.test/models/..%2F..%2Fetc%2Fpasswd") == "passwd"  # only the leaf survives
    assert url_leaf_name("https://h.test/") is None


def test_urls_inside_a_message_are_redacted() -> None:
    message = "GET https://acct.blob.core.windows.net/c/b.png?sv=1&sig=secret failed; retry http://u:p@h.test/x?t=1."
    assert redact_urls_in(message) == (
        "GET https://acct.blob.core.windows.net/c/b.png?<redacted> failed; retry http://h.test/x?<redacted>"
    )


SDK_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "azure", "httpx", "huggingface_hub")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the tests that follow."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {name: logging.getLogger(name).level for name in SDK_LOGGERS})
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("level", "sdk_level"),
    [("debug", logging.WARNING), ("info", logging.WARNING), ("trace", logging.DEBUG), ("error", logging.ERROR)],
)
def test_sdk_loggers_stay_at_warning_unless_trace(restored_logging: None, level: str, sdk_level: int) -> None:
    configure_logging(level)
    for name in SDK_LOGGERS:
        assert logging.getLogger(name).level == sdk_level, name
