"""The startup manifest without ComfyUI: format and errors, entry classification, and the commands it runs."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.config import Settings
from comfyui_api.errors import ConfigError, DownloadError
from comfyui_api.manifest import (
    Manifest,
    ManifestError,
    apt_commands,
    comfy_node_command,
    custom_node_kind,
    install_after_start,
    install_before_start,
    load_manifest,
    pip_install_command,
    run_command,
)
from comfyui_api.storage.git import repo_dir_name
from comfyui_api.storage.manager import Download, StorageManager
from comfyui_api.storage.net import UrlGuard

FULL_YAML = """\
apt: [libgl1, "ffmpeg"]
pip:
  - numpy<3
  - torch --index-url https://download.pytorch.org/whl/cpu
custom_nodes:
  - comfyui-impact-pack
  - https://github.com/user/repo@v1.2
models:
  before_start:
    - url: https://example.com/a.safetensors
      local_path: /opt/ComfyUI/models/checkpoints/a.safetensors
  after_start:
    - url: s3://bucket/b.safetensors
      local_path: models/loras/b.safetensors
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests happen to run in."""
    for name in ("MANIFEST", "MANIFEST_JSON", "CMD", "COMFY_HOME"):
        monkeypatch.delenv(name, raising=False)


def settings(**values: Any) -> Settings:
    return Settings(**values)


def from_json(data: Any) -> Manifest | None:
    return load_manifest(settings(manifest_json=json.dumps(data)))


def config_error(**values: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_manifest(settings(**values))
    message = str(caught.value)
    assert "\n" not in message  # it becomes the one critical log line
    return message


def executable(folder: Path, name: str, script: str = "#!/bin/sh\nexit 0\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# Loading ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yml", ".yaml", ".YML"])
def test_a_yaml_file_is_read(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"manifest{suffix}"
    path.write_text(FULL_YAML)

    manifest = load_manifest(settings(manifest=path))

    assert manifest is not None
    assert manifest.apt == ["libgl1", "ffmpeg"]
    assert manifest.pip == ["numpy<3", "torch --index-url https://download.pytorch.org/whl/cpu"]
    assert manifest.custom_nodes == ["comfyui-impact-pack", "https://github.com/user/repo@v1.2"]
    assert [m.url for m in manifest.before_start_models] == ["https://example.com/a.safetensors"]
    assert [m.local_path for m in manifest.after_start_models] == ["models/loras/b.safetensors"]


def test_a_json_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"pip": ["requests"], "models": {"before_start": []}}))

    manifest = load_manifest(settings(manifest=path))

    assert manifest is not None and manifest.pip == ["requests"] and manifest.before_start_models == []


def test_manifest_json_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text("pip: [from-file]\n")

    manifest = load_manifest(settings(manifest=path, manifest_json='{"pip": ["from-json"]}'))
    assert manifest is not None and manifest.pip == ["from-json"]

    # The file is not even read when MANIFEST_JSON is set: a broken one does not matter.
    manifest = load_manifest(settings(manifest=tmp_path / "missing.txt", manifest_json="{}"))
    assert manifest == Manifest()


def test_no_manifest_is_none() -> None:
    assert load_manifest(settings()) is None
    assert load_manifest(settings(manifest="", manifest_json="  ")) is None


def test_a_manifest_without_models_is_valid() -> None:
    manifest = from_json({"pip": ["x"]})

    assert manifest is not None and manifest.models is None
    assert manifest.before_start_models == [] and manifest.after_start_models == []


def test_empty_yaml_lists_mean_none(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("apt:\npip:\ncustom_nodes:\nmodels:\n  before_start:\n  after_start:\n")

    manifest = load_manifest(settings(manifest=path))

    assert manifest is not None and manifest.apt == manifest.pip == manifest.custom_nodes == []
    assert manifest.before_start_models == manifest.after_start_models == []


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"custom_node": []}, "custom_node", "unknown key"),
        ({"models": {"befor_start": []}}, "models.befor_start", "unknown key"),
        ({"models": {"after_start": [{"url": "https://x/a", "local_path": "a", "sha": 1}]}}, "after_start.0.sha", ""),
        ({"models": {"before_start": [{"url": "ftp://x/a", "local_path": "a"}]}}, "before_start.0.url", "s3 URL"),
        ({"models": {"before_start": [{"url": "https:///a", "local_path": "a"}]}}, "before_start.0.url", "s3 URL"),
        ({"models": {"before_start": [{"url": "/tmp/a", "local_path": "a"}]}}, "before_start.0.url", "s3 URL"),
        ({"models": {"before_start": [{"url": "https://x/a"}]}}, "before_start.0.local_path", "required"),
        ({"models": {"before_start": [{"url": "https://x/a", "local_path": "dir/"}]}}, "0.local_path", "file path"),
        ({"models": {"before_start": {"url": "https://x/a"}}}, "models.before_start", "list"),
        ({"pip": "numpy"}, "pip", "list"),
        ({"pip": ["ok", 'bad "quote']}, "pip.1", "cannot split"),
        ({"apt": [""]}, "apt.0", "empty entry"),
        ({"custom_nodes": ["-rf"]}, "custom_nodes.0", "registry node name"),
        ({"custom_nodes": ["two words"]}, "custom_nodes.0", "registry node name"),
    ],
)
def test_an_invalid_manifest_names_the_variable_and_the_field(data: Any, field: str, reason: str) -> None:
    message = config_error(manifest_json=json.dumps(data))

    assert message.startswith("MANIFEST_JSON: ")
    assert field in message and reason in message


def test_a_bad_url_with_credentials_does_not_show_them() -> None:
    data = {"models": {"before_start": [{"url": "ftp://user:secret@host/a?sig=key", "local_path": "a"}]}}

    message = config_error(manifest_json=json.dumps(data))

    assert "secret" not in message and "key" not in message


def test_a_file_error_names_the_variable_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text("models:\n  before_start:\n    - url: nope\n      local_path: a\n")

    message = config_error(manifest=path)

    assert message.startswith(f"MANIFEST ({path}): models.before_start.0.url: ")


def test_a_file_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.txt"
    path.write_text("{}")

    assert config_error(manifest=path) == f"MANIFEST ({path}): must be a .yml, .yaml or .json file"


@pytest.mark.parametrize("kind", ["missing", "folder", "binary"])
def test_an_unreadable_file_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "manifest.yml"
    if kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")

    message = config_error(manifest=path)

    assert message.startswith(f"MANIFEST ({path}): cannot read the file: ")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"manifest_json": "{not json"}, "MANIFEST_JSON: invalid JSON: "),
        ({"manifest_json": "[]"}, "MANIFEST_JSON: must be a mapping"),
        ({"manifest_json": '"pip"'}, "MANIFEST_JSON: must be a mapping"),
    ],
)
def test_invalid_json_is_a_config_error(values: dict[str, str], expected: str) -> None:
    assert config_error(**values).startswith(expected)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("manifest.json", "{'pip': []}", "invalid JSON: "),
        ("manifest.yml", "pip: [a\nmodels: {", "invalid YAML: "),
        ("manifest.yml", "", "must be a mapping"),
        ("manifest.yaml", "- a\n- b\n", "must be a mapping"),
    ],
)
def test_an_invalid_file_is_a_config_error(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    assert config_error(manifest=path).startswith(f"MANIFEST ({path}): {expected}")


# Classification and commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "https://github.com/ltdrdata/ComfyUI-Impact-Pack",
        "https://github.com/user/repo@v1.0",
        "https://github.com/user/repo/tree/dev",
        "https://gitlab.com/group/repo/-/tree/main",
        "http://git.local/repo.git",
        "file:///srv/git/node.git",
        "ssh://git@host/repo.git",
    ],
)
def test_urls_are_git_repositories(entry: str) -> None:
    assert custom_node_kind(entry) == "git"
    assert from_json({"custom_nodes": [entry]}) is not None


@pytest.mark.parametrize("entry", ["comfyui-impact-pack", "ComfyUI-KJNodes@1.0.5", "was-node-suite-comfyui"])
def test_other_entries_are_registry_names(entry: str) -> None:
    assert custom_node_kind(entry) == "registry"
    assert from_json({"custom_nodes": [entry]}) is not None


def test_pip_uses_uv_when_it_is_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uv = executable(tmp_path / "bin", "uv")
    monkeypatch.setenv("PATH", str(uv.parent))

    command = pip_install_command("/venv/bin/python", ["numpy<3", "-r", "req.txt"])

    assert command == [str(uv), "pip", "install", "--python", "/venv/bin/python", "numpy<3", "-r", "req.txt"]


def test_pip_uses_python_m_pip_without_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    command = pip_install_command("/venv/bin/python", ["numpy"])

    assert command == ["/venv/bin/python", "-m", "pip", "install", "numpy"]
    assert "--system" not in command


def test_registry_names_need_the_comfy_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ManifestError, match="comfy CLI"):
        comfy_node_command("comfyui-impact-pack")

    comfy = executable(tmp_path, "comfy")
    assert comfy_node_command("comfyui-impact-pack") == [
        str(comfy),
        "node",
        "install",
        "comfyui-impact-pack",
        "--fast-deps",
        "--exit-on-fail",
    ]


def test_apt_updates_then_installs_every_package() -> None:
    assert apt_commands(["libgl1", "ffmpeg libsm6"]) == [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "libgl1", "ffmpeg", "libsm6"],
    ]


# Running ------------------------------------------------------------------------------------------------------


def python_step(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_command_output_is_logged_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_api.manifest")

    await run_command("pip", python_step("import sys; print('one'); print('two', file=sys.stderr); print('3\\r4')"))

    lines = [r.getMessage() for r in caplog.records if getattr(r, "step", None) == "pip"]
    assert lines[-4:] == ["one", "two", "3", "4"]
    assert all(r.name == "comfyui_api.manifest" for r in caplog.records)


async def test_a_failed_command_names_the_step_the_code_and_the_last_line() -> None:
    with pytest.raises(ManifestError) as caught:
        await run_command("pip", python_step("print('working'); print('ERROR: no such package'); exit(3)"))

    message = str(caught.value)
    assert message.startswith("manifest pip failed: ")
    assert "exited with code 3: ERROR: no such package" in message


async def test_a_missing_program_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest apt: cannot run /nonexistent/apt-get"):
        await run_command("apt", ["/nonexistent/apt-get", "update"])


class FakeStorage:
    """Records clones and downloads; URLs containing "fail" fail. The manifest's URLs are the operator's: it must
    pass `trusted=True` (no address check, file:// clones allowed), which the recorded calls show."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, ...]] = []
        self.released: list[Path] = []

    async def clone_repo(self, url: str, target_dir: Path, *, trusted: bool = False) -> Path:
        self.calls.append(("clone", url, str(target_dir), f"trusted={trusted}"))
        if "fail" in url:
            raise DownloadError("git clone failed: repository not found")
        folder = target_dir / repo_dir_name(url)
        folder.mkdir(parents=True)
        (folder / "requirements.txt").write_text("tqdm\n")
        return folder

    async def download(
        self,
        url: str,
        target_dir: Path,
        *,
        filename: str | None = None,
        auth: Any = None,
        stage: bool = False,
        trusted: bool = False,
    ) -> Download:
        self.calls.append(("download", url, str(target_dir), filename or "", f"stage={stage}", f"trusted={trusted}"))
        if "fail" in url:
            raise DownloadError("Error downloading file: 404 Not Found")
        link = target_dir / (filename or "x")
        return Download(link, self.root / "cache" / "file", 1, 0.0, True)

    def release(self, download: Download) -> None:
        self.released.append(download.link)


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], Path | None]]:
    """The commands install_before_start would run, recorded instead of run."""
    ran: list[tuple[str, list[str], Path | None]] = []

    async def record(step: str, command: list[str], *, cwd: Path | None = None) -> None:
        ran.append((step, list(command), cwd))

    monkeypatch.setattr("comfyui_api.manifest.run_command", record)
    return ran


