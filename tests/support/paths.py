"""Where the project's own ComfyUI install and test data live (ignored folders of the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFY_INSTALL = Path(os.environ.get("COMFYUI_INSTALL_DIR", REPO / ".comfyui"))
COMFY_PYTHON = COMFY_INSTALL / "venv" / "bin" / "python"
COMFY_TREE = COMFY_INSTALL / "ComfyUI"
TEST_CACHE = REPO / ".cache" / "tests"
CHECKPOINT_NAME = "sd15-random.safetensors"
