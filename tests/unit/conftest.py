"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.samples import image_bytes


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return image_bytes("PNG")