async def test_before_start_runs_every_step_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commands: list[tuple[str, list[str], Path | None]]
) -> None:
    comfy = executable(tmp_path / "bin", "comfy")
    monkeypatch.setenv("PATH", str(comfy.parent))
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    python = sys.executable  # a real Python: it is asked for its prefix before the first install
    manifest = Manifest.model_validate(
        {
            "apt": ["libgl1"],
            "pip": ["numpy<3"],
            "custom_nodes": ["impact-pack", "https://github.com/user/node-a@v1"],
            "models": {"before_start": [{"url": "https://h/m.bin", "local_path": "rel/dir/m.bin"}]},
        }
    )
    storage = FakeStorage(tmp_path)

    await install_before_start(manifest, settings(cmd=f"{python} main.py", comfy_home=home), storage)  # type: ignore[arg-type]

    assert [(step, command) for step, command, _ in commands] == [
        ("apt", ["apt-get", "update"]),
        ("apt", ["apt-get", "install", "-y", "--no-install-recommends", "libgl1"]),
        ("pip", [python, "-m", "pip", "install", "numpy<3"]),
        ("custom_nodes", [str(comfy), "node", "install", "impact-pack", "--fast-deps", "--exit-on-fail"]),
        (
            "custom_nodes (node-a requirements)",
            [python, "-m", "pip", "install", "-r", str(home / "custom_nodes" / "node-a" / "requirements.txt")],
        ),
    ]
    assert commands[-1][2] == home / "custom_nodes" / "node-a"
    # Relative local paths resolve against the current folder, whose missing parents are created.
    assert storage.calls == [
        ("clone", "https://github.com/user/node-a@v1", str(home / "custom_nodes"), "trusted=True"),
        ("download", "https://h/m.bin", str(tmp_path / "rel" / "dir"), "m.bin", "stage=False", "trusted=True"),
    ]
    assert (tmp_path / "rel" / "dir").is_dir()
    assert storage.released == [tmp_path / "rel" / "dir" / "m.bin"]


