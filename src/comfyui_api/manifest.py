"""The startup manifest (MANIFEST / MANIFEST_JSON): apt and pip packages, custom nodes and models.

Everything in `before_start` is installed before ComfyUI is launched, so ComfyUI sees the nodes and
packages when it loads; `after_start` models are fetched in the background once it is up. A bad manifest
stops startup with one message naming the variable and the field at fault (ConfigError); a failed install
stops it with one message naming the step (ManifestError).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .config import Settings
from .errors import ConfigError, DownloadError, ManifestError
from .storage.git import repo_dir_name
from .storage.manager import StorageManager
from .urls import redact_url

logger = logging.getLogger(__name__)

_URL_SCHEMES = ("http://", "https://", "s3://")
_FILE_SUFFIXES = {".yml": "yaml", ".yaml": "yaml", ".json": "json"}
# Output lines longer than this are cut in the log: a progress bar without newlines must not grow a line forever.
_MAX_LINE = 4000


# The format ---------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    # An unknown key is almost always a typo ("custom_node", "befor_start"): reject it instead of ignoring it.
    model_config = ConfigDict(extra="forbid")


def package_args(entry: str) -> list[str]:
    """The arguments one `apt`/`pip` entry stands for, split like a shell would (but never run by one).

    An entry may hold several words ("torch --index-url ..."), as the reference's shell command line allowed.
    """
    try:
        words = shlex.split(entry)
    except ValueError as exc:
        raise ValueError(f"cannot split {entry!r} into arguments: {exc}") from None
    if not words:
        raise ValueError("empty entry")
    return words


def custom_node_kind(entry: str) -> Literal["git", "registry"]:
    """A URL (anything with a scheme) is cloned with git; anything else is a comfy registry name."""
    return "git" if "://" in entry else "registry"


def _check_package(entry: str) -> str:
    # Split now, so that a bad quote stops startup at once instead of failing the install later.
    package_args(entry)
    return entry


def _check_custom_node(entry: str) -> str:
    # A registry name is one argument of `comfy node install`: no spaces, and never taken for an option.
    if custom_node_kind(entry) == "registry" and (not entry or entry.startswith("-") or len(entry.split()) != 1):
        raise ValueError(f"must be a git URL or a registry node name, got {entry!r}")
    return entry


def _check_url(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator or f"{scheme.lower()}://" not in _URL_SCHEMES or not rest.split("/", 1)[0]:
        raise ValueError(f"must be an http(s) or s3 URL, got {_safe(url)!r}")
    return url


def _check_local_path(local_path: str) -> str:
    if not local_path.strip() or local_path.endswith("/") or Path(local_path).name in ("", ".", ".."):
        raise ValueError(f"must be a file path (folder and file name), got {local_path!r}")
    return local_path


def _none_is_empty(value: Any) -> Any:
    # YAML reads `pip:` with nothing after it as null; that means "none", not an error.
    return [] if value is None else value


PackageEntry = Annotated[str, AfterValidator(_check_package)]
CustomNodeEntry = Annotated[str, AfterValidator(_check_custom_node)]


class ModelEntry(_Strict):
    url: Annotated[str, AfterValidator(_check_url)]
    local_path: Annotated[str, AfterValidator(_check_local_path)]


class Models(_Strict):
    before_start: Annotated[list[ModelEntry], BeforeValidator(_none_is_empty)] = Field(default_factory=list)
    after_start: Annotated[list[ModelEntry], BeforeValidator(_none_is_empty)] = Field(default_factory=list)


class Manifest(_Strict):
    apt: Annotated[list[PackageEntry], BeforeValidator(_none_is_empty)] = Field(default_factory=list)
    pip: Annotated[list[PackageEntry], BeforeValidator(_none_is_empty)] = Field(default_factory=list)
    custom_nodes: Annotated[list[CustomNodeEntry], BeforeValidator(_none_is_empty)] = Field(default_factory=list)
    # Optional, unlike the reference server, which crashed on a manifest without it (decisions §13).
    models: Models | None = None

    @property
    def before_start_models(self) -> list[ModelEntry]:
        return self.models.before_start if self.models else []

    @property
    def after_start_models(self) -> list[ModelEntry]:
        return self.models.after_start if self.models else []


# Loading ------------------------------------------------------------------------------------------------------


def load_manifest(settings: Settings) -> Manifest | None:
    """The manifest from MANIFEST_JSON (which wins) or the MANIFEST file, or None; raises ConfigError."""
    if settings.manifest_json is not None:
        return _parse(settings.manifest_json.get_secret_value(), "json", "MANIFEST_JSON")
    if settings.manifest is None:
        return None
    path = settings.manifest
    source = f"MANIFEST ({path})"
    kind = _FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{source}: must be a .yml, .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc}") from None
    return _parse(text, kind, source)


def _parse(text: str, kind: str, source: str) -> Manifest:
    try:
        data = yaml.safe_load(text) if kind == "yaml" else json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # YAML errors span lines; the log line must not
        raise ConfigError(f"{source}: invalid {kind.upper()}: {reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping (object) of apt, pip, custom_nodes, models")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as `field.path: reason; ...` on one line."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "manifest"
        # "Extra inputs are not permitted" hides what happened; say it plainly.
        unknown = error["type"] == "extra_forbidden"
        reason = "unknown key" if unknown else error["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {reason}")
    return "; ".join(problems)


# Commands -----------------------------------------------------------------------------------------------------


def apt_commands(packages: Sequence[str]) -> list[list[str]]:
    args = [word for entry in packages for word in package_args(entry)]
    return [["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *args]]


# The interpreter names CMD or a shebang may give: python, python3, python3.11.
_PYTHON_NAME = re.compile(r"python[0-9.]*")
# Where a ComfyUI folder keeps its own virtual environment (comfy-cli looks for the same two names).
_VENV_NAMES = (".venv", "venv")


@dataclasses.dataclass(frozen=True)
class ComfyPython:
    """The Python that will import ComfyUI, and how it was found (for the log and for errors)."""

    path: str
    found_by: str


def comfy_python(settings: Settings) -> ComfyPython:
    """The Python that runs ComfyUI, where manifest packages must go (never assumed to be this server's own: images
    give the server an environment of its own).

    COMFYUI_PYTHON when set; else CMD's program when it is a Python; else, for a Python script (comfy-cli's
    `comfy`, a console script, a launcher), the Python it runs ComfyUI with; else (a shell script such as
    init.sh) a virtual environment in COMFY_HOME, then `python3` or `python` on PATH. Raises ManifestError when
    none fits.
    """
    if settings.comfyui_python:
        return ComfyPython(_on_path(settings.comfyui_python), "COMFYUI_PYTHON")
    command = settings.comfy_command
    program = _on_path(command[0])
    if _PYTHON_NAME.fullmatch(Path(program).name):
        return ComfyPython(program, "CMD's program")
    interpreter = _script_python(program)
    if interpreter is not None and Path(program).name == "comfy":
        return _comfy_cli_python(command, settings.comfy_home, interpreter)
    if interpreter is not None:
        return ComfyPython(interpreter, f"the interpreter of CMD's program {program}")
    venv = _venv_python(settings.comfy_home)
    if venv is not None:
        return ComfyPython(venv, "the virtual environment in COMFY_HOME")
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found is not None:
            return ComfyPython(found, f"{name} on PATH, as CMD's program {program} names no Python")
    raise ManifestError(
        f"manifest: cannot tell which Python runs ComfyUI: CMD's program {program} names none, COMFY_HOME has no "
        "virtual environment and PATH has no python3; set COMFYUI_PYTHON"
    )


def _comfy_cli_python(command: Sequence[str], comfy_home: Path, own_python: str) -> ComfyPython:
    """The Python `comfy launch` starts ComfyUI with: the active virtual environment, the conda prefix, a venv in
    the workspace, else comfy-cli's own."""
    for variable in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = os.environ.get(variable)
        if prefix and _is_executable(python := Path(prefix, "bin", "python")):
            return ComfyPython(str(python), f"{variable}, which comfy-cli runs ComfyUI with")
    workspace = Path(_option_value(command, "--workspace") or comfy_home)
    venv = _venv_python(workspace)
    if venv is not None:
        return ComfyPython(venv, "the comfy workspace's virtual environment, which comfy-cli runs ComfyUI with")
    return ComfyPython(own_python, "comfy-cli's own Python, which comfy-cli runs ComfyUI with")


