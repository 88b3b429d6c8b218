"""What the probes report: is ComfyUI up, has the warmup run, are we draining or failed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class ServerState:
    # Set while the ComfyUI child answers HTTP; cleared the moment it exits.
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