async def test_nothing_runs_for_an_empty_manifest(
    tmp_path: Path, commands: list[tuple[str, list[str], Path | None]]
) -> None:
    storage = FakeStorage(tmp_path)

    await install_before_start(Manifest(), settings(comfy_home=tmp_path), storage)  # type: ignore[arg-type]

    assert commands == [] and storage.calls == []


async def test_an_existing_node_folder_is_left_as_is(
    tmp_path: Path, commands: list[tuple[str, list[str], Path | None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_api.manifest")
    (tmp_path / "custom_nodes" / "node-b").mkdir(parents=True)
    storage = FakeStorage(tmp_path)
    manifest = Manifest(custom_nodes=["https://github.com/user/node-b.git"])

    await install_before_start(manifest, settings(comfy_home=tmp_path), storage)  # type: ignore[arg-type]

    assert storage.calls == [] and commands == []  # no clone, and no requirements.txt to install
    assert any("leaving it as is" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"custom_nodes": ["some-node"]}, "comfy CLI"),
        ({"custom_nodes": ["https://github.com/user/fail"]}, "manifest custom_nodes: cannot clone"),
        (
            {"models": {"before_start": [{"url": "https://u:pw@h/fail.bin", "local_path": "m/f.bin"}]}},
            "manifest models.before_start.0: cannot download https://h/fail.bin to m/f.bin: Error downloading file",
        ),
    ],
)
async def test_a_before_start_failure_is_a_manifest_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    commands: list[tuple[str, list[str], Path | None]],
    data: dict[str, Any],
    expected: str,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ManifestError) as caught:
        await install_before_start(Manifest.model_validate(data), settings(comfy_home=tmp_path), FakeStorage(tmp_path))  # type: ignore[arg-type]

    assert expected in str(caught.value)
    assert "pw" not in str(caught.value)


