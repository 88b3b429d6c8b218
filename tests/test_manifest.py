"""The startup manifest end to end: a real server installs a pip package, a custom node and models into a
real ComfyUI, which then loads and runs the node; a bad manifest stops startup with one clear line.

Nothing here touches the network: the pip package is built from a local folder by an in-tree build backend
(no build requirements to fetch), the custom node is a local bare git repository, the models come from a
FileServer on loopback. The package goes into ComfyUI's venv, which other tests share: it has a unique name
and is uninstalled at the end.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.files import FileServer
from tests.support.paths import COMFY_PYTHON
from tests.support.server import ApiServer, wait_until

ServerFactory = Callable[..., ApiServer]

# A PEP 517 backend of its own, so that pip needs nothing from an index to build the package.
BACKEND = """
import base64, hashlib, zipfile

NAME = {name!r}
VERSION = "0.1.0"
SOURCE = "VALUE = 0.5\\n"


def _record(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{{path}},sha256={{digest}},{{len(data)}}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{
        f"{{NAME}}.py": SOURCE.encode(),
        f"{{info}}/METADATA": f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n".encode(),
        f"{{info}}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = [_record(path, data) for path, data in files.items()] + [f"{{info}}/RECORD,,"]
    files[f"{{info}}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(f"{{wheel_directory}}/{{wheel}}", "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel
"""

PYPROJECT = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""

# The custom node: a solid grey image whose value comes from the pip-installed package.
NODE = """
import torch

import {package}


class ManifestSolid:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"size": ("INT", {{"default": 8, "min": 1, "max": 64}})}}}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, size):
        return (torch.full((1, size, size, 3), float({package}.VALUE)),)


NODE_CLASS_MAPPINGS = {{"{node}": ManifestSolid}}
"""


def make_package(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "backend.py").write_text(BACKEND.format(name=name))
    return folder


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def make_node_repo(root: Path, name: str, package: str, node: str) -> Path:
    """A bare repository (served by file:// URL) whose main branch holds a custom node."""
    work = root / f"{name}-work"
    work.mkdir()
    (work / "__init__.py").write_text(textwrap.dedent(NODE.format(package=package, node=node)))
    (work / "requirements.txt").write_text("# nothing beyond what the manifest's pip installs\n")
    git("init", "--quiet", "--initial-branch", "main", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "node", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "--quiet", "--bare", str(work), str(bare))
    return bare


def uninstall(package: str) -> None:
    subprocess.run([str(COMFY_PYTHON), "-m", "pip", "uninstall", "-y", package], capture_output=True, check=False)


def critical_lines(server: ApiServer) -> list[str]:
    return [entry.get("msg", "") for entry in server.log_entries() if entry.get("level") == "critical"]


@pytest.fixture
def package_name() -> Iterator[str]:
    """A unique package name, uninstalled from ComfyUI's (shared) venv whatever happens."""
    name = f"comfyui_api_manifest_probe_{uuid.uuid4().hex[:10]}"
    yield name
    uninstall(name)


def test_the_manifest_installs_before_comfyui_starts_and_fetches_late_models_after(
    make_server: ServerFactory, tmp_path: Path, package_name: str
) -> None:
    node = f"ManifestSolid_{package_name[-10:]}"
    package = make_package(tmp_path, package_name)
    repo = make_node_repo(tmp_path, "manifest_node", package_name, node)
    models = tmp_path / "served"
    models.mkdir()
    (models / "before.safetensors").write_bytes(b"before-start model")
    (models / "after.safetensors").write_bytes(b"after-start model")

    with FileServer(models) as files:
        server = make_server("manifest")
        manifest = {
            "pip": [str(package)],
            "custom_nodes": [f"file://{repo}@main"],
            "models": {
                # Relative: resolved against the server's working folder, which is COMFY_HOME here.
                "before_start": [
                    {"url": f"{files.url}/before.safetensors", "local_path": "models/loras/early/before.safetensors"}
                ],
                "after_start": [
                    {
                        "url": f"{files.url}/after.safetensors",
                        "local_path": str(server.base / "models" / "loras" / "late.safetensors"),
                    }
                ],
            },
        }
        server.env["MANIFEST_JSON"] = json.dumps(manifest)
        server.start()

        # Everything before_start is in place once the server is healthy.
        early = server.base / "models" / "loras" / "early" / "before.safetensors"
        assert early.read_bytes() == b"before-start model"
        clone = server.base / "custom_nodes" / "manifest_node"
        assert (clone / "__init__.py").is_file()
        late = server.base / "models" / "loras" / "late.safetensors"
        wait_until(late.exists, 60, "the after_start model")
        assert late.read_bytes() == b"after-start model"

    # The package went into ComfyUI's Python, and ComfyUI loaded the node that imports it.
    check = subprocess.run([str(COMFY_PYTHON), "-c", f"import {package_name}"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    info = server.http.get(f"{server.comfy_url}/object_info/{node}").json()
    assert node in info

    graph = {
        "1": {"class_type": node, "inputs": {"size": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "manifest"}},
    }
    response = server.http.post("/prompt", json={"prompt": graph})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (8, 8)
    assert image.convert("RGB").getpixel((0, 0)) == (127, 127, 127)

    # Install output went to our JSON log, line by line, under the manifest logger.
    manifest_lines = [e for e in server.log_entries() if e.get("logger") == "comfyui_api.manifest"]
    assert any(e.get("step") == "pip" and package_name in e.get("msg", "") for e in manifest_lines)
    assert any(e.get("msg") == "manifest: model ready" and e.get("local_path") == str(late) for e in manifest_lines)
    assert critical_lines(server) == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-model", ["models.before_start.0", "/missing.safetensors", "404"]),
        ("unknown-key", ["MANIFEST_JSON", "models.befor_start", "unknown key"]),
        ("bad-url", ["MANIFEST_JSON", "models.before_start.0.url", "http(s) or s3 URL"]),
        ("failing-pip", ["manifest pip failed", "exited with code"]),
    ],
)
def test_a_bad_manifest_stops_startup_with_one_clear_line(
    make_server: ServerFactory, tmp_path: Path, case: str, expected: list[str]
) -> None:
    with FileServer(tmp_path) as files:
        manifest = {
            "missing-model": {
                "models": {"before_start": [{"url": f"{files.url}/missing.safetensors", "local_path": "m/x.bin"}]}
            },
            "unknown-key": {"models": {"befor_start": []}},
            "bad-url": {"models": {"before_start": [{"url": "ftp://host/x.bin", "local_path": "m/x.bin"}]}},
            # A folder that is not a package: pip fails at once, without looking at any index.
            "failing-pip": {"pip": [str(tmp_path)]},
        }[case]
        server = make_server(f"manifest-{case}", MANIFEST_JSON=json.dumps(manifest)).start(wait="none")
        assert server.wait_exit(120) == 1

    lines = critical_lines(server)
    assert len(lines) == 1, lines
    assert all(part in lines[0] for part in expected), lines[0]
    # It never got as far as launching ComfyUI.
    assert not any(entry.get("msg") == "ComfyUI is up" for entry in server.log_entries())
