"""A job as it travels through the broker: what a worker needs to run it, and nothing it must not see in clear.

The body is JSON: the job's id, kind and priority, its request as a restart would replay it (jobstore/records.py's
`request`: the graph and delivery options, never credentials), what a synchronous answer adds, the record as the
front door created it, and `sealed`, the request's credentials and v2 `extra_data` sealed with FLEET_SECRET_KEY
(sealing.py). The secrets are never written to the job store nor logged; they exist in clear only in the memory of
the replica that took the request and of the worker that runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretStr

from ..errors import BrokerError
from ..jobstore.records import JobKind
from .sealing import Sealer

# Bumped when the body changes shape: a worker refuses (dead-letters) a message of a version it does not know.
MESSAGE_VERSION = 1


@dataclass
class JobMessage:
    id: str
    kind: JobKind
    request: dict[str, Any]
    priority: int = 0
    # A synchronous /prompt: the worker streams the answer's body to the replica that holds the connection.
    sync: bool = False
    # Fields the answer adds (a workflow endpoint's validated `input`).
    extra: dict[str, Any] = field(default_factory=dict)
    # The job's record as the front door created it (record_row), and when (ms since the epoch): a worker that
    # takes the job at its first delivery needs no read of the store (worker.py).
    record: dict[str, Any] | None = None
    published_at: int = 0
    # The key of the models the job loads (routing.py): the worker that runs it is then warm for them.
    model_key: str | None = None
    # The replica waiting for a synchronous answer (the AMQP message's `reply_to`; not in the body).
    reply_to: str | None = None
    # credentials and extra_data, in clear here; sealed in the body.
    secrets: dict[str, Any] = field(default_factory=dict, repr=False)

    def encode(self, sealer: Sealer) -> bytes:
        body: dict[str, Any] = {
            "v": MESSAGE_VERSION,
            "id": self.id,
            "kind": self.kind.value,
            "priority": self.priority,
            "sync": self.sync,
            "extra": self.extra,
            "request": self.request,
            "record": self.record,
            "published_at": self.published_at,
            "model_key": self.model_key,
        }
        if self.secrets:
            body["sealed"] = sealer.seal(self.secrets)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes, sealer: Sealer) -> JobMessage:
        """The message in `body`; BrokerError when it is not one this version reads, SealError when its secrets do
        not open."""
        try:
            raw = json.loads(body)
            if raw.get("v") != MESSAGE_VERSION:
                raise BrokerError(f"job message of version {raw.get('v')!r}; this worker reads {MESSAGE_VERSION}")
            message = cls(
                id=str(raw["id"]),
                kind=JobKind(raw["kind"]),
                request=dict(raw["request"]),
                priority=int(raw.get("priority", 0)),
                sync=bool(raw.get("sync", False)),
                extra=dict(raw.get("extra") or {}),
                record=dict(raw["record"]) if raw.get("record") else None,
                published_at=int(raw.get("published_at") or 0),
                model_key=str(raw["model_key"]) if raw.get("model_key") else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BrokerError(f"not a job message: {type(exc).__name__}: {exc}") from None
        if raw.get("sealed"):
            message.secrets = sealer.open(str(raw["sealed"]))
        return message


def revealed(model: BaseModel, *fields: str) -> dict[str, Any]:
    """`model`'s `fields`, dumped as JSON values with their SecretStr values in clear (to be sealed)."""
    return _reveal(model.model_dump(include=set(fields), exclude_none=True, by_alias=True))


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(item) for item in value]
    return value
