"""What the pipeline takes: a /prompt request (its graph, id, delivery options and credentials), as the API
validated it. Workflow endpoints build the same request from their `input`."""

from __future__ import annotations

import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..storage.auth import Credential
from ..storage.uploads import AzureBlobUpload, HfUpload, HttpUpload, S3Upload
from .convert import ConvertOutput

# An id names files and folders: without '/', '\\', '..' or control characters it cannot leave the folder it names
# files in. The same pattern is in the OpenAPI document (no lookarounds, so any JSON Schema validator reads it).
ID_PATTERN = r"^(?:\.?[^./\\\x00-\x1f\x7f])+\.?$"
ID_MAX_BYTES = 200
_ID_RULE = f"1-{ID_MAX_BYTES} bytes in UTF-8, without '/', '\\', '..' or control characters, and not '.'"


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
        description="Request id (default: a new UUID): prefixes output file names and identifies the request for "
        f"/interrupt. {_ID_RULE}.",
        # maxLength counts characters: the byte limit is the description's, checked by the validator below.
        json_schema_extra={"pattern": ID_PATTERN, "minLength": 1, "maxLength": ID_MAX_BYTES},
    )

    timeout_s: float | None = Field(
        None,
        gt=0,
        description="This request's deadline in seconds, over downloads, queueing and execution; PROMPT_TIMEOUT_S "
        "caps it. At expiry the prompt is interrupted and the request fails with 504.",
    )

    priority: int | None = Field(
        None,
        ge=0,
        le=9,
        description="Fleet mode: the job's priority level, 0 (the default) to FLEET_PRIORITY_LEVELS - 1 (the most "
        "urgent); FIFO within a level. A standalone server runs its requests in the order they come.",
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
    convert_output: ConvertOutput | None = Field(
        None, description="Re-encode still-image outputs as JPEG or WebP; `format` decides which `options` apply."
    )
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

    def replay(self) -> dict[str, Any]:
        """What a restart of the server needs to run the request again: all of it but credentials, which are held in
        memory only (a request that had some says so, `needs_memory`, and cannot be run again)."""
        kept = self.model_dump(mode="json", by_alias=True, exclude={"credentials"}, exclude_none=True)
        return {**kept, "needs_memory": True} if self.credentials else kept

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if len(value.encode()) > ID_MAX_BYTES or not re.fullmatch(ID_PATTERN, value):
            raise ValueError(f"must be {_ID_RULE}")
        return value


class PromptRequest(PromptOptions):
    # A graph that runs on any ComfyUI in a moment (no model): Swagger's "Try it out" starts from it.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prompt": {
                        "1": {
                            "class_type": "EmptyImage",
                            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x336699},
                        },
                        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "example"}},
                    }
                }
            ]
        }
    )

    prompt: dict[str, Node] = Field(
        description="An API-format ComfyUI graph: node id → node.", json_schema_extra={"minProperties": 1}
    )

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: dict[str, Node]) -> dict[str, Node]:
        if not value:
            raise ValueError("must contain at least one node")
        return value

    def graph(self) -> dict[str, dict[str, Any]]:
        """The prompt as plain JSON-ready dicts, the form ComfyUI takes."""
        return {node_id: node.model_dump(by_alias=True, exclude_none=True) for node_id, node in self.prompt.items()}
