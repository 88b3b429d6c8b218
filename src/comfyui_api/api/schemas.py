"""Request and response bodies, with the reference server's field names and defaults."""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..pipeline.convert import ConvertOutput
from ..storage.auth import Credential
from ..storage.uploads import AzureBlobUpload, HfUpload, HttpUpload, S3Upload

# Characters that would let an id escape the folder it names files in.
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]|^\.\.?$|\.\.")


class Node(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class_type: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    meta: Any = Field(None, alias="_meta")


class PromptOptions(BaseModel):
    """Every /prompt field but the graph: what a workflow endpoint takes beside its `input`."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        description="Request id: prefixes output file names and identifies the request for /interrupt.",
    )

    credentials: list[Credential] | None = Field(
        None,
        description="Credentials for the URLs in the prompt: the first `url_pattern` that matches a URL gives its "
        "`auth`. Never echoed back.",
    )

    webhook: str | None = Field(
        None, description="Deprecated: one unsigned `output.complete` POST per output. Makes the request async."
    )
    webhook_v2: str | None = Field(
        None, description="Signed `prompt.complete` / `prompt.failed` webhook. Makes the request async (202)."
    )
    convert_output: ConvertOutput | None = None
    s3: S3Upload | None = None
    hf_upload: HfUpload | None = None
    azure_blob_upload: AzureBlobUpload | None = None
    http_upload: HttpUpload | None = None

    @property
    def upload_block(self) -> S3Upload | HfUpload | AzureBlobUpload | HttpUpload | None:
        """The upload block that applies (the reference's order), unless a legacy webhook wins."""
        if self.webhook:
            return None
        return self.s3 or self.hf_upload or self.azure_blob_upload or self.http_upload

    @property
    def is_async(self) -> bool:
        block = self.upload_block
        return bool(self.webhook or self.webhook_v2 or (block is not None and block.async_))

    def echo(self) -> dict[str, Any]:
        """The request fields a response or webhook repeats: all but the prompt, and never credentials."""
        return self.model_dump(mode="json", by_alias=True, exclude={"prompt", "credentials"}, exclude_none=True)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not value or len(value.encode()) > 200 or _UNSAFE_ID.search(value):
            raise ValueError("must be 1-200 bytes (UTF-8) without '/', '\\', '..' or control characters")
        return value


class PromptRequest(PromptOptions):
    prompt: dict[str, Node] = Field(description="An API-format ComfyUI graph: node id → node.")

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
