"""Every exception this server raises, in one tree.

    ServerError
    ├── ConfigError (ValueError)        a setting or startup file is wrong: startup stops with one line naming it
    │   └── InvalidWebhookSecret        WEBHOOK_SECRET cannot be turned into a key
    ├── StartupError                    ComfyUI did not start (or exited before it answered)
    │   └── ManifestError               a MANIFEST install step failed
    ├── InvalidUrl (ValueError)         text that is not a usable URL
    ├── InvalidName (ValueError)        a file name that is not safe as a single path part
    ├── InvalidInlineData (ValueError)  base64 or a data URL that does not decode
    ├── TransportError                  a call to ComfyUI got no answer
    ├── InputError                      a prompt input could not be turned into a file
    ├── StorageError
    │   ├── DownloadError               a download failed; the message is the cause
    │   │   ├── AccessDenied            credentials missing or refused
    │   │   └── UnsafeUrl               a URL the server refuses to fetch
    │   │       └── AddressRefused      a connection the address check refused
    │   └── UploadError                 an upload failed; the message is the provider's cause
    ├── JobStoreError                   the job store could not read or write
    ├── BrokerError                     the fleet's broker (RabbitMQ) refused or could not be reached
    ├── SealError                       a job message's sealed secrets do not open with FLEET_SECRET_KEY
    └── ApiError                        answered over HTTP: a status code and a JSON body
        ├── BadRequest (400)            the request is wrong; `location` names the field at fault
        │   ├── PromptRejected          ComfyUI refused the graph at validation
        │   └── MissingAsset            a `core/ASSET` reference names no asset this server holds
        ├── Conflict (409)
        ├── ExecutionFailed (500)       a node raised while ComfyUI executed the prompt
        ├── PromptInterrupted (500)
        ├── UploadFailed (502)          an output could not be uploaded
        ├── ComfyUnavailable (503)      ComfyUI exited, wedged or cannot be reached
        ├── FleetUnavailable (503)      fleet mode: the broker or the job store does not answer now
        ├── ShuttingDown (503)
        └── PromptTimeout (504)

Each boundary converts foreign exceptions into this tree once: the ComfyUI client (comfy/client.py: transport
and JSON errors), each storage provider (SDK and HTTP errors into StorageError), the webhook sender (it never
raises; failures are logged), and the upload step (pipeline/delivery.py: UploadError into UploadFailed). The API's
handlers (api/handlers.py) are the one place errors become responses: ApiError with its own status, an error in a
client's input (a URL, a name, inline data, an input, a download) 400, anything else 500. Code that knows which
field a value came from says so with `located(...)` instead of converting the error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class ServerError(Exception):
    """The root: every exception this server defines."""

    # The request field at fault, when the error came from one (see `located`).
    location: str | None = None


@contextlib.contextmanager
def located(location: str) -> Iterator[None]:
    """Errors raised inside come from the request field `location` (unless they already name one)."""
    try:
        yield
    except ServerError as exc:
        if exc.location is None:
            exc.location = location
        raise


class ConfigError(ServerError, ValueError):
    """A setting is invalid; the message names the variable at fault."""


class InvalidWebhookSecret(ConfigError):
    """WEBHOOK_SECRET cannot be turned into a key. The message never contains the secret."""


class StartupError(ServerError):
    """ComfyUI did not start; the message says why."""


class ManifestError(StartupError):
    """An install step failed; the message names the step and the cause."""


class InvalidUrl(ServerError, ValueError):
    """The text is not a usable URL; the message says why, without echoing secrets."""


class InvalidName(ServerError, ValueError):
    """A name that cannot be used as one file name (empty, a path, or a special name)."""


class InvalidInlineData(ServerError, ValueError):
    """Base64 or a data URL that does not decode; the message says why."""


class TransportError(ServerError):
    """The call did not get an answer: connection refused or lost, a timeout, or a malformed response."""


class InputError(ServerError):
    """The value could not be turned into a file; the message is the cause, for the client."""


class StorageError(ServerError):
    """A storage provider failed; the message is the cause, fit for the client (URLs redacted)."""


class DownloadError(StorageError):
    """A download failed; the message is the cause, fit for the client."""


class AccessDenied(DownloadError):
    """The credentials were missing or wrong."""


class UnsafeUrl(DownloadError):
    """A request-supplied URL that the server refuses to fetch; the message says why and how to allow it."""


class AddressRefused(UnsafeUrl):
    """A connection that the address check refused (raised under httpx, turned into UnsafeUrl with its URL)."""

    def __init__(self, origin: str, address: str, problem: str) -> None:
        self.origin = origin
        self.address = address
        self.problem = problem
        super().__init__(self.reason())

    def reason(self) -> str:
        article = "an" if self.problem.startswith(("a", "e", "i", "o", "IPv4", "unspecified")) else "a"
        return (
            f"resolves to {article} {self.problem} address ({self.address}); add its origin "
            f"({self.origin}) to HTTP_TRUSTED_ORIGINS to allow it"
        )


class UploadError(StorageError):
    """An upload failed; the message is the provider's cause, fit for the client."""


class JobStoreError(ServerError):
    """The store could not read or write; the message says why. Each store converts its driver's errors into it."""


class BrokerError(ServerError):
    """The broker refused an operation or cannot be reached; fleet/broker.py converts aio-pika's errors into it."""


class SealError(ServerError):
    """Sealed secrets that FLEET_SECRET_KEY does not open: another key, or altered."""


class ApiError(ServerError):
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


class MissingAsset(BadRequest):
    """A `core/ASSET` reference in the graph is malformed or names no asset held here (v2: 422 `missing_asset`)."""


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


class FleetUnavailable(ApiError):
    """Fleet mode: the broker or the job store does not answer, so a job cannot be accepted without risk of losing
    it; retrying later may succeed."""

    status_code = 503


class UploadFailed(ApiError):
    """An upload to the provider failed (the request's outputs are lost to it)."""

    status_code = 502


class PromptTimeout(ApiError):
    status_code = 504


class V2Error(ApiError):
    """A Comfy API v2 error: `{"error": {"code", "message", "details"}}` (the contract's ErrorEnvelope), with a
    `Retry-After` header when `retry_after_s` is set."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status_code: int,
        details: dict[str, Any] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.code = code
        self.details = details
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class ShuttingDown(ApiError):
    status_code = 503

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new prompts")
