"""The one place that reads the environment.

Names and defaults follow the reference server, so deployment manifests written for it keep working.
Everything else receives a `Settings` object, which tests build directly with keyword arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .urls import parse_origins, redact_url, url_origin

SYSTEM_EVENT_NAMES = (
    "status",
    "progress",
    "progress_state",
    "executing",
    "execution_start",
    "execution_cached",
    "executed",
    "execution_success",
    "execution_interrupted",
    "execution_error",
    "file_downloaded",
    "file_uploaded",
    "file_deleted",
)

SALAD_VARIABLES = (
    "SALAD_CONTAINER_GROUP_ID",
    "SALAD_MACHINE_ID",
    "SALAD_ORGANIZATION_NAME",
    "SALAD_ORGANIZATION_ID",
    "SALAD_PROJECT_NAME",
    "SALAD_PROJECT_ID",
    "SALAD_CONTAINER_GROUP_NAME",
    "SALAD_INSTANCE_ID",
)

# What a key may hold: RFC 6750's b64token, the syntax of the credentials in `Authorization: Bearer <key>`, so every
# configured key can be sent (`openssl rand -hex 32` and Python's `secrets.token_urlsafe()` both fit).
_API_KEY = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

# all: the public API and a worker with its own ComfyUI; worker: a worker without the public API; api: the public API
# without a ComfyUI (it queues jobs for the workers).
FLEET_ROLES = ("all", "worker", "api")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _default_cache_dir() -> Path:
    return Path(os.environ.get("HOME", "~")).expanduser() / ".cache" / "comfyui-api"


def _default_state_dir() -> Path:
    # XDG's place for state that should survive a restart but is not worth backing up (unlike the cache, which may
    # be deleted at any time).
    return Path(os.environ.get("HOME", "~")).expanduser() / ".local" / "state" / "comfyui-api"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    # ComfyUI process and location
    cmd: str = "init.sh"
    comfy_home: Path = Path("/opt/ComfyUI")
    # The Python that runs ComfyUI (manifest pip installs); unset = found from CMD and COMFY_HOME (manifest.py).
    comfyui_python: str | None = None
    direct_address: str = "127.0.0.1"
    comfyui_port_host: int = Field(8188, gt=0, lt=65536)
    always_restart_comfyui: bool = False
    # Attach mode: ComfyUI runs elsewhere (a sidecar container, another process) at DIRECT_ADDRESS:COMFYUI_PORT_HOST;
    # this server connects to it, waits for it whenever it is gone, and never launches, restarts or signals it.
    comfyui_attach: bool = False
    startup_check_interval_s: float = Field(1.0, gt=0)
    startup_check_max_tries: int = Field(20, gt=0)
    model_dir: Path | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None
    # The reference sources ai-dock's environment scripts with BASE=ai-dock before probing samplers; samplers come
    # from ComfyUI's /object_info here, so BASE is read only to say at startup that it has no effect.
    base: str = ""

    # This server
    host: str = "::"
    port: int = Field(3000, ge=0, lt=65536)
    log_level: str = "info"
    max_body_size_mb: int = Field(100, gt=0)
    body_read_timeout_s: float = Field(30.0, gt=0)
    max_queue_depth: int = Field(0, ge=0)
    prepend_filenames: bool = True
    prompt_timeout_s: float | None = Field(None, gt=0)
    cancel_on_disconnect: bool = True
    # Attempts a job gets when ComfyUI exits or is restarted under it (the first included).
    job_max_attempts: int = Field(2, ge=1)
    comfy_stall_timeout_s: float = Field(60.0, gt=0)
    interrupt_grace_s: float = Field(30.0, gt=0)
    shutdown_grace_period_s: float = Field(300.0, ge=0)
    workflow_dir: Path = Path("/workflows")
    markdown_schema_descriptions: bool = True
    # Static bearer auth (api/auth.py): keys given inline, comma-separated, or in a file, one per line. After
    # validation `api_keys` holds the keys from either; empty = auth off.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    api_keys_file: Path | None = None
    # GET /metrics (metrics.py): Prometheus metrics, open without a key unless METRICS_REQUIRE_AUTH.
    metrics_enabled: bool = True
    metrics_require_auth: bool = False

    # Warmup and startup installs
    warmup_prompt_file: Path | None = None
    warmup_prompt_url: str | None = None
    manifest: Path | None = None
    manifest_json: SecretStr | None = None

    # Job records (jobstore/): the SQLite file's folder, and how long a finished job's record is kept.
    state_dir: Path = Field(default_factory=_default_state_dir)
    job_retention_s: float = Field(86400.0, gt=0)

    # Fleet mode (fleet/): job records in a shared PostgreSQL (JOB_STORE_URL; alone, it replaces the SQLite file),
    # jobs dispatched through RabbitMQ (BROKER_URL, which turns fleet mode on and needs the other two).
    job_store_url: SecretStr | None = None
    broker_url: SecretStr | None = None
    fleet_secret_key: SecretStr | None = None
    fleet_role: str = "all"
    fleet_sync_local: bool = False
    fleet_queue_prefix: str = Field("comfyui-api", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    fleet_priority_levels: int = Field(3, ge=1, le=10)
    fleet_lookahead: int = Field(1, ge=0, le=16)
    # Model-aware routing (fleet/routing.py): how long a job waits for a worker warm for its models (0: no routing),
    # and how many model sets a worker counts as warm.
    fleet_model_wait_s: float = Field(10.0, ge=0, le=3600)
    fleet_warm_models: int = Field(2, ge=1, le=16)

    # Comfy API v2 (v2/): uploaded assets and job outputs (default folder: STATE_DIR/assets), and event streams.
    assets_dir: Path | None = None
    asset_retention_s: float = Field(86400.0, gt=0)
    asset_max_upload_mb: int = Field(1024, gt=0)
    asset_disk_limit_gb: float = Field(0.0, ge=0)
    max_event_streams: int = Field(100, gt=0)

    # Downloads, cache and storage providers
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    lru_cache_size_gb: float = Field(0.0, ge=0)
    http_auth_header_name: str | None = None
    http_auth_header_value: SecretStr | None = None
    aws_region: str | None = None
    aws_default_region: str | None = None
    azure_storage_connection_string: SecretStr | None = None
    azure_storage_account: str | None = None
    azure_storage_key: SecretStr | None = None
    azure_storage_sas_token: SecretStr | None = None
    hf_endpoint: str = "https://huggingface.co"
    hf_token: SecretStr | None = None

    # Safe outgoing HTTP for request-supplied URLs
    http_block_private_addresses: bool = True
    http_trusted_origins: Annotated[tuple[str, ...], NoDecode] = ()
    http_auth_allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    input_allowed_dirs: Annotated[tuple[Path, ...], NoDecode] = ()

    # Webhooks
    webhook_secret: SecretStr | None = None
    prompt_webhook_retries: int = Field(3, ge=0)
    webhook_retry_window_s: float = Field(600.0, ge=0)
    webhook_retry_base_s: float = Field(0.5, gt=0)
    webhook_retry_max_delay_s: float = Field(30.0, gt=0)
    system_webhook_url: str | None = None
    system_webhook_events: Annotated[tuple[str, ...], NoDecode] = ()

    # SaladCloud: the node's metadata service, where the deletion cost goes (when a SALAD_* variable is set).
    salad_metadata_url: str = "http://169.254.169.254"

    @field_validator(
        "comfyui_python",
        "model_dir",
        "input_dir",
        "output_dir",
        "prompt_timeout_s",
        "warmup_prompt_file",
        "warmup_prompt_url",
        "manifest",
        "manifest_json",
        "http_auth_header_name",
        "http_auth_header_value",
        "aws_region",
        "aws_default_region",
        "azure_storage_connection_string",
        "azure_storage_account",
        "azure_storage_key",
        "azure_storage_sas_token",
        "hf_token",
        "webhook_secret",
        "system_webhook_url",
        "api_keys_file",
        "assets_dir",
        "job_store_url",
        "broker_url",
        "fleet_secret_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # Manifests often write `NAME: ""` for "not set"; the reference server reads it that way too.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("http_trusted_origins", "http_auth_allowed_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        return parse_origins(value) if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():  # `API_KEYS: ""` is "not set", as for every other variable
            return ()
        keys = [key.strip() for key in value.split(",") if key.strip()]
        if not keys:
            raise ValueError("holds no key: give one or more keys separated by commas")
        return _checked_keys(keys, "a key")

    @field_validator("input_allowed_dirs", mode="before")
    @classmethod
    def _parse_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(item.strip()) for item in value.split(",") if item.strip())
        return value

    @field_validator(
        "always_restart_comfyui",
        "comfyui_attach",
        "prepend_filenames",
        "cancel_on_disconnect",
        "markdown_schema_descriptions",
        "http_block_private_addresses",
        "fleet_sync_local",
        mode="before",
    )
    @classmethod
    def _parse_bool(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in {"trace", "debug", "info", "warn", "warning", "error", "fatal", "critical"}:
            raise ValueError(f"unknown log level {value!r}")
        return lowered

    @field_validator("cmd")
    @classmethod
    def _check_cmd(cls, value: str) -> str:
        try:
            if not shlex.split(value):
                raise ValueError("CMD is empty")
        except ValueError as exc:
            raise ValueError(f"cannot parse CMD: {exc}") from exc
        return value

    @field_validator("system_webhook_events", mode="before")
    @classmethod
    def _parse_events(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",")]
            if any(not name for name in names):
                raise ValueError("empty event name")
            if names == ["all"]:
                return SYSTEM_EVENT_NAMES
            unknown = sorted(set(names) - set(SYSTEM_EVENT_NAMES))
            if unknown:
                raise ValueError(
                    f"unknown event(s) {', '.join(unknown)}; allowed: all, {', '.join(SYSTEM_EVENT_NAMES)}"
                )
            return tuple(dict.fromkeys(names))
        return value

    @field_validator("system_webhook_url", "warmup_prompt_url", "salad_metadata_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    @field_validator("warmup_prompt_file")
    @classmethod
    def _check_warmup_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _read_api_keys_file(self) -> Settings:
        # A model validator, so that the keys read land in `api_keys`; its messages name the variable themselves.
        path = self.api_keys_file
        if path is None:
            return self
        if self.api_keys:
            raise ValueError("API_KEYS and API_KEYS_FILE are both set: set one of them")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"API_KEYS_FILE: cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"API_KEYS_FILE: {path} is not UTF-8 text") from None
        keys = [line.strip() for line in text.splitlines()]
        keys = [key for key in keys if key and not key.startswith("#")]
        if not keys:
            raise ValueError(f"API_KEYS_FILE: {path} holds no key: write one key per line")
        self.api_keys = tuple(SecretStr(key) for key in _checked_keys(keys, f"API_KEYS_FILE: line of {path}"))
        return self

    @field_validator("fleet_role")
    @classmethod
    def _check_role(cls, value: str) -> str:
        if value.lower() not in FLEET_ROLES:
            raise ValueError(f"must be one of {', '.join(FLEET_ROLES)}")
        return value.lower()

    @model_validator(mode="after")
    def _check_fleet(self) -> Settings:
        if self.broker_url is None:
            if self.fleet_role != "all":
                raise ValueError(f"FLEET_ROLE={self.fleet_role} needs fleet mode: set BROKER_URL and JOB_STORE_URL")
            return self
        if self.job_store_url is None:
            raise ValueError("BROKER_URL (fleet mode) needs JOB_STORE_URL: the replicas share one job store")
        if self.fleet_secret_key is None:
            raise ValueError("BROKER_URL (fleet mode) needs FLEET_SECRET_KEY: job messages carry sealed credentials")
        if self.fleet_sync_local and self.fleet_role == "api":
            raise ValueError("FLEET_SYNC_LOCAL=true needs a ComfyUI to run on: not with FLEET_ROLE=api")
        return self

    @property
    def fleet(self) -> bool:
        return self.broker_url is not None

    @property
    def runs_comfy(self) -> bool:
        """Whether this server uses a ComfyUI: all but an API-only fleet replica."""
        return self.fleet_role != "api"

    @property
    def launches_comfy(self) -> bool:
        """Whether this server launches ComfyUI as its child: it uses one and does not attach to one."""
        return self.runs_comfy and not self.comfyui_attach

    @model_validator(mode="after")
    def _derive_dirs(self) -> Settings:
        self.model_dir = self.model_dir or self.comfy_home / "models"
        self.input_dir = self.input_dir or self.comfy_home / "input"
        self.output_dir = self.output_dir or self.comfy_home / "output"
        return self

    # Resolved views, so callers never handle the optional forms above.
    @property
    def models_path(self) -> Path:
        assert self.model_dir is not None
        return self.model_dir

    @property
    def inputs_path(self) -> Path:
        assert self.input_dir is not None
        return self.input_dir

    @property
    def outputs_path(self) -> Path:
        assert self.output_dir is not None
        return self.output_dir

    @property
    def assets_path(self) -> Path:
        return self.assets_dir or self.state_dir / "assets"

    @property
    def comfy_command(self) -> list[str]:
        return shlex.split(self.cmd)

    @property
    def comfy_url(self) -> str:
        host = self.direct_address
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.comfyui_port_host}"

    @property
    def comfy_ws_url(self) -> str:
        return "ws" + self.comfy_url.removeprefix("http") + "/ws"

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_size_mb * 1024 * 1024

    @property
    def aws_region_name(self) -> str | None:
        return self.aws_region or self.aws_default_region

    @property
    def http_auth_header(self) -> tuple[str, str] | None:
        if self.http_auth_header_name and self.http_auth_header_value:
            return self.http_auth_header_name, self.http_auth_header_value.get_secret_value()
        return None

    @property
    def operator_origins(self) -> tuple[str, ...]:
        """Origins of the URLs the operator configured (trusted like HTTP_TRUSTED_ORIGINS): the warmup prompt,
        the system webhook, the Hugging Face endpoint and an S3-compatible endpoint."""
        urls = (
            self.warmup_prompt_url,
            self.system_webhook_url,
            self.hf_endpoint,
            os.environ.get("AWS_ENDPOINT_URL_S3"),
            os.environ.get("AWS_ENDPOINT_URL"),
        )
        origins = []
        for url in urls:
            if url and url.startswith(("http://", "https://")):
                with contextlib.suppress(ValueError):
                    origins.append(url_origin(url))
        return tuple(dict.fromkeys(origins))


def _checked_keys(keys: list[str], what: str) -> list[str]:
    """`keys`, or a ValueError if one cannot be sent in a bearer header. The message says which by position only,
    never by value: it is logged."""
    for number, key in enumerate(keys, start=1):
        if not _API_KEY.fullmatch(key):
            raise ValueError(
                f"{what} (number {number}) has characters a bearer token cannot carry: "
                "use letters, digits and - . _ ~ + / (and = at the end)"
            )
    return keys


def on_saladcloud(environ: dict[str, str]) -> bool:
    """Whether this runs on SaladCloud: any Salad variable set (and not empty), as the reference decides."""
    return any(environ.get(name) for name in SALAD_VARIABLES)


def system_metadata(environ: dict[str, str]) -> dict[str, str]:
    """`SYSTEM_META_<key>` pairs plus `salad_<name>` for each Salad variable that is set."""
    meta = {k.removeprefix("SYSTEM_META_"): v for k, v in environ.items() if k.startswith("SYSTEM_META_")}
    for name in SALAD_VARIABLES:
        if environ.get(name):
            meta[name.lower()] = environ[name]
    return meta


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise ConfigError naming the variable at fault."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper()
            if name:
                problems.append(f"{name}: {error['msg']}")
            else:  # a model validator's error, whose message names its variable
                problems.append(str(error["msg"]).removeprefix("Value error, "))
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def dump_for_log(settings: Settings) -> dict[str, Any]:
    """The settings as loggable JSON, with every secret redacted."""
    data = json.loads(settings.model_dump_json())  # SecretStr fields dump as "**********"
    for name in ("warmup_prompt_url", "system_webhook_url", "hf_endpoint"):
        if data.get(name):
            data[name] = redact_url(data[name])
    return data
