"""Which Python the manifest's pip installs go into: the one that runs ComfyUI, whatever CMD looks like.

Every interpreter, venv and script here is a real file in a temporary folder; the end-to-end test installs a small
local wheel into a real virtual environment (no index is asked).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.config import Settings, load_settings
from comfyui_api.errors import ManifestError
from comfyui_api.manifest import ComfyPython, Manifest, check_python, comfy_python, install_before_start
from comfyui_api.storage.manager import StorageManager
from comfyui_api.storage.net import UrlGuard


@pytest.fixture(autouse=True)
def plain_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No interpreter leaks in from the test run's own environment: PATH is an empty folder unless a test adds one."""
    for name in ("VIRTUAL_ENV", "CONDA_PREFIX", "COMFYUI_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def settings(**values: Any) -> Settings:
    return Settings(**values)


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def fake_venv(folder: Path) -> Path:
    """A folder shaped like a virtual environment, for the choice alone (nothing runs it)."""
    return executable(folder / "bin" / "python")


def on_path(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def make_venv(folder: Path, *, with_pip: bool) -> Path:
    """A real virtual environment (pip comes from the standard library's bundled wheel: no index is asked)."""
    options = [] if with_pip else ["--without-pip"]
    subprocess.run([sys.executable, "-m", "venv", *options, str(folder)], check=True, capture_output=True)
    return folder / "bin" / "python"


def imports(python: Path | str, module: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(python), "-c", f"import {module}; print({module}.VALUE)"], capture_output=True)


# CMD is a Python ---------------------------------------------------------------------------------------------------


def test_a_python_in_cmd_is_the_one_even_beside_a_venv_in_comfy_home(tmp_path: Path) -> None:
    fake_venv(tmp_path / "home" / "venv")
    python = tmp_path / "env" / "bin" / "python3.11"

    chosen = comfy_python(settings(cmd=f"{python} main.py --listen", comfy_home=tmp_path / "home"))

    assert chosen == ComfyPython(str(python), "CMD's program")
    quoted = comfy_python(settings(cmd=f"'{tmp_path}/my env/bin/python' main.py"))
    assert quoted.path == f"{tmp_path}/my env/bin/python"


def test_a_bare_python_is_looked_up_on_path_and_its_link_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "venv" / "bin" / "python3"
    link.parent.mkdir(parents=True)
    link.symlink_to(sys.executable)  # a venv's python is a link; following it would leave the venv
    on_path(monkeypatch, link.parent)

    assert comfy_python(settings(cmd="python3 main.py")) == ComfyPython(str(link), "CMD's program")


# CMD is a Python script ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shebang",
    [
        "#!{python} -E\nimport comfyui_launcher\n",
        "#!/usr/bin/env python3\nimport comfyui_launcher\n",
        "#!/usr/bin/env -S PYTHONUNBUFFERED=1 python3 -u\nimport comfyui_launcher\n",
        # What pip and uv write when the interpreter's path is too long (or has a space) for a #! line.
        "#!/bin/sh\n'''exec' '{python}' \"$0\" \"$@\"\n' '''\nimport comfyui_launcher\n",
    ],
    ids=["absolute", "env", "env-S", "sh-exec"],
)
def test_a_script_runs_with_the_python_its_first_line_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shebang: str
) -> None:
    # A #! line cannot hold a space; pip's sh form is there for such paths.
    python = fake_venv(tmp_path / ("launcher env" if "exec" in shebang else "launcher-env"))
    bare = executable(tmp_path / "bin" / "python3")
    on_path(monkeypatch, bare.parent)
    expected = bare if "env " in shebang else python
    fake_venv(tmp_path / "home" / ".venv")  # the script's own line wins over a venv it may not use
    script = executable(tmp_path / "start-comfyui", shebang.format(python=python))

    chosen = comfy_python(settings(cmd=f"{script} --listen", comfy_home=tmp_path / "home"))

    assert chosen == ComfyPython(str(expected), f"the interpreter of CMD's program {script}")


def comfy_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """comfy-cli's entry point, installed on PATH with the Python of its own environment."""
    own = fake_venv(tmp_path / "cli-env")
    executable(tmp_path / "cli-env" / "bin" / "comfy", f"#!{own}\nfrom comfy_cli.__main__ import main\nmain()\n")
    on_path(monkeypatch, tmp_path / "cli-env" / "bin")
    return own


def test_comfy_cli_launch_uses_the_workspace_venv_as_comfy_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = comfy_cli(tmp_path, monkeypatch)
    workspace_python = fake_venv(tmp_path / "workspace" / ".venv")
    home_python = fake_venv(tmp_path / "home" / "venv")
    via = "which comfy-cli runs ComfyUI with"

    for cmd in (
        f"comfy --workspace {tmp_path / 'workspace'} launch -- --listen 127.0.0.1",
        f"comfy --workspace={tmp_path / 'workspace'} launch",
    ):
        chosen = comfy_python(settings(cmd=cmd, comfy_home=tmp_path / "home"))
        assert chosen == ComfyPython(str(workspace_python), f"the comfy workspace's virtual environment, {via}")

    # Without --workspace the workspace is COMFY_HOME; without a venv there, comfy-cli's own Python.
    assert comfy_python(settings(cmd="comfy launch", comfy_home=tmp_path / "home")).path == str(home_python)
    chosen = comfy_python(settings(cmd="comfy launch", comfy_home=tmp_path / "bare"))
    assert chosen == ComfyPython(str(own), f"comfy-cli's own Python, {via}")

    # An active virtual environment comes first, for comfy-cli as here.
    active = fake_venv(tmp_path / "active")
    monkeypatch.setenv("VIRTUAL_ENV", str(active.parent.parent))
    chosen = comfy_python(settings(cmd="comfy launch", comfy_home=tmp_path / "home"))
    assert chosen == ComfyPython(str(active), f"VIRTUAL_ENV, {via}")


