"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyui_api.pipeline.inputs import MediaInputs
from tests.unit.samples import image_bytes


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return image_bytes("PNG")


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    return folder


@pytest.fixture
def media(input_dir: Path, output_dir: Path) -> MediaInputs:
    return MediaInputs(input_dir, output_dir)
