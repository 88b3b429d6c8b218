"""Errors that become HTTP responses: each carries its status code and a JSON body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failure with a status code and a body `{"error": ..., "location": ..., **extra}`."""

    status_code = 500

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        status_code: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.location is not None:
            body["location"] = self.location
        body.update(self.extra)
        return body


class BadRequest(ApiError):
    """The request is wrong; `location` names the field at fault."""

    status_code = 400

    def __init__(self, message: str, *, location: str = "prompt", **extra: Any) -> None:
        super().__init__(message, location=location, **extra)


class Conflict(ApiError):
    status_code = 409


class PromptRejected(BadRequest):
    """ComfyUI refused the graph at validation; carries its `node_errors`."""


class ExecutionFailed(ApiError):
    """A node raised while ComfyUI executed the prompt."""

    status_code = 500


class PromptInterrupted(ApiError):
    status_code = 500

    def __init__(self, **extra: Any) -> None:
        super().__init__("Prompt interrupted", **extra)


class ComfyUnavailable(ApiError):
    """ComfyUI exited or cannot be reached; retrying later may succeed."""

    status_code = 503


class PromptTimeout(ApiError):
    status_code = 504


class ShuttingDown(ApiError):
    status_code = 503

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new prompts")
