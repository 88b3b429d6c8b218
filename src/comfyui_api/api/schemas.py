"""Request and response bodies, with the reference server's field names and defaults."""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..storage.auth import Credential

# Characters that would let an id escape the folder it names files in.
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]|^\.\.?$|\.\.")


class Node(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class_type: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    meta: Any = Field(None, alias="_meta")


class PromptRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: dict[str, Node] = Field(description="An API-format ComfyUI graph: node id → node.")
    id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        description="Request id: prefixes output file names and identifies the request for /interrupt.",
    )

    credentials: list[Credential] | None = Field(
        None,
        description="Credentials for the URLs in the prompt: the first `url_pattern` that matches a URL gives its "
        "`auth`. Never echoed back.",
    )

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not value or len(value) > 200 or _UNSAFE_ID.search(value):
            raise ValueError("must be 1-200 characters without '/', '\\', '..' or control characters")
        return value

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: dict[str, Node]) -> dict[str, Node]:
        if not value:
            raise ValueError("must contain at least one node")
        return value

    def graph(self) -> dict[str, dict[str, Any]]:
        """The prompt as plain JSON-ready dicts, the form ComfyUI takes."""
        return {node_id: node.model_dump(by_alias=True, exclude_none=True) for node_id, node in self.prompt.items()}


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
    prompt: dict[str, Any]
    id: str
    images: list[str] = Field(description="Base64 file contents (no data: prefix), in output order.")
    filenames: list[str]
    stats: Stats


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: str
    location: str | None = None


class InterruptRequest(BaseModel):
    id: str


class InterruptResponse(BaseModel):
    id: str
    interrupted: Literal["success", "failed"]


class ProbeResponse(BaseModel):
    version: str
    status: str
