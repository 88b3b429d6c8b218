"""Delivers one webhook with retries: signed once, same headers on every attempt, never raises.

Delivery is best effort (fire and forget, as in the reference server): a receiver that is down costs a bounded
number of attempts and one error line, never a request. Retries back off exponentially with full jitter and each
attempt has its own deadline (decisions §15); the reference's fixed 1 s sleep and missing timeout could pile up
hung connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from typing import Any

import httpx

from ..storage.net import Redirects, UnsafeUrl, UrlGuard, describe_http_error, send_async
from ..urls import redact_url
from .signing import Signer

logger = logging.getLogger(__name__)

# Module level so tests can substitute a deterministic source of jitter.
_rng = random.Random()


def backoff_delay(failed_attempts: int, base_s: float, max_s: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2**(failed_attempts - 1))].

    Full jitter spreads the retries of many senders that failed together (one receiver outage hits every
    in-flight webhook at once), which a fixed or merely exponential delay would keep in lockstep.
    """
    ceiling = min(max_s, base_s * 2 ** max(failed_attempts - 1, 0))
    return _rng.uniform(0.0, ceiling)


def encode_body(payload: dict[str, Any]) -> str:
    """Compact JSON like the reference's JSON.stringify: no spaces, non-ASCII kept as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class WebhookSender:
    """Sends webhooks over one shared HTTP client.

    The client is the URL guard's (storage/net.py): a request's webhook URL reaches public addresses only (the
    system webhook's origin is trusted), HTTP_PROXY/HTTPS_PROXY/NO_PROXY apply, and redirects are followed with
    the guard's rules.
    """

    def __init__(
        self,
        secret: str | None,
        retries: int,
        *,
        guard: UrlGuard,
        timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._signer = Signer(secret)
        self._retries = retries
        self._timeout_s = timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._client = guard.async_client(httpx.Timeout(timeout_s))
        # Strong references: the event loop only keeps weak ones, and a collected task would vanish mid-delivery.
        self._tasks: set[asyncio.Task[bool]] = set()
        # Set by aclose(): pending retries stop waiting out their backoff, so shutdown is not held up by sleeps.
        self._closing = asyncio.Event()
        self._closed = False

    @property
    def signed(self) -> bool:
        """Whether a secret is configured (else webhooks go out without `webhook-signature`)."""
        return self._signer.signed

    @property
    def in_flight(self) -> int:
        """Background sends not finished yet."""
        return len(self._tasks)

    async def send(
        self, url: str, payload: dict[str, Any], *, message_id: str | None = None, signed: bool = True
    ) -> bool:
        """POST `payload` to `url`; True once a 2xx answer came back, False after every attempt failed.

        `signed=False` sends no webhook-* headers at all (the legacy `webhook` field). `message_id` (default: a
        random UUID) is the `webhook-id`; receivers dedupe on it.
        """
        target = redact_url(url)
        if self._retries <= 0:
            # PROMPT_WEBHOOK_RETRIES=0 means no attempt at all.
            logger.debug("webhook not sent: retries is 0", extra={"url": target})
            return False
        if self._closed:
            logger.warning("webhook not sent: sender is closed", extra={"url": target})
            return False
        try:
            body = encode_body(payload)
        except (TypeError, ValueError) as exc:
            logger.error("webhook payload is not JSON-serializable", extra={"url": target, "reason": str(exc)})
            return False
        headers = {"Content-Type": "application/json"}
        if signed:
            # Computed once: every retry carries the same id, timestamp and signature.
            headers.update(self._signer.headers(message_id or str(uuid.uuid4()), body))
        content = body.encode()

        last_status: int | None = None
        last_error: str | None = None
        for attempt in range(1, self._retries + 1):
            if attempt > 1:
                await self._backoff(attempt - 1)
            try:
                # httpx's timeout bounds each phase; this bounds the whole attempt (a receiver trickling bytes).
                async with asyncio.timeout(self._timeout_s):
                    response = await send_async(self._client, Redirects("POST", url, headers=headers), content)
            except UnsafeUrl as exc:  # the URL guard refused it (a redirect, or a changed DNS answer): no retry
                last_status, last_error = None, str(exc)
                break
            except Exception as exc:  # any failure is a failed attempt: this method never raises
                last_status = None
                last_error = "timeout" if isinstance(exc, TimeoutError) else describe_http_error(exc)
            else:
                if response.is_success:
                    return True
                last_status, last_error = response.status_code, None
            logger.debug(
                "webhook attempt failed",
                extra={"url": target, "attempt": attempt, "status": last_status, "error": last_error},
            )
        logger.error(
            "webhook delivery failed",
            extra={"url": target, "attempts": attempt, "last_status": last_status, "last_error": last_error},
        )
        return False

    def send_in_background(
        self, url: str, payload: dict[str, Any], *, message_id: str | None = None, signed: bool = True
    ) -> asyncio.Task[bool]:
        """Start `send` as a task and return it; the sender keeps it alive and aclose() waits for it."""
        task = asyncio.create_task(self.send(url, payload, message_id=message_id, signed=signed), name="webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Let background sends finish (at most `timeout_s`; their backoff is skipped), then close the client."""
        if self._closed:
            return
        self._closing.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            if pending:
                logger.warning("abandoning webhook deliveries at shutdown", extra={"count": len(pending)})
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        self._closed = True
        await self._client.aclose()

    async def _backoff(self, failed_attempts: int) -> None:
        if self._closing.is_set():
            return
        delay = backoff_delay(failed_attempts, self._backoff_base_s, self._backoff_max_s)
        # Waiting on the closing event (not a plain sleep) lets shutdown cut the wait short.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()