async def test_after_start_failures_are_logged_and_never_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_api.manifest")
    monkeypatch.chdir(tmp_path)
    storage = FakeStorage(tmp_path)
    manifest = Manifest.model_validate(
        {
            "models": {
                "after_start": [
                    {"url": "https://user:secret@h/fail.bin?token=abc", "local_path": "m/a.bin"},
                    {"url": "https://h/ok.bin", "local_path": str(tmp_path / "m" / "b.bin")},
                ]
            }
        }
    )

    await install_after_start(manifest, settings(comfy_home=tmp_path), storage)  # type: ignore[arg-type]

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].url == "https://h/fail.bin?<redacted>"  # type: ignore[attr-defined]
    assert "404" in errors[0].error  # type: ignore[attr-defined]
    assert "secret" not in str(errors[0].__dict__) and "abc" not in str(errors[0].__dict__)
    assert storage.released == [tmp_path / "m" / "b.bin"]
    assert {call[-1] for call in storage.calls} == {"trusted=True"}


@pytest.fixture
def node_repository(tmp_path: Path) -> Path:
    """A bare git repository of a custom node with a requirements.txt."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "requirements.txt").write_text("tqdm\n")
    for args in (
        ["init", "--quiet"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=work, check=True, capture_output=True)
    bare = tmp_path / "node-c.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(work), str(bare)], check=True, capture_output=True)
    return bare


async def test_a_file_url_custom_node_is_cloned_as_the_operators(
    tmp_path: Path, commands: list[tuple[str, list[str], Path | None]], node_repository: Path
) -> None:
    """A request may not clone file:// URLs; the manifest, which the operator wrote, may (with the default guard)."""
    bare = node_repository
    home = tmp_path / "home"
    storage = StorageManager(Settings(cache_dir=tmp_path / "cache", comfy_home=home), UrlGuard())

    await install_before_start(Manifest(custom_nodes=[f"file://{bare}"]), settings(comfy_home=home), storage)
    await storage.aclose()

    node_dir = home / "custom_nodes" / "node-c"
    assert (node_dir / "requirements.txt").read_text() == "tqdm\n"
    assert [(step, cwd) for step, _, cwd in commands] == [("custom_nodes (node-c requirements)", node_dir)]
