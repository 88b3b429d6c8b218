"""Job messages and their sealed secrets: a message read back is the one written, its credentials in clear only
once opened with the fleet's key; the body never shows them; another key, an altered token, a rotated key list and
a message of another version behave as fleet/sealing.py and fleet/messages.py say."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from comfyui_api.errors import BrokerError, ConfigError, SealError
from comfyui_api.fleet.messages import MESSAGE_VERSION, JobMessage, revealed
from comfyui_api.fleet.sealing import Sealer
from comfyui_api.jobstore.records import JobKind
from comfyui_api.pipeline.request import PromptRequest

KEY = Fernet.generate_key().decode()
GRAPH = {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}}


def request_with_credentials() -> PromptRequest:
    return PromptRequest.model_validate(
        {
            "prompt": GRAPH,
            "id": "job-1",
            "webhook_v2": "https://hooks.example/done",
            "credentials": [
                {"url_pattern": "https://files.example/*", "auth": {"type": "bearer", "token": "top-secret-token"}}
            ],
        }
    )


def test_a_message_reads_back_as_written_and_its_body_never_shows_the_secrets() -> None:
    sealer = Sealer(KEY)
    request = request_with_credentials()
    replay = request.replay()
    replay.pop("needs_memory")
    message = JobMessage(
        id="job-1",
        kind=JobKind.PROMPT,
        request=replay,
        priority=2,
        sync=True,
        extra={"input": {"steps": 4}},
        model_key="0123456789abcdef",
        secrets=revealed(request, "credentials"),
    )

    body = message.encode(sealer)
    read = JobMessage.decode(body, sealer)

    assert b"top-secret-token" not in body
    assert "credentials" not in json.loads(body)["request"]
    assert (read.id, read.kind, read.priority, read.sync, read.extra, read.model_key) == (
        "job-1",
        JobKind.PROMPT,
        2,
        True,
        message.extra,
        "0123456789abcdef",
    )
    rebuilt = PromptRequest.model_validate({**read.request, **read.secrets})
    assert rebuilt.credentials is not None
    assert rebuilt.credentials[0].auth.token.get_secret_value() == "top-secret-token"  # type: ignore[union-attr]
    assert rebuilt.webhook_v2 == "https://hooks.example/done"


def test_secrets_sealed_with_another_key_or_altered_are_refused() -> None:
    body = JobMessage("j", JobKind.PROMPT, {}, secrets={"extra_data": {"api_key_comfy_org": "k"}}).encode(Sealer(KEY))

    with pytest.raises(SealError, match="FLEET_SECRET_KEY"):
        JobMessage.decode(body, Sealer(Fernet.generate_key().decode()))
    raw = json.loads(body)
    raw["sealed"] = raw["sealed"][:-4] + "AAAA"
    with pytest.raises(SealError):
        JobMessage.decode(json.dumps(raw).encode(), Sealer(KEY))


def test_a_rotated_key_list_opens_what_the_old_key_sealed_and_seals_with_the_new_one() -> None:
    old, new = KEY, Fernet.generate_key().decode()
    sealed_before = Sealer(old).seal({"a": 1})
    rotated = Sealer(f"{new}, {old}")

    assert rotated.open(sealed_before) == {"a": 1}
    assert Sealer(new).open(rotated.seal({"b": 2})) == {"b": 2}


@pytest.mark.parametrize("keys", ["", " , ", "not-a-key", f"{KEY},short"])
def test_a_key_setting_without_valid_keys_is_a_config_error(keys: str) -> None:
    with pytest.raises(ConfigError, match="FLEET_SECRET_KEY"):
        Sealer(keys)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        json.dumps({"v": MESSAGE_VERSION + 1, "id": "j", "kind": "prompt", "request": {}}).encode(),
        json.dumps({"v": MESSAGE_VERSION, "kind": "prompt", "request": {}}).encode(),
        json.dumps({"v": MESSAGE_VERSION, "id": "j", "kind": "batch", "request": {}}).encode(),
    ],
    ids=["not-json", "newer-version", "no-id", "unknown-kind"],
)
def test_a_body_that_is_not_a_job_message_is_a_broker_error(body: bytes) -> None:
    with pytest.raises(BrokerError):
        JobMessage.decode(body, Sealer(KEY))
