"""What workflow endpoint modules import: live choices from ComfyUI, as pydantic field types.

    from pydantic import BaseModel, Field
    from comfyui_api.workflows import Checkpoint, Sampler, Scheduler, default_checkpoint

    class RequestSchema(BaseModel):
        prompt: str = Field(description="What to draw")
        checkpoint: Checkpoint = Field(default_factory=default_checkpoint)
        sampler_name: Sampler = "euler"
        scheduler: Scheduler = "normal"

The choices are read when a value is validated and when the OpenAPI document is built, so models downloaded
later and samplers from custom nodes are included. They are those of the app serving the request; outside one (a
module used on its own) there are none, and any value is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from .catalog import current_catalog


class LiveChoices:
    """A `str` field whose value must be one of a list that can change while the server runs."""

    def __init__(self, source: Callable[[], list[str]], what: str) -> None:
        self._source = source
        self._what = what

    def __call__(self, value: str) -> str:
        choices = self._source()
        # Before ComfyUI has been asked, or outside an app (an empty list), nothing is known to be wrong.
        if choices and value not in choices:
            shown = ", ".join(choices[:20]) + (", …" if len(choices) > 20 else "")
            raise ValueError(f"unknown {self._what} {value!r}; available: {shown}")
        return value

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        result: dict[str, Any] = handler(schema)
        if choices := self._source():
            result["enum"] = choices
        return result


def samplers() -> list[str]:
    catalog = current_catalog()
    return list(catalog.samplers) if catalog is not None else []


def schedulers() -> list[str]:
    catalog = current_catalog()
    return list(catalog.schedulers) if catalog is not None else []


def models(folder: str) -> list[str]:
    """The files ComfyUI lists in a model folder (`checkpoints`, `loras`, `vae`, …)."""
    catalog = current_catalog()
    return list(catalog.models.get(folder, [])) if catalog is not None else []


def default_checkpoint() -> str | None:
    """The warmup prompt's checkpoint, else the first checkpoint ComfyUI lists."""
    catalog = current_catalog()
    return catalog.default_checkpoint() if catalog is not None else None


def model_choice(folder: str) -> Any:
    """A field type for a file of one model folder, e.g. `lora: model_choice("loras")`."""
    choices = LiveChoices(lambda: models(folder), f"{folder} file")
    return Annotated[str, AfterValidator(choices), choices]


_sampler = LiveChoices(samplers, "sampler")
_scheduler = LiveChoices(schedulers, "scheduler")
Sampler = Annotated[str, AfterValidator(_sampler), _sampler]
Scheduler = Annotated[str, AfterValidator(_scheduler), _scheduler]
Checkpoint = model_choice("checkpoints")

__all__ = [
    "Checkpoint",
    "LiveChoices",
    "Sampler",
    "Scheduler",
    "default_checkpoint",
    "model_choice",
    "models",
    "samplers",
    "schedulers",
]
