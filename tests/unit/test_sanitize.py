"""Server paths and tracebacks never reach a client."""

from __future__ import annotations

import pytest

from comfyui_api.comfy.sanitize import scrub, scrub_paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/opt/ComfyUI/models/checkpoints/model.safetensors", "model.safetensors"),
        ("cannot open /srv/data/x.png: no such file", "cannot open x.png: no such file"),
        ('File "/opt/ComfyUI/execution.py", line 12', 'File "execution.py", line 12'),
        ("'/tmp/a/b.txt' and '/tmp/c/d.txt'", "'b.txt' and 'd.txt'"),
        ("at /opt/app/main.py:42", "at main.py:42"),
    ],
)
def test_scrub_paths_keeps_only_the_last_component(text: str, expected: str) -> None:
    assert scrub_paths(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "see https://example.com/a/b/c.png for details",
        "relative models/checkpoints/x.safetensors stays",
        "a single /tmp component stays",
        "no paths here",
        "",
    ],
)
def test_scrub_paths_leaves_urls_relative_paths_and_plain_text_alone(text: str) -> None:
    assert scrub_paths(text) == text


def test_scrub_drops_tracebacks_and_scrubs_nested_strings() -> None:
    payload = {
        "error": {"message": "bad file /opt/ComfyUI/input/x.png", "traceback": ["/opt/ComfyUI/a.py"]},
        "node_errors": {
            "3": {"errors": [{"details": "/opt/ComfyUI/models/y.ckpt not found", "extra_info": {"traceback": "t"}}]}
        },
        "traceback": "top level",
        "count": 3,
        "ok": None,
    }

    assert scrub(payload) == {
        "error": {"message": "bad file x.png"},
        "node_errors": {"3": {"errors": [{"details": "y.ckpt not found", "extra_info": {}}]}},
        "count": 3,
        "ok": None,
    }


def test_scrub_returns_a_copy() -> None:
    payload = {"items": ["/a/b/c.png"], "traceback": "t"}

    scrub(payload)

    assert payload == {"items": ["/a/b/c.png"], "traceback": "t"}


@pytest.mark.parametrize("value", [1, 2.5, True, None])
def test_scrub_leaves_non_string_scalars_alone(value: object) -> None:
    assert scrub(value) == value
