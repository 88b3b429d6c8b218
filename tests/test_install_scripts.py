"""scripts/install-comfyui.sh's torch source chain (local CPU wheel, PyTorch's CPU index, PyPI), by its selection alone:
`--print-torch-source` installs nothing, and the index is a loopback server here, never download.pytorch.org."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.server import closed_port

SCRIPT = REPO / "scripts" / "install-comfyui.sh"
WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def torch_source(wheel_dir: Path, index_url: str) -> str:
    env = {**os.environ, "TORCH_WHEEL_DIR": str(wheel_dir), "TORCH_CPU_INDEX_URL": index_url}
    done = subprocess.run(
        [str(SCRIPT), "--print-torch-source"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def index_url(tmp_path: Path) -> Iterator[str]:
    """A loopback stand-in for PyTorch's CPU index: it has a torch page."""
    root = tmp_path / "index"
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    (root / "whl" / "cpu" / "torch" / "index.html").write_text("<a>torch</a>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_cpu_wheel_comes_first(tmp_path: Path, index_url: str) -> None:
    (tmp_path / WHEEL).write_bytes(b"")
    assert torch_source(tmp_path, index_url) == f"local {tmp_path / WHEEL}"


def test_without_the_local_wheel_pytorchs_cpu_index_is_next(tmp_path: Path, index_url: str) -> None:
    assert torch_source(tmp_path / "missing", index_url) == f"index torch==2.13.0+cpu --index-url {index_url}"


def test_without_either_the_pypi_build_is_last(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    assert torch_source(tmp_path / "missing", unreachable) == "pypi torch==2.13.0"


def test_printing_the_source_installs_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYUI_INSTALL_DIR": str(tmp_path / "install")}
    subprocess.run([str(SCRIPT), "--print-torch-source"], env=env, capture_output=True, timeout=60, check=True)
    assert not (tmp_path / "install").exists()
