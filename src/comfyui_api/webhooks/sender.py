"""Delivers one webhook with retries: signed once, same headers and body on every attempt, never raises.

Delivery is best effort (fire and forget, as in the reference server), and it outlasts a receiver's real outage: at
least `retries` attempts (PROMPT_WEBHOOK_RETRIES), and more until `retry_window_s` has passed since the first, the
last one at the window's end. Retries back off exponentially with full jitter and each attempt has its own deadline
(decisions §15); the reference's fixed 1 s sleep and missing timeout could pile up hung connections. A receiver that
never answers costs one error line with the cause, never a request.

Large bodies (output files as base64, long prompt strings) are never held whole: they are signed in one streaming
pass and streamed again from disk for every attempt, with a Content-Length computed up front (webhooks/body.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from typing import Any

import httpx

from ..errors import UnsafeUrl
from ..metrics import Metrics
from ..storage.net import Body, Redirects, UrlGuard, describe_http_error, send_async
from ..urls import redact_url
from .body import JsonBody
from .signing import Signer

logger = logging.getLogger(__name__)

# An attempt's deadline grows by a second per MiB of body: a large webhook to a distant receiver needs longer than
# the base timeout to upload, and a receiver slower than this would never get it anyway.
_SLOWEST_UPLOAD_BYTES_S = 1024 * 1024


def backoff_delay(failed_attempts: int, base_s: float, max_s: float, *, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2**(failed_attempts - 1))], drawn from `rng`.

    Full jitter spreads the retries of many senders that failed together (one receiver outage hits every
    in-flight webhook at once), which a fixed or merely exponential delay would keep in lockstep.
    """
    ceiling = min(max_s, base_s * 2 ** max(failed_attempts - 1, 0))
    return rng.uniform(0.0, ceiling)


