"""A finished prompt's fate, read from its ComfyUI history entry."""

from __future__ import annotations

from typing import Any

import pytest

from comfyui_api.errors import ApiError, ExecutionFailed, PromptInterrupted
from comfyui_api.pipeline.history import execution_error, message_time, raise_if_failed

START = ("execution_start", {"prompt_id": "p", "timestamp": 1000})
CACHED = ("execution_cached", {"prompt_id": "p", "nodes": [], "timestamp": 1001})
SUCCESS = ("execution_success", {"prompt_id": "p", "timestamp": 2000})


def _entry(status_str: str, *messages: tuple[str, dict[str, Any]], completed: bool = False) -> dict[str, Any]:
    return {"outputs": {}, "status": {"status_str": status_str, "completed": completed, "messages": list(messages)}}


def _execution_error(**overrides: Any) -> tuple[str, dict[str, Any]]:
    data = {
        "prompt_id": "p",
        "node_id": "7",
        "node_type": "KSampler",
        "exception_type": "RuntimeError",
        "exception_message": "cannot open /opt/ComfyUI/models/checkpoints/model.safetensors\n",
        "traceback": ['  File "/opt/ComfyUI/execution.py", line 1\n'],
        "timestamp": 1500,
    }
    data.update(overrides)
    return "execution_error", data


def test_a_successful_entry_does_not_raise() -> None:
    raise_if_failed(_entry("success", START, SUCCESS, completed=True))


def test_a_completed_entry_does_not_raise_even_without_a_status_string() -> None:
    raise_if_failed({"status": {"completed": True, "messages": []}})


def test_an_execution_error_raises_execution_failed_with_its_details() -> None:
    with pytest.raises(ExecutionFailed) as caught:
        raise_if_failed(_entry("error", START, _execution_error()))

    error = caught.value
    assert error.status_code == 500
    assert error.extra == {
        "node_id": "7",
        "node_type": "KSampler",
        "exception_type": "RuntimeError",
        "exception_message": "cannot open model.safetensors",
    }
    assert error.message == "Prompt execution failed at node 7 (KSampler): RuntimeError: cannot open model.safetensors"
    assert "/opt/ComfyUI" not in str(error.body())


def test_an_execution_error_without_details_has_defaults() -> None:
    error = execution_error({"node_id": "3", "node_type": "LoadImage"})

    assert error.extra["exception_type"] == "Exception"
    assert error.extra["exception_message"] == ""


def test_an_interrupted_entry_raises_prompt_interrupted() -> None:
    interrupted = ("execution_interrupted", {"prompt_id": "p", "node_id": "5", "node_type": "KSampler"})

    with pytest.raises(PromptInterrupted) as caught:
        raise_if_failed(_entry("error", START, interrupted))

    assert caught.value.body() == {"error": "Prompt interrupted", "node_id": "5", "node_type": "KSampler"}


def test_the_last_failure_message_decides() -> None:
    interrupted = ("execution_interrupted", {"prompt_id": "p", "node_id": "5", "node_type": "KSampler"})

    with pytest.raises(PromptInterrupted):
        raise_if_failed(_entry("error", START, _execution_error(), interrupted))


@pytest.mark.parametrize(
    "entry",
    [_entry("error"), _entry("error", START, CACHED), {"status": {"status_str": "error"}}, {}],
)
def test_a_failure_without_messages_is_a_generic_api_error(entry: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as caught:
        raise_if_failed(entry)

    assert type(caught.value) is ApiError
    assert caught.value.status_code == 500
    assert caught.value.message == "ComfyUI marked the prompt as failed without saying why"


def test_message_time_returns_the_first_matching_timestamp() -> None:
    entry = _entry("success", START, CACHED, SUCCESS, completed=True)

    assert message_time(entry, {"execution_start"}) == 1000
    assert message_time(entry, {"execution_success", "execution_cached"}) == 1001
    assert message_time(entry, {"execution_error"}) is None


def test_message_time_ignores_messages_without_an_integer_timestamp() -> None:
    entry = _entry("success", ("execution_start", {"timestamp": "soon"}), ("execution_start", {"timestamp": 7}))

    assert message_time(entry, {"execution_start"}) == 7
    assert message_time({}, {"execution_start"}) is None