def _option_value(command: Sequence[str], option: str) -> str | None:
    for index, word in enumerate(command):
        if word == option and index + 1 < len(command):
            return command[index + 1]
        if word.startswith(f"{option}="):
            return word.partition("=")[2]
    return None


def _venv_python(folder: Path) -> str | None:
    for name in _VENV_NAMES:
        python = folder / name / "bin" / "python"
        if _is_executable(python):
            return str(python)
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _on_path(program: str) -> str:
    # A bare name is looked up now, so that logs and uv get the interpreter that will really run. Symlinks are kept:
    # a venv's python links to its base interpreter, and following the link would leave the venv.
    return program if os.sep in program else shutil.which(program) or program


def _script_python(program: str) -> str | None:
    """The Python a script's first line runs it with (`#!/venv/bin/python`, `#!/usr/bin/env python3`, or the
    `#!/bin/sh` + `'''exec' /long/path/python` form pip and uv write for long paths), or None for anything else."""
    try:
        with open(program, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    lines = head.decode(errors="replace").splitlines()
    words = lines[0][2:].split()
    if words and Path(words[0]).name == "env":
        # `env [-S] [NAME=value ...] python3 ...`: the first word that is neither an option nor an assignment.
        names = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
        words = [shutil.which(names[0]) or names[0]] if names else []
    elif words and Path(words[0]).name == "sh" and len(lines) > 1:
        with contextlib.suppress(ValueError):
            exec_line = shlex.split(lines[1])
            if exec_line[:1] == ["exec"]:
                words = exec_line[1:2]
    if words and _PYTHON_NAME.fullmatch(Path(words[0]).name):
        return words[0]
    return None


async def check_python(python: ComfyPython) -> None:
    """Ask the interpreter for its prefix, so that a wrong guess stops startup with its cause instead of a pip error,
    and log where packages go."""
    try:
        process = await asyncio.create_subprocess_exec(
            python.path,
            "-c",
            "import sys; print(sys.prefix)",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise _not_a_python(python, f"it cannot run: {exc.strerror or exc}") from None
    output, _ = await process.communicate()
    lines = output.decode(errors="replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        raise _not_a_python(python, f"it exited with code {process.returncode}" + (f": {lines[-1]}" if lines else ""))
    logger.info(
        "manifest: packages go into ComfyUI's Python",
        extra={"python": python.path, "prefix": lines[-1], "found_by": python.found_by},
    )


def _not_a_python(python: ComfyPython, failure: str) -> ManifestError:
    return ManifestError(
        f"manifest: {python.path} ({python.found_by}) is not a working Python, {failure}; set COMFYUI_PYTHON to the "
        "Python that runs ComfyUI"
    )


def pip_install_command(python: str, args: Sequence[str]) -> list[str]:
    """uv when it is on PATH (much faster), else pip; both into `python`, never `--system`."""
    uv = shutil.which("uv")
    if uv is not None:
        return [uv, "pip", "install", "--python", python, *args]
    return [python, "-m", "pip", "install", *args]


def comfy_node_command(name: str) -> list[str]:
    comfy = shutil.which("comfy")
    if comfy is None:
        raise ManifestError(
            f"manifest custom_nodes: {name!r} is a registry name, which needs the comfy CLI (comfy-cli) on PATH; "
            "install it or give a git URL"
        )
    return [comfy, "node", "install", name, "--fast-deps", "--exit-on-fail"]


def _safe(text: str) -> str:
    """A URL (or any argument) as fit for logs: no user-info, no query string (signed URLs carry keys there)."""
    return redact_url(text) if "://" in text else text


def _shown(command: Sequence[str]) -> str:
    return shlex.join(_safe(arg) for arg in command)


async def run_command(step: str, command: Sequence[str], *, cwd: Path | None = None) -> None:
    """Run `command` (no shell), log each output line, raise ManifestError naming `step` if it fails."""
    logger.info("manifest: running", extra={"step": step, "command": _shown(command)})
    environment = {
        **os.environ,
        "DEBIAN_FRONTEND": "noninteractive",  # apt must never wait for an answer nobody will give
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise ManifestError(f"manifest {step}: cannot run {command[0]}: {exc.strerror or exc}") from None
    assert process.stdout is not None
    try:
        last_line = await _log_output(step, process.stdout)
        code = await process.wait()
    except asyncio.CancelledError:
        # Startup was stopped (a signal before the port opened): the install must not outlive the server.
        process.kill()
        await process.wait()
        raise
    if code != 0:
        cause = f": {last_line}" if last_line else ""
        raise ManifestError(f"manifest {step} failed: `{_shown(command)}` exited with code {code}{cause}")


async def _log_output(step: str, stream: asyncio.StreamReader) -> str:
    """Log the output line by line (a carriage return ends a line too); return the last non-empty one."""
    last = ""
    pending = b""
    while chunk := await stream.read(65536):
        *lines, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            last = _log_line(step, raw) or last
        if len(pending) > _MAX_LINE:
            last = _log_line(step, pending) or last
            pending = b""
    return _log_line(step, pending) or last


def _log_line(step: str, raw: bytes) -> str:
    line = raw.decode(errors="replace").rstrip()[:_MAX_LINE]
    if line:
        logger.info(line, extra={"step": step})
    return line


# Installing ---------------------------------------------------------------------------------------------------


async def install_before_start(manifest: Manifest, settings: Settings, storage: StorageManager) -> None:
    """apt, pip, custom nodes, then the before_start models, in that order; raises ManifestError."""
    if manifest.apt:
        for command in apt_commands(manifest.apt):
            await run_command("apt", command)
    pip = _Pip(settings)
    if manifest.pip:
        await pip.install("pip", [word for entry in manifest.pip for word in package_args(entry)])
    for entry in manifest.custom_nodes:
        await _install_custom_node(entry, settings, storage, pip)
    for index, model in enumerate(manifest.before_start_models):
        try:
            await _download_model(model, storage)
        except Exception as exc:  # any cause: the message must reach the one critical log line
            raise ManifestError(
                f"manifest models.before_start.{index}: cannot download {_safe(model.url)} to {model.local_path}: "
                f"{_reason(exc)}"
            ) from None


async def install_after_start(manifest: Manifest, settings: Settings, storage: StorageManager) -> None:
    """The after_start models, one after another; a failure is logged and the rest still run."""
    for index, model in enumerate(manifest.after_start_models):
        try:
            await _download_model(model, storage)
        except Exception as exc:  # ComfyUI is already serving: never let a model take the server down
            logger.error(
                "manifest: an after_start model failed to download",
                extra={
                    "field": f"models.after_start.{index}",
                    "url": _safe(model.url),
                    "local_path": model.local_path,
                    "error": _reason(exc),
                },
            )


class _Pip:
    """pip installs into ComfyUI's Python, which is found and checked on first use (a manifest without packages
    needs none)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._python: str | None = None

    async def install(self, step: str, args: Sequence[str], *, cwd: Path | None = None) -> None:
        if self._python is None:
            python = comfy_python(self._settings)
            await check_python(python)
            self._python = python.path
        await run_command(step, pip_install_command(self._python, args), cwd=cwd)


async def _install_custom_node(entry: str, settings: Settings, storage: StorageManager, pip: _Pip) -> None:
    nodes_dir = settings.comfy_home / "custom_nodes"
    if custom_node_kind(entry) == "registry":
        cwd = settings.comfy_home if _is_dir(settings.comfy_home) else None
        await run_command("custom_nodes", comfy_node_command(entry), cwd=cwd)
        return
    try:
        folder = nodes_dir / repo_dir_name(entry)
        existed = _prepare_nodes_dir(nodes_dir, folder)
        if existed:
            logger.info("manifest: custom node folder exists; leaving it as is", extra={"path": str(folder)})
        else:
            logger.info("manifest: cloning a custom node", extra={"url": _safe(entry), "path": str(folder)})
            folder = await storage.clone_repo(entry, nodes_dir, trusted=True)
    except (DownloadError, OSError) as exc:
        raise ManifestError(f"manifest custom_nodes: cannot clone {_safe(entry)}: {_reason(exc)}") from None
    requirements = folder / "requirements.txt"
    if _is_file(requirements):
        await pip.install(f"custom_nodes ({folder.name} requirements)", ["-r", str(requirements)], cwd=folder)


async def _download_model(model: ModelEntry, storage: StorageManager) -> None:
    target = _model_target(model.local_path)
    download = await storage.download(model.url, target.parent, filename=target.name, trusted=True)
    storage.release(download)
    logger.info(
        "manifest: model ready",
        extra={
            "url": _safe(model.url),
            "local_path": str(download.link),
            "size": download.size,
            "downloaded": download.downloaded,
        },
    )


def _model_target(local_path: str) -> Path:
    """The link's path: relative paths resolve against the current directory, as the reference's did."""
    target = Path(local_path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


# The file-system checks below are instant; they are sync helpers so the async steps stay free of blocking calls.


def _prepare_nodes_dir(nodes_dir: Path, folder: Path) -> bool:
    """Create custom_nodes/ if needed; True when the node's folder is already there."""
    nodes_dir.mkdir(parents=True, exist_ok=True)
    return folder.exists()


def _is_dir(path: Path) -> bool:
    return path.is_dir()


def _is_file(path: Path) -> bool:
    return path.is_file()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
