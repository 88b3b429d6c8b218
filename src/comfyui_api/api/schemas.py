"""Request and response bodies, with the reference server's field names and defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ExecutionStats(BaseModel):
    start: int
    end: int
    duration: int
    nodes: dict[str, dict[str, int]]


class Stats(BaseModel):
    comfy_execution: ExecutionStats
    preprocess_time: int
    comfy_round_trip_time: int
    postprocess_time: int
    upload_time: int
    total_time: int


class PromptResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: dict[str, Any]
    id: str
    images: list[str] = Field(
        description="Base64 file contents (no data: prefix), or uploaded URLs with an upload block; in output order."
    )
    filenames: list[str]
    stats: Stats


class AsyncAccepted(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ok"]
    id: str
    prompt: dict[str, Any]


class FieldProblem(BaseModel):
    location: str = Field(description="The field at fault, as a dotted path.")
    message: str


class ErrorResponse(BaseModel):
    """Every error this server answers with. Other fields may follow, e.g. `node_id` and `exception_type` when a
    node failed."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="What went wrong.")
    location: str | None = Field(
        None,
        description="The field at fault, as a dotted path (e.g. `id`, `prompt.3.inputs.image`), or `body` for the "
        "request body as a whole.",
    )
    errors: list[FieldProblem] | None = Field(
        None, description="A body that failed validation: every problem (`error` and `location` name the first)."
    )
    node_errors: dict[str, Any] | None = Field(None, description="ComfyUI rejected the graph: its errors per node.")


class InterruptRequest(BaseModel):
    id: str = Field(description="The `id` of a /prompt or workflow request.")


class InterruptResponse(BaseModel):
    id: str
    interrupted: Literal["success", "failed"]


class ProbeResponse(BaseModel):
    version: str
    status: str
