"""Which folders GET /models lists: every folder ComfyUI lists, `configs` included as the reference does, but not
`custom_nodes` (the reference's answer leaves it out); and MODEL_DIR's folders ComfyUI does not know, from disk."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.workflows.catalog import Catalog


class Folders:
    """ComfyUI's GET /models and GET /models/{folder}, from a dict."""

    def __init__(self, folders: dict[str, list[str]]) -> None:
        self._folders = folders

    async def model_folders(self) -> list[str]:
        return list(self._folders)

    async def model_files(self, folder: str) -> list[str]:
        return self._folders[folder]


async def test_configs_is_listed_and_custom_nodes_is_not(tmp_path: Path) -> None:
    comfy = Folders(
        {
            "checkpoints": ["model.safetensors"],
            "configs": ["v1-inference.yaml"],
            "custom_nodes": ["some_node/__init__.py"],
        }
    )
    models = await Catalog().read_models(cast(ComfyClient, comfy), tmp_path / "models")
    assert models == {"checkpoints": ["model.safetensors"], "configs": ["v1-inference.yaml"]}


async def test_a_configs_folder_comfyui_does_not_list_is_read_from_disk(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    for folder in ("configs", "custom_nodes/node"):
        (model_dir / folder).mkdir(parents=True)
    (model_dir / "configs" / "anything.yaml").write_text("model: {}\n")
    (model_dir / "custom_nodes" / "node" / "__init__.py").write_text("")

    models = await Catalog().read_models(cast(ComfyClient, Folders({"checkpoints": []})), model_dir)
    assert models == {"checkpoints": [], "configs": ["anything.yaml"]}
