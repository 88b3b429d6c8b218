"""An upload to a Hugging Face endpoint that cannot be reached is an upload error naming it (a 502), never an
unhandled exception from huggingface_hub's HTTP client (a bare 500)."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyui_api.errors import UploadError
from comfyui_api.storage.huggingface import HuggingFaceProvider
from tests.support.server import closed_port


async def test_an_upload_to_an_unreachable_hub_is_an_upload_error(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"  # nothing listens there
    provider = HuggingFaceProvider(endpoint, token="token", scratch_dir=tmp_path / "scratch")
    source = tmp_path / "image.png"
    source.write_bytes(b"image")
    with pytest.raises(UploadError, match=r"Hugging Face request failed .*ConnectError"):
        await provider.upload(source, f"{endpoint}/org/repo/resolve/main/image.png", "image/png")
