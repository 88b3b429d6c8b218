"""Settings: reference defaults, environment parsing and the errors that name the variable at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyui_api.config import (
    SALAD_VARIABLES,
    SYSTEM_EVENT_NAMES,
    ConfigError,
    Settings,
    dump_for_log,
    load_settings,
    system_metadata,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests happen to run in."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_reference_server() -> None:
    settings = load_settings()

    assert settings.cmd == "init.sh"
    assert settings.comfy_home == Path("/opt/ComfyUI")
    assert settings.port == 3000
    assert settings.host == "::"
    assert settings.comfyui_port_host == 8188
    assert settings.direct_address == "127.0.0.1"
    assert settings.max_body_size_mb == 100
    assert settings.startup_check_interval_s == 1
    assert settings.startup_check_max_tries == 20
    assert settings.prepend_filenames is True
    assert settings.prompt_webhook_retries == 3
    assert settings.markdown_schema_descriptions is True
    assert settings.lru_cache_size_gb == 0
    assert settings.max_queue_depth == 0
    assert settings.workflow_dir == Path("/workflows")
    assert settings.log_level == "info"
    assert settings.always_restart_comfyui is False
    assert settings.system_webhook_events == ()


def test_default_folders_are_derived_from_comfy_home() -> None:
    settings = load_settings()

    assert settings.inputs_path == Path("/opt/ComfyUI/input")
    assert settings.outputs_path == Path("/opt/ComfyUI/output")
    assert settings.models_path == Path("/opt/ComfyUI/models")


def test_folders_follow_a_comfy_home_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_HOME", "/srv/comfy")

    settings = load_settings()

    assert settings.inputs_path == Path("/srv/comfy/input")
    assert settings.outputs_path == Path("/srv/comfy/output")
    assert settings.models_path == Path("/srv/comfy/models")


def test_explicit_folders_override_the_derived_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_HOME", "/srv/comfy")
    monkeypatch.setenv("INPUT_DIR", "/data/in")
    monkeypatch.setenv("OUTPUT_DIR", "/data/out")
    monkeypatch.setenv("MODEL_DIR", "/data/models")

    settings = load_settings()

    assert settings.inputs_path == Path("/data/in")
    assert settings.outputs_path == Path("/data/out")
    assert settings.models_path == Path("/data/models")


def test_numbers_and_strings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("COMFYUI_PORT_HOST", "8189")
    monkeypatch.setenv("MAX_BODY_SIZE_MB", "7")
    monkeypatch.setenv("STARTUP_CHECK_INTERVAL_S", "0.5")
    monkeypatch.setenv("STARTUP_CHECK_MAX_TRIES", "3")
    monkeypatch.setenv("MAX_QUEUE_DEPTH", "4")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")

    settings = load_settings()

    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.comfyui_port_host == 8189
    assert settings.max_body_size_mb == 7
    assert settings.max_body_bytes == 7 * 1024 * 1024
    assert settings.startup_check_interval_s == 0.5
    assert settings.startup_check_max_tries == 3
    assert settings.max_queue_depth == 4
    assert settings.log_level == "debug"


@pytest.mark.parametrize(("raw", "expected"), [("TRUE", True), ("true", True), ("1", True), ("false", False)])
def test_booleans_are_read_case_insensitively(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("PREPEND_FILENAMES", raw)
    monkeypatch.setenv("ALWAYS_RESTART_COMFYUI", raw)

    settings = load_settings()

    assert settings.prepend_filenames is expected
    assert settings.always_restart_comfyui is expected


def test_a_garbage_boolean_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREPEND_FILENAMES", "garbage")

    with pytest.raises(ConfigError, match="PREPEND_FILENAMES"):
        load_settings()


def test_a_non_numeric_port_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "eighty")

    with pytest.raises(ConfigError, match="PORT"):
        load_settings()


def test_system_webhook_events_are_trimmed_and_deduplicated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEM_WEBHOOK_EVENTS", " status , executed,status ")

    assert load_settings().system_webhook_events == ("status", "executed")


def test_all_system_webhook_events_expands_to_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEM_WEBHOOK_EVENTS", "all")

    assert load_settings().system_webhook_events == SYSTEM_EVENT_NAMES


@pytest.mark.parametrize("raw", ["status,bogus", "status,,executed", "all,status"])
def test_invalid_system_webhook_events_name_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("SYSTEM_WEBHOOK_EVENTS", raw)

    with pytest.raises(ConfigError, match="SYSTEM_WEBHOOK_EVENTS"):
        load_settings()


def test_an_unknown_event_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEM_WEBHOOK_EVENTS", "status,bogus")

    with pytest.raises(ConfigError, match="bogus"):
        load_settings()


def test_cmd_is_split_like_a_shell_with_quotes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMD", "python main.py --listen '::' --extra \"a b\" plain")

    assert load_settings().comfy_command == ["python", "main.py", "--listen", "::", "--extra", "a b", "plain"]


@pytest.mark.parametrize("raw", ["python 'unbalanced", "   "])
def test_an_unparsable_or_empty_cmd_is_a_config_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CMD", raw)

    with pytest.raises(ConfigError, match="CMD"):
        load_settings()


def test_comfy_urls_use_the_direct_address_and_port() -> None:
    settings = load_settings(direct_address="10.0.0.2", comfyui_port_host=8190)

    assert settings.comfy_url == "http://10.0.0.2:8190"
    assert settings.comfy_ws_url == "ws://10.0.0.2:8190/ws"


def test_an_ipv6_direct_address_gets_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIRECT_ADDRESS", "::1")

    settings = load_settings()

    assert settings.comfy_url == "http://[::1]:8188"
    assert settings.comfy_ws_url == "ws://[::1]:8188/ws"


def test_an_already_bracketed_ipv6_address_is_not_bracketed_twice() -> None:
    assert load_settings(direct_address="[::1]").comfy_url == "http://[::1]:8188"


def test_a_missing_warmup_prompt_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WARMUP_PROMPT_FILE", str(tmp_path / "missing.json"))

    with pytest.raises(ConfigError, match="WARMUP_PROMPT_FILE"):
        load_settings()


def test_an_existing_warmup_prompt_file_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    warmup = tmp_path / "warmup.json"
    warmup.write_text("{}")
    monkeypatch.setenv("WARMUP_PROMPT_FILE", str(warmup))

    assert load_settings().warmup_prompt_file == warmup


@pytest.mark.parametrize("name", ["SYSTEM_WEBHOOK_URL", "WARMUP_PROMPT_URL", "WARMUP_PROMPT_FILE"])
def test_an_empty_optional_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "")

    assert getattr(load_settings(), name.lower()) is None


def test_a_non_http_system_webhook_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEM_WEBHOOK_URL", "ftp://example.com/hook")

    with pytest.raises(ConfigError, match="SYSTEM_WEBHOOK_URL"):
        load_settings()


def test_an_unknown_log_level_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "chatty")

    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        load_settings()


def test_the_http_auth_header_needs_both_name_and_value() -> None:
    assert load_settings(http_auth_header_name="X-Key").http_auth_header is None
    assert load_settings(http_auth_header_name="X-Key", http_auth_header_value="v").http_auth_header == ("X-Key", "v")


def test_aws_region_falls_back_to_the_default_region() -> None:
    assert load_settings(aws_default_region="eu-west-1").aws_region_name == "eu-west-1"
    assert load_settings(aws_region="us-east-2", aws_default_region="eu-west-1").aws_region_name == "us-east-2"


def test_system_metadata_collects_system_meta_and_salad_variables() -> None:
    environ = {
        "SYSTEM_META_team": "vision",
        "SYSTEM_META_REGION": "eu",
        "SALAD_MACHINE_ID": "m-1",
        "SALAD_PROJECT_NAME": "",
        "UNRELATED": "x",
    }

    assert system_metadata(environ) == {"team": "vision", "REGION": "eu", "salad_machine_id": "m-1"}


def test_system_metadata_knows_every_salad_variable() -> None:
    environ = {name: f"value-{index}" for index, name in enumerate(SALAD_VARIABLES)}

    assert system_metadata(environ) == {name.lower(): value for name, value in environ.items()}


def test_dump_for_log_redacts_every_secret() -> None:
    secrets = {
        "http_auth_header_value": "hdr-secret",
        "azure_storage_connection_string": "conn-secret",
        "azure_storage_key": "key-secret",
        "azure_storage_sas_token": "sas-secret",
        "webhook_secret": "hook-secret",
        "manifest_json": '{"token": "manifest-secret"}',
        "job_store_url": "postgresql://jobs:db-secret@db/jobs",
        "broker_url": "amqp://jobs:broker-secret@mq/fleet",
        "fleet_secret_key": "fleet-secret",
    }
    settings = load_settings(http_auth_header_name="X-Key", **secrets)

    dumped = dump_for_log(settings)

    for name in secrets:
        assert dumped[name] == "**********"
    assert "secret" not in repr(dumped).replace("webhook_secret", "").replace("fleet_secret_key", "")
    assert dumped["http_auth_header_name"] == "X-Key"
    assert dumped["port"] == 3000


def test_dump_for_log_leaves_unset_secrets_empty() -> None:
    dumped = dump_for_log(load_settings())

    assert dumped["webhook_secret"] is None
    assert dumped["http_auth_header_value"] is None


def test_fleet_mode_needs_a_shared_store_and_a_key() -> None:
    with pytest.raises(ConfigError, match=r"BROKER_URL .* needs JOB_STORE_URL"):
        load_settings(broker_url="amqp://mq/")
    with pytest.raises(ConfigError, match="needs FLEET_SECRET_KEY"):
        load_settings(broker_url="amqp://mq/", job_store_url="postgresql://db/jobs")
    with pytest.raises(ConfigError, match="FLEET_ROLE=worker needs fleet mode"):
        load_settings(fleet_role="worker")
    with pytest.raises(ConfigError, match=r"FLEET_ROLE: .*must be one of all, worker"):
        load_settings(fleet_role="everything")
    fleet = load_settings(
        broker_url="amqp://mq/", job_store_url="postgresql://db/jobs", fleet_secret_key="k", fleet_role="WORKER"
    )
    assert fleet.fleet and fleet.fleet_role == "worker" and fleet.runs_comfy and not load_settings().fleet
    fleet_env = {"broker_url": "amqp://mq/", "job_store_url": "postgresql://db/jobs", "fleet_secret_key": "k"}
    assert not load_settings(**fleet_env, fleet_role="api").runs_comfy
    with pytest.raises(ConfigError, match="FLEET_SYNC_LOCAL=true needs a ComfyUI"):
        load_settings(**fleet_env, fleet_role="api", fleet_sync_local="true")


def test_comfyui_attach_turns_the_launch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().launches_comfy
    monkeypatch.setenv("COMFYUI_ATTACH", "true")
    settings = load_settings()
    assert settings.comfyui_attach and settings.runs_comfy and not settings.launches_comfy
    monkeypatch.setenv("COMFYUI_ATTACH", "sometimes")
    with pytest.raises(ConfigError, match="COMFYUI_ATTACH: Value error, expected true or false"):
        load_settings()