class WebhookSender:
    """Sends webhooks over one shared HTTP client.

    The client is the URL guard's (storage/net.py): a request's webhook URL reaches public addresses only (the
    system webhook's origin is trusted), HTTP_PROXY/HTTPS_PROXY/NO_PROXY apply, and redirects are followed with
    the guard's rules. The schedule: `retries` attempts at least (0: none at all), then more until `retry_window_s`
    has passed since the first (0: no more), waiting `backoff_delay(failures, backoff_base_s, backoff_max_s)`
    between two; each attempt has `timeout_s` plus a second per MiB of body. The jitter is drawn from `rng` (default:
    a Random of its own).
    """

    def __init__(
        self,
        secret: str | None,
        retries: int,
        *,
        guard: UrlGuard,
        timeout_s: float = 10.0,
        retry_window_s: float = 0.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._signer = Signer(secret)
        self._retries = retries
        self._timeout_s = timeout_s
        self._retry_window_s = retry_window_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._rng = rng if rng is not None else random.Random()
        self._client = guard.async_client(httpx.Timeout(timeout_s))
        # Set by stop_retrying(): a failed attempt is then the last one, so shutdown is not held up by a schedule.
        self._stopping = asyncio.Event()
        self._closed = False

    async def send(
        self, url: str, payload: dict[str, Any], *, message_id: str | None = None, signed: bool = True
    ) -> bool:
        """POST `payload` to `url`; True once a 2xx answer came back, False once the retry schedule is over.

        `payload` may hold `Base64File`s (webhooks/body.py): their files must stay on disk until this returns.
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
            headers, content, size = await self._prepare(payload, message_id or str(uuid.uuid4()), signed)
        except (TypeError, ValueError, OSError) as exc:
            logger.error("webhook body could not be written", extra={"url": target, "reason": str(exc)})
            return False
        attempt_s = self._timeout_s + size / _SLOWEST_UPLOAD_BYTES_S
        loop = asyncio.get_running_loop()
        window_end = loop.time() + self._retry_window_s
        attempt = 0
        last_status: int | None = None
        last_error: str | None = None
        try:
            while True:
                attempt += 1
                refused = False
                try:
                    # httpx's timeout bounds each phase; this bounds the whole attempt (a receiver trickling bytes).
                    async with asyncio.timeout(attempt_s):
                        response = await send_async(self._client, Redirects("POST", url, headers=headers), content)
                except UnsafeUrl as exc:  # the URL guard refused it (a redirect, or a changed DNS answer): no retry
                    last_status, last_error, refused = None, str(exc), True
                except Exception as exc:  # any failure is a failed attempt: this method never raises
                    last_status = None
                    last_error = "timeout" if isinstance(exc, TimeoutError) else describe_http_error(exc)
                else:
                    if response.is_success:
                        self._count("delivered", delivered=True)
                        return True
                    last_status, last_error = response.status_code, None
                self._count("refused" if last_status is not None else "error")
                logger.debug(
                    "webhook attempt failed",
                    extra={"url": target, "attempt": attempt, "status": last_status, "error": last_error},
                )
                if refused or self._stopping.is_set():
                    break
                delay = self._next_delay(attempt, window_end - loop.time())
                if delay is None:
                    break
                # Shutdown cuts the wait short: one more attempt right away (the receiver may be back), then no more.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        except asyncio.CancelledError:
            logger.error(
                "webhook delivery cancelled",
                extra={"url": target, "attempts": attempt, "last_status": last_status, "last_error": last_error},
            )
            raise
        failure = {"url": target, "attempts": attempt, "last_status": last_status, "last_error": last_error}
        if self._stopping.is_set() and not refused:
            failure["stopped_by_shutdown"] = True
        logger.error("webhook delivery failed", extra=failure)
        if self._metrics is not None:
            self._metrics.webhook_ended(delivered=False)
        return False

    def _count(self, attempt: str, *, delivered: bool = False) -> None:
        if self._metrics is not None:
            self._metrics.webhook_attempted(attempt)
            if delivered:
                self._metrics.webhook_ended(delivered=True)

    def stop_retrying(self) -> None:
        """Shutdown has begun: from now on a failed attempt is a delivery's last (a pending backoff ends at once, with
        one more attempt), so no retry schedule holds shutdown up; each delivery cut short logs its failure."""
        self._stopping.set()

    async def aclose(self) -> None:
        """Stop retrying and close the client; later sends are refused. The callers wait for their sends first."""
        if self._closed:
            return
        self.stop_retrying()
        self._closed = True
        await self._client.aclose()

    async def _prepare(
        self, payload: dict[str, Any], message_id: str, signed: bool
    ) -> tuple[dict[str, str], Body, int]:
        """The headers, the body (bytes, or a factory of one stream per attempt) and its size in bytes."""
        # Signed once: every retry carries the same id, timestamp and signature.
        body = JsonBody(payload)
        headers = {"Content-Type": "application/json"}
        if body.is_small():
            content = body.encode()
            if signed:
                headers.update(self._signer.headers(message_id, (content,)))
            return headers, content, len(content)

        def measure_and_sign() -> tuple[dict[str, str], int]:
            # Signing reads the whole body (files included) as it is written; the length needs no file read.
            return (self._signer.headers(message_id, body.chunks()) if signed else {}), body.size()

        signature, size = await asyncio.to_thread(measure_and_sign)
        headers.update(signature)
        # Set explicitly so that httpx sends the stream with a length instead of chunked.
        headers["Content-Length"] = str(size)
        return headers, body.stream, size

    def _next_delay(self, failed_attempts: int, window_left_s: float) -> float | None:
        """The backoff before the next attempt, or None when the schedule is over: the minimum attempts never wait
        on the window; after them, attempts go on while it lasts, the wait cut so that the last one is at its end."""
        delay = backoff_delay(failed_attempts, self._backoff_base_s, self._backoff_max_s, rng=self._rng)
        if failed_attempts < self._retries:
            return delay
        if window_left_s <= 0:
            return None
        return min(delay, window_left_s)
