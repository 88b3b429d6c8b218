"""SaladCloud deletion cost: tell the node's metadata service how much work it holds, so that SaladCloud scales in
idle nodes before busy ones.

As the reference does, on SaladCloud (any `SALAD_*` variable set) ComfyUI's `queue_remaining`, read from each
websocket `status` message, is PUT to `<SALAD_METADATA_URL>/v1/deletion-cost` with the header `Metadata: true` and
the body `{"deletion_cost": <queue_remaining>}`. Unlike the reference, which sends one PUT per message, however many
are still in flight:
- the websocket listener only records the latest value (O(1), never blocks the reader);
- one worker sends at most one PUT at a time, always the latest value (values superseded meanwhile are never sent),
  and none when the value is the one SaladCloud last accepted;
- each PUT has a short timeout; after a failed one the latest value is tried again, with a growing delay, until one
  succeeds;
- a failure is logged once per streak of failures, and the recovery once when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

logger = logging.getLogger(__name__)

# The metadata service is on the node itself: an answer slower than this means it is not there or not well.
_TIMEOUT_S = 3.0
# After a failed PUT the next try waits this long, doubling up to the maximum.
_RETRY_BASE_S = 1.0
_RETRY_MAX_S = 30.0


def queue_remaining(event: dict[str, Any]) -> int | None:
    """The queue length a websocket `status` message carries; None for other messages or an unusable value (custom
    nodes send status messages of their own shape)."""
    if event.get("type") != "status":
        return None
    status = event["data"].get("status")
    exec_info = status.get("exec_info") if isinstance(status, dict) else None
    value = exec_info.get("queue_remaining") if isinstance(exec_info, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class DeletionCost:
    def __init__(
        self,
        metadata_url: str,
        *,
        timeout_s: float = _TIMEOUT_S,
        retry_base_s: float = _RETRY_BASE_S,
        retry_max_s: float = _RETRY_MAX_S,
    ) -> None:
        self._url = metadata_url.rstrip("/") + "/v1/deletion-cost"
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        # The operator's own endpoint on the node: no URL guard, and never through HTTP(S)_PROXY.
        self._http = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=1),
        )
        # The latest value ComfyUI reported, and the last one the metadata service accepted.
        self._latest: int | None = None
        self._reported: int | None = None
        self._changed = asyncio.Event()
        # Failed PUTs in a row; the first is logged, and the success that ends the streak.
        self._failures = 0

    @property
    def reported(self) -> int | None:
        """The last deletion cost the metadata service accepted (None before the first)."""
        return self._reported

    def on_event(self, event: dict[str, Any]) -> None:
        """Websocket listener: remember the latest queue length, and wake the worker when it needs sending."""
        value = queue_remaining(event)
        if value is None:
            return
        self._latest = value
        if value != self._reported:
            self._changed.set()

    async def run(self) -> None:
        """Send the latest value whenever it differs from the one last accepted; returns only by cancellation."""
        logger.info("reporting the SaladCloud deletion cost", extra={"url": self._url})
        delay = self._retry_base_s
        while True:
            await self._changed.wait()
            self._changed.clear()
            value = self._latest
            if value is None or value == self._reported:
                continue
            if await self._put(value):
                self._reported = value
                delay = self._retry_base_s
                continue
            # Try again later, with whatever value is latest by then (a new value does not shorten the wait:
            # the service has just failed, and status messages may come many times a second).
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
            self._changed.set()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _put(self, value: int) -> bool:
        try:
            response = await self._http.put(self._url, json={"deletion_cost": value}, headers={"Metadata": "true"})
        except httpx.HTTPError as exc:
            self._failed(value, f"{type(exc).__name__}: {exc}")
            return False
        if not response.is_success:
            self._failed(value, f"HTTP {response.status_code}: {response.text[:200]}")
            return False
        if self._failures:
            logger.info(
                "SaladCloud deletion cost reported again", extra={"deletion_cost": value, "failures": self._failures}
            )
            self._failures = 0
        else:
            logger.debug("SaladCloud deletion cost reported", extra={"deletion_cost": value})
        return True

    def _failed(self, value: int, reason: str) -> None:
        self._failures += 1
        if self._failures == 1:
            logger.warning(
                "could not report the SaladCloud deletion cost; retrying quietly until it succeeds",
                extra={"url": self._url, "deletion_cost": value, "reason": reason},
            )
        else:
            logger.debug("SaladCloud deletion cost still not reported", extra={"reason": reason})
