"""What the probes report: is ComfyUI up, has the warmup run, are we draining or failed; and, for
`/health?verbose=1`, what the server last learnt about ComfyUI, kept here so that no probe ever calls it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class ServerState:
    # Set while ComfyUI answers HTTP; cleared the moment it exits (or, attached, is found gone).
    comfy_up: asyncio.Event = field(default_factory=asyncio.Event)
    # True after the warmup of the current ComfyUI launch finished.
    warm: bool = False
    # True once any warmup has finished; liveness never goes back (reference semantics).
    healthy: bool = False
    draining: bool = False
    # Why the server cannot go on (a critical background task died); it is exiting. Unready and unhealthy.
    failed: str | None = None
    # False on an API-only fleet replica: no ComfyUI to wait for or to watch.
    needs_comfy: bool = True
    # Fleet mode: the broker is connected and the job store answers (always True on a standalone server).
    fleet_ok: bool = True
    # time.monotonic() of the server's start, and of ComfyUI's last coming up (None while it never did).
    started_at: float = field(default_factory=time.monotonic)
    comfy_up_since: float | None = None
    # Times ComfyUI came back after an exit, a wedge or (attached) a loss.
    comfy_restarts: int = 0
    # ComfyUI's last /system_stats answer and when it came (ISO 8601, UTC); refreshed in the background.
    system_stats: dict[str, Any] | None = None
    system_stats_at: str | None = None
    # The last error the server met (ComfyUI gone, wedged or failing a prompt): `message`, `at` and context.
    last_error: dict[str, Any] | None = None

    def note_error(self, message: str, **context: Any) -> None:
        self.last_error = {"message": message, "at": now_iso(), **context}

    def note_system_stats(self, stats: dict[str, Any]) -> None:
        self.system_stats = stats
        self.system_stats_at = now_iso()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