# CMD is anything else (a shell script) -----------------------------------------------------------------------------


@pytest.mark.parametrize("venv", [".venv", "venv"])
def test_a_shell_script_cmd_uses_the_venv_in_comfy_home(tmp_path: Path, venv: str) -> None:
    python = fake_venv(tmp_path / "home" / venv)
    script = executable(tmp_path / "init.sh", "#!/bin/bash\nexec python main.py\n")

    chosen = comfy_python(settings(cmd=str(script), comfy_home=tmp_path / "home"))

    assert chosen == ComfyPython(str(python), "the virtual environment in COMFY_HOME")


def test_a_shell_script_cmd_without_a_venv_uses_python3_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python3 = executable(tmp_path / "bin" / "python3")
    executable(tmp_path / "bin" / "python")
    on_path(monkeypatch, python3.parent)

    # init.sh is not even on PATH here: the reference's default CMD, as an image without it would have it.
    chosen = comfy_python(settings(cmd="init.sh", comfy_home=tmp_path / "home"))

    assert chosen == ComfyPython(str(python3), "python3 on PATH, as CMD's program init.sh names no Python")


def test_no_python_anywhere_is_an_error_that_names_comfyui_python(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="set COMFYUI_PYTHON"):
        comfy_python(settings(cmd="init.sh", comfy_home=tmp_path / "home"))


def test_comfyui_python_wins_over_every_guess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_venv(tmp_path / "home" / "venv")
    chosen_one = executable(tmp_path / "bin" / "python3.12")
    on_path(monkeypatch, chosen_one.parent)
    monkeypatch.setenv("COMFYUI_PYTHON", "python3.12")
    monkeypatch.setenv("CMD", f"{sys.executable} main.py")
    monkeypatch.setenv("COMFY_HOME", str(tmp_path / "home"))

    assert comfy_python(load_settings()) == ComfyPython(str(chosen_one), "COMFYUI_PYTHON")


# The check before the first install --------------------------------------------------------------------------------


async def test_the_chosen_python_is_asked_for_its_prefix_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_api.manifest")
    venv_python = await asyncio.to_thread(make_venv, tmp_path / "venv", with_pip=False)
    python = ComfyPython(str(venv_python), "the virtual environment in COMFY_HOME")

    await check_python(python)

    [record] = [r for r in caplog.records if r.getMessage() == "manifest: packages go into ComfyUI's Python"]
    assert (record.python, record.prefix, record.found_by) == (  # type: ignore[attr-defined]
        python.path,
        str(tmp_path / "venv"),
        python.found_by,
    )


@pytest.mark.parametrize(
    ("script", "cause"),
    [
        ("#!/bin/sh\necho 'not a python: -c'\nexit 3\n", "it exited with code 3: not a python: -c"),
        (None, "it cannot run: No such file or directory"),
    ],
)
async def test_a_python_that_does_not_run_stops_the_install_with_its_cause(
    tmp_path: Path, script: str | None, cause: str
) -> None:
    path = tmp_path / "bin" / "python"
    if script is not None:
        executable(path, script)
    python = ComfyPython(str(path), "CMD's program")

    with pytest.raises(ManifestError) as caught:
        await check_python(python)

    assert str(caught.value) == (
        f"manifest: {path} (CMD's program) is not a working Python, {cause}; set COMFYUI_PYTHON to the Python that "
        "runs ComfyUI"
    )


# End to end --------------------------------------------------------------------------------------------------------


def make_wheel(folder: Path, name: str) -> Path:
    """A pure-Python wheel of one module, so that pip installs it without an index or a build."""
    info = f"{name}-0.1.dist-info"
    files = {
        f"{name}.py": b"VALUE = 'installed'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


async def test_an_init_sh_cmd_installs_into_comfyuis_venv_not_the_servers_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_api.manifest")
    home = tmp_path / "ComfyUI"
    venv_python = await asyncio.to_thread(make_venv, home / "venv", with_pip=True)
    name = "comfyui_api_python_probe"
    wheel = make_wheel(tmp_path, name)
    script = executable(tmp_path / "init.sh", f"#!/bin/bash\ncd {home} && exec venv/bin/python main.py\n")
    config = settings(cmd=str(script), comfy_home=home, cache_dir=tmp_path / "cache")
    storage = StorageManager(config, UrlGuard())

    try:
        await install_before_start(Manifest(pip=[f"--no-index {wheel}"]), config, storage)
    finally:
        await storage.aclose()

    imported = await asyncio.to_thread(imports, venv_python, name)
    assert imported.stdout == b"installed\n", imported.stderr
    assert (await asyncio.to_thread(imports, sys.executable, name)).returncode != 0
    chosen = [r for r in caplog.records if r.getMessage() == "manifest: packages go into ComfyUI's Python"]
    assert [(r.python, r.found_by) for r in chosen] == [  # type: ignore[attr-defined]
        (str(venv_python), "the virtual environment in COMFY_HOME")
    ]
