"""Webhook signing, delivery and payloads, against a real receiver on loopback (tests/support/receiver.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from comfyui_api.errors import InvalidWebhookSecret
from comfyui_api.storage.net import UrlGuard
from comfyui_api.webhooks.payloads import (
    legacy_failed,
    output_complete,
    prompt_complete,
    prompt_failed,
    redact,
    utc_timestamp,
)
from comfyui_api.webhooks.sender import WebhookSender, backoff_delay
from comfyui_api.webhooks.signing import Signer
from tests.support.receiver import Received, WebhookReceiver

SENDER_LOGGER = "comfyui_api.webhooks.sender"
RAW_KEY = os.urandom(24)
B64_SECRET = base64.b64encode(RAW_KEY).decode()
WHSEC_SECRET = "whsec_" + B64_SECRET
PAYLOAD = {"type": "prompt.complete", "id": "req-1", "text": "a cat ☕", "n": [1, 2.5, None, True]}


def count(n: int) -> Callable[[list[Received]], bool]:
    return lambda requests: len(requests) >= n


def encode(payload: dict[str, Any]) -> str:
    """The body a webhook carries: compact JSON with non-ASCII kept, like the reference's JSON.stringify."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=WHSEC_SECRET) as hook:
        yield hook


@pytest.fixture
async def make_sender() -> AsyncIterator[Callable[..., WebhookSender]]:
    """Senders with small backoff and timeouts and no retry window (exactly `retries` attempts unless a test gives
    one); all closed at the end."""
    made: list[WebhookSender] = []

    def factory(secret: str | None = WHSEC_SECRET, retries: int = 3, **kwargs: Any) -> WebhookSender:
        kwargs.setdefault("timeout_s", 5.0)
        kwargs.setdefault("backoff_base_s", 0.01)
        kwargs.setdefault("backoff_max_s", 0.05)
        # The receivers listen on loopback: the address check is off (its own tests are in test_net.py).
        kwargs.setdefault("guard", UrlGuard(block_private=False))
        sender = WebhookSender(secret, retries, **kwargs)
        made.append(sender)
        return sender

    yield factory
    for sender in made:
        await sender.aclose()


def dead_url() -> str:
    """A loopback URL where nothing listens (a receiver that was started, then stopped)."""
    hook = WebhookReceiver().start()
    hook.stop()
    return hook.url + "?token=s3cr3t"


# --- signing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [B64_SECRET, WHSEC_SECRET], ids=["plain-base64", "whsec-prefix"])
@pytest.mark.parametrize("verifier_secret", [B64_SECRET, WHSEC_SECRET], ids=["verify-plain", "verify-whsec"])
def test_signature_verifies_with_svix(secret: str, verifier_secret: str) -> None:
    body = encode(PAYLOAD)
    headers = Signer(secret).headers("msg-1", [body.encode()])
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg-1"
    # Both spellings of one key are the same key.
    Webhook(verifier_secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(verifier_secret).verify(body.replace("cat", "dog"), headers)


def test_signature_is_hmac_of_id_timestamp_body_with_the_decoded_key() -> None:
    body = encode(PAYLOAD)
    headers = Signer(WHSEC_SECRET).headers("msg-2", [body.encode()], timestamp=1_700_000_000)
    assert headers["webhook-timestamp"] == "1700000000"
    expected = hmac.new(RAW_KEY, f"msg-2.1700000000.{body}".encode(), hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


@pytest.mark.parametrize("secret", [B64_SECRET, WHSEC_SECRET, "whsec_" + B64_SECRET.rstrip("="), "my-webhook_secret"])
def test_a_body_signed_in_chunks_has_svix_signature(secret: str) -> None:
    """The HMAC is fed chunk by chunk (a body streamed from disk); the key is derived as svix derives it, also from
    unpadded base64 and from characters svix drops."""
    body = encode({**PAYLOAD, "big": "é☕" * 5000})
    data = body.encode()
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]  # splits inside multi-byte characters too
    headers = Signer(secret).headers("msg-4", pieces, timestamp=1_700_000_000)
    when = datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert headers["webhook-signature"] == Webhook(secret).sign("msg-4", when, body)


def test_timestamp_is_current_unix_seconds() -> None:
    before = int(time.time())
    stamp = int(Signer(B64_SECRET).headers("x", [b"{}"])["webhook-timestamp"])
    assert before <= stamp <= int(time.time())


@pytest.mark.parametrize("secret", [None, ""])
def test_no_secret_means_unsigned(secret: str | None) -> None:
    headers = Signer(secret).headers("msg-3", [b"{}"])
    assert headers["webhook-id"] == "msg-3"
    assert "webhook-signature" not in headers


@pytest.mark.parametrize("secret", ["Zq9xW", "whsec_Zq9xW", "!!!!", "whsec_", "ключ-key"])
def test_invalid_secret_is_a_clear_error_without_the_secret(secret: str) -> None:
    with pytest.raises(InvalidWebhookSecret) as info:
        Signer(secret)
    assert "WEBHOOK_SECRET" in str(info.value)
    key_text = secret.removeprefix("whsec_")
    if key_text:
        assert key_text not in str(info.value).replace("whsec_", "")


def test_secret_with_non_base64_characters_warns(caplog: pytest.LogCaptureFixture) -> None:
    Signer("my-webhook_secret")
    assert any("outside standard base64" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Signer(WHSEC_SECRET)
    assert not caplog.records


# --- sender: delivery ---------------------------------------------------------------------------------------------


async def test_delivers_compact_json_signed(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender()
    assert await sender.send(receiver.url, PAYLOAD, message_id="req-1")
    (got,) = receiver.requests
    assert got.method == "POST"
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.body == json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False)
    assert got.json() == PAYLOAD
    assert got.verified is True
    assert got.headers["webhook-id"] == "req-1"


async def test_default_message_id_is_a_fresh_uuid(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender()
    assert await sender.send(receiver.url, PAYLOAD)
    assert await sender.send(receiver.url, PAYLOAD)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", i) for i in ids)


async def test_unsigned_without_secret(make_sender: Callable[..., WebhookSender]) -> None:
    with WebhookReceiver() as hook:
        sender = make_sender(secret=None)
        assert await sender.send(hook.url, PAYLOAD, message_id="m")
        (got,) = hook.requests
    assert got.headers["webhook-id"] == "m"
    assert "webhook-timestamp" in got.headers
    assert "webhook-signature" not in got.headers


async def test_signed_false_sends_no_webhook_headers(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    with WebhookReceiver() as plain:
        assert await make_sender().send(plain.url, PAYLOAD, signed=False)
        (got,) = plain.requests
    assert not [name for name in got.headers if name.startswith("webhook-")]
    assert got.headers["content-type"] == "application/json"


async def test_retries_until_success_with_identical_headers(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.fail_next(2, status=500)
    assert await make_sender(retries=5).send(receiver.url, PAYLOAD, message_id="req-9")
    got = receiver.requests
    assert [r.status for r in got] == [500, 500, 200]
    assert all(r.verified for r in got)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert len({r.headers[name] for r in got}) == 1, name
    assert got[0].headers["webhook-id"] == "req-9"
    assert len({r.body for r in got}) == 1


async def test_every_non_2xx_is_a_failed_attempt(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail_next(1, status=404)
    receiver.fail_next(1, status=302)  # a redirect without Location: not a success
    receiver.fail_next(1, status=503)
    assert not await make_sender(retries=3).send(receiver.url, PAYLOAD)
    assert [r.status for r in receiver.requests] == [404, 302, 503]
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.last_status == 503  # type: ignore[attr-defined]
    assert line.attempts == 3  # type: ignore[attr-defined]


async def test_follows_redirects(make_sender: Callable[..., WebhookSender]) -> None:
    with WebhookReceiver() as hook:
        target = hook.url_for("/final")
        hook.fail_next(0)
        # A 307 keeps the method and body.
        redirecting = _Redirector(target)
        try:
            assert await make_sender(secret=None).send(redirecting.url, PAYLOAD)
        finally:
            redirecting.stop()
        (got,) = hook.requests
    assert got.path == "/final"
    assert got.json() == PAYLOAD


async def test_receiver_down_exact_attempts_one_error_line(
    make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SENDER_LOGGER)
    url = dead_url()
    sender = make_sender(secret=WHSEC_SECRET, retries=4)
    # The event loop stays free while the sender retries: a ticker keeps running meanwhile.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    assert await asyncio.wait_for(sender.send(url, {**PAYLOAD, "password": "hunter2"}), 10) is False
    ticking.cancel()
    assert ticks > 1

    records = [r for r in caplog.records if r.name == SENDER_LOGGER]
    attempts = [r for r in records if r.getMessage() == "webhook attempt failed"]
    assert [r.attempt for r in attempts] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    (error,) = [r for r in records if r.levelno >= logging.ERROR]
    assert error.getMessage() == "webhook delivery failed"
    assert error.attempts == 4  # type: ignore[attr-defined]
    assert error.last_status is None  # type: ignore[attr-defined]
    assert "ConnectError" in error.last_error  # type: ignore[attr-defined]
    assert error.url == url.split("?")[0] + "?<redacted>"  # type: ignore[attr-defined]
    logged = json.dumps([r.__dict__ for r in records], default=str)
    for secret_text in ("s3cr3t", "hunter2", B64_SECRET, "a cat"):
        assert secret_text not in logged


async def test_zero_retries_sends_nothing(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SENDER_LOGGER)
    assert await make_sender(retries=0, retry_window_s=600.0).send(receiver.url, PAYLOAD) is False
    # A later delivery to the same receiver is a barrier: had anything been sent before, it would be there.
    assert await make_sender(retries=1).send(receiver.url, {"barrier": True})
    assert [r.json() for r in receiver.requests] == [{"barrier": True}]
    assert any("retries is 0" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_per_attempt_timeout_against_a_hanging_receiver(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SENDER_LOGGER)
    receiver.delay_next(1, 30.0)
    sender = make_sender(retries=2, timeout_s=0.3)
    started = time.monotonic()
    assert await sender.send(receiver.url, PAYLOAD)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5.0
    assert len(receiver.requests) == 2
    (failed,) = [r for r in caplog.records if r.getMessage() == "webhook attempt failed"]
    assert "Timeout" in failed.error or failed.error == "timeout"  # type: ignore[attr-defined]


async def test_hanging_receiver_every_attempt_times_out(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.delay_next(3, 30.0)
    started = time.monotonic()
    assert not await make_sender(retries=3, timeout_s=0.2).send(receiver.url, PAYLOAD)
    assert time.monotonic() - started < 5.0
    assert len(receiver.requests) == 3


class _UpperBound(random.Random):
    """Jitter that always picks the top of the range, so the exponential part can be measured."""

    def uniform(self, low: float, high: float) -> float:
        return high


async def test_backoff_grows_exponentially(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.fail_next(3)
    sender = make_sender(retries=4, backoff_base_s=0.1, backoff_max_s=10.0, rng=_UpperBound())
    assert await sender.send(receiver.url, PAYLOAD)
    at = [r.at for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(gaps) == 3
    # Expected 0.1, 0.2, 0.4 s; generous bounds for a loaded machine.
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.19
    assert gaps[2] >= 0.39
    assert gaps[2] > gaps[0] * 2


def test_backoff_delay_is_full_jitter_within_a_capped_exponential() -> None:
    rng = random.Random(15)  # seeded: the spread below is checked on the same draws every run
    for failed in range(1, 8):
        ceiling = min(1.0, 0.1 * 2 ** (failed - 1))
        samples = [backoff_delay(failed, 0.1, 1.0, rng=rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        # Full jitter: the whole range is used, not just its top.
        assert min(samples) < ceiling * 0.2
        assert max(samples) > ceiling * 0.8


async def test_no_sleep_after_the_last_attempt(make_sender: Callable[..., WebhookSender]) -> None:
    with WebhookReceiver() as hook:
        hook.fail_next(1)
        started = time.monotonic()
        # One attempt: a backoff of up to 30 s would show if it were slept after the last failure.
        assert not await make_sender(secret=None, retries=1, backoff_base_s=30, backoff_max_s=30).send(hook.url, {})
        assert time.monotonic() - started < 5.0


async def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch, make_sender: Callable[..., WebhookSender]) -> None:
    with WebhookReceiver() as proxy, WebhookReceiver() as hook:
        monkeypatch.setenv("HTTP_PROXY", proxy.url_for(""))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        assert await make_sender(secret=None, retries=1).send(hook.url, PAYLOAD)
        assert len(hook.requests) == 1
        assert proxy.requests == []


async def test_unserializable_payload_is_logged_not_raised(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    assert await make_sender().send(receiver.url, {"x": object()}) is False
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    assert receiver.requests == []


async def test_invalid_url_fails_without_raising(make_sender: Callable[..., WebhookSender]) -> None:
    assert await make_sender(retries=2).send("not a url", PAYLOAD) is False
    assert await make_sender(retries=1).send("ftp://example.invalid/x", PAYLOAD) is False


# --- sender: the retry window -------------------------------------------------------------------------------------


class _OnAttemptFailed(logging.Handler):
    """Calls `action` when the sender logs its `attempt`-th failed attempt: in the event loop, before any backoff."""

    def __init__(self, attempt: int, action: Callable[[], None]) -> None:
        super().__init__(logging.DEBUG)
        self._attempt = attempt
        self._action = action

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "webhook attempt failed" and getattr(record, "attempt", None) == self._attempt:
            self._action()


@pytest.fixture
def on_attempt_failed(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[int, Callable[[], None]], None]]:
    """`on_attempt_failed(n, action)`: `action()` when the n-th attempt has failed (the sender's debug line)."""
    caplog.set_level(logging.DEBUG, logger=SENDER_LOGGER)  # the logger's level; a test sets its own capture level
    handlers: list[logging.Handler] = []

    def install(attempt: int, action: Callable[[], None]) -> None:
        handlers.append(_OnAttemptFailed(attempt, action))
        logging.getLogger(SENDER_LOGGER).addHandler(handlers[-1])

    yield install
    for handler in handlers:
        logging.getLogger(SENDER_LOGGER).removeHandler(handler)


async def test_retries_go_on_past_the_minimum_until_a_receiver_that_was_down_comes_back(
    make_sender: Callable[..., WebhookSender],
    caplog: pytest.LogCaptureFixture,
    on_attempt_failed: Callable[[int, Callable[[], None]], None],
) -> None:
    """The production schedule (10 minutes, backoff up to 30 s) compressed by configuration: 2 attempts at least,
    then more while a 120 s window lasts; the receiver is down (connections refused) for the first 6."""
    caplog.set_level(logging.DEBUG, logger=SENDER_LOGGER)
    down = WebhookReceiver().start()
    down.stop()
    back: list[WebhookReceiver] = []
    on_attempt_failed(6, lambda: back.append(WebhookReceiver(secret=WHSEC_SECRET, port=down.port).start()))
    sender = make_sender(retries=2, retry_window_s=120.0)
    try:
        assert await sender.send(down.url, PAYLOAD, message_id="late")
        (receiver,) = back
        (got,) = receiver.requests
    finally:
        for receiver in back:
            receiver.stop()
    assert got.verified and got.headers["webhook-id"] == "late" and got.json() == PAYLOAD
    failed = [r for r in caplog.records if r.getMessage() == "webhook attempt failed"]
    assert [r.attempt for r in failed] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    assert all("ConnectError" in r.error for r in failed)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_receiver_that_never_comes_back_is_tried_for_the_whole_window_then_one_error_line(
    make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SENDER_LOGGER)
    url = dead_url()
    sender = make_sender(retries=2, retry_window_s=0.5)
    started = time.monotonic()
    assert await sender.send(url, PAYLOAD) is False
    # The schedule's end, not a speed: no attempt may be the last one before the window is over.
    assert time.monotonic() - started >= 0.5
    records = [r for r in caplog.records if r.name == SENDER_LOGGER]
    failed = [r for r in records if r.getMessage() == "webhook attempt failed"]
    (error,) = [r for r in records if r.levelno >= logging.ERROR]
    assert error.getMessage() == "webhook delivery failed"
    assert error.attempts == len(failed) > 2  # type: ignore[attr-defined]
    assert "ConnectError" in error.last_error  # type: ignore[attr-defined]
    assert not hasattr(error, "stopped_by_shutdown")


async def test_a_failed_attempt_after_the_minimum_ends_the_schedule_once_the_window_is_over(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    """Without a window (or once it is over) the minimum is also the maximum, as PROMPT_WEBHOOK_RETRIES was."""
    receiver.fail_next(10, status=503)
    assert not await make_sender(retries=3, retry_window_s=0.0).send(receiver.url, PAYLOAD)
    assert [r.status for r in receiver.requests] == [503, 503, 503]


# --- sender: shutdown ---------------------------------------------------------------------------------------------


async def test_stop_retrying_ends_a_pending_backoff_with_one_last_attempt(
    receiver: WebhookReceiver,
    make_sender: Callable[..., WebhookSender],
    on_attempt_failed: Callable[[int, Callable[[], None]], None],
) -> None:
    receiver.fail_next(1)
    sender = make_sender(retries=2, retry_window_s=600.0, backoff_base_s=60.0, backoff_max_s=60.0)
    in_backoff = asyncio.Event()
    on_attempt_failed(1, in_backoff.set)  # logged just before the backoff: the sender waits once this task runs
    task = asyncio.create_task(sender.send(receiver.url, PAYLOAD))
    await asyncio.wait_for(in_backoff.wait(), 30)
    sender.stop_retrying()
    assert await asyncio.wait_for(task, 30) is True
    assert [r.status for r in receiver.requests] == [500, 200]


async def test_a_schedule_cut_short_by_shutdown_is_logged_not_lost(
    receiver: WebhookReceiver,
    make_sender: Callable[..., WebhookSender],
    caplog: pytest.LogCaptureFixture,
    on_attempt_failed: Callable[[int, Callable[[], None]], None],
) -> None:
    receiver.fail_next(10, status=503)
    sender = make_sender(retries=1, retry_window_s=600.0, backoff_base_s=60.0, backoff_max_s=60.0)
    in_backoff = asyncio.Event()
    on_attempt_failed(1, in_backoff.set)
    task = asyncio.create_task(sender.send(receiver.url, PAYLOAD))
    # Shutdown begins while the first retry waits out its backoff (a minute, in a 10-minute window).
    await asyncio.wait_for(in_backoff.wait(), 30)
    sender.stop_retrying()
    assert await asyncio.wait_for(task, 30) is False
    assert [r.status for r in receiver.requests] == [503, 503]
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage() == "webhook delivery failed"
    assert (error.attempts, error.last_status, error.stopped_by_shutdown) == (2, 503, True)  # type: ignore[attr-defined]


async def test_a_send_that_starts_during_shutdown_gets_one_attempt(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.fail_next(1)
    sender = make_sender(retries=3, retry_window_s=600.0)
    sender.stop_retrying()
    assert await sender.send(receiver.url, PAYLOAD) is False
    assert await sender.send(receiver.url, PAYLOAD) is True
    assert [r.status for r in receiver.requests] == [500, 200]


async def test_a_cancelled_delivery_is_logged_with_its_attempts(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    receiver.delay_next(1, 30.0)
    sender = make_sender(retries=1, timeout_s=30.0)
    task = asyncio.create_task(sender.send(receiver.url, PAYLOAD))
    await receiver.async_wait_for(count(1))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage() == "webhook delivery cancelled"
    assert error.attempts == 1  # type: ignore[attr-defined]


async def test_a_closed_sender_sends_nothing(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    sender = make_sender()
    assert await sender.send(receiver.url, PAYLOAD)
    await sender.aclose()
    assert await sender.send(receiver.url, PAYLOAD) is False
    assert len(receiver.requests) == 1
    assert any(r.getMessage() == "webhook not sent: sender is closed" for r in caplog.records)


# --- payloads -----------------------------------------------------------------------------------------------------

ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_utc_timestamp_format() -> None:
    stamp = utc_timestamp()
    assert ISO_MS_Z.fullmatch(stamp)


def test_prompt_complete_shape() -> None:
    body = {
        "id": "req-1",
        "prompt": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "req-1_x"}}},
        "images": ["aGVsbG8="],
        "filenames": ["req-1_x_00001_.png"],
        "stats": {"comfy_execution": 12},
        "webhook_v2": "https://example.com/hook",
        "convert_output": {"format": "webp"},
        "credentials": [{"url_pattern": "**", "auth": {"type": "bearer", "token": "t0k3n"}}],
    }
    payload = prompt_complete(body)
    assert list(payload)[:2] == ["type", "timestamp"]
    assert payload["type"] == "prompt.complete"
    assert ISO_MS_Z.fullmatch(payload["timestamp"])
    assert {k: v for k, v in payload.items() if k not in ("type", "timestamp")} == {
        k: v for k, v in body.items() if k != "credentials"
    }
    assert "t0k3n" not in json.dumps(payload)
    assert "credentials" in body  # the caller's body is not modified


def test_prompt_complete_cannot_override_type() -> None:
    assert prompt_complete({"id": "x", "type": "other", "timestamp": "then"})["type"] == "prompt.complete"


def test_prompt_failed_shape() -> None:
    payload = prompt_failed(
        "req-2",
        {"1": {}},
        "Node 5 failed",
        node_id="5",
        node_type="KSampler",
        exception_type="RuntimeError",
        exception_message="boom",
    )
    assert list(payload) == [
        "type",
        "timestamp",
        "id",
        "prompt",
        "error",
        "node_id",
        "node_type",
        "exception_type",
        "exception_message",
    ]
    assert payload["type"] == "prompt.failed"
    assert ISO_MS_Z.fullmatch(payload["timestamp"])
    assert (payload["id"], payload["prompt"], payload["error"]) == ("req-2", {"1": {}}, "Node 5 failed")
    assert payload["node_type"] == "KSampler"


def test_prompt_failed_leaves_out_unknown_details() -> None:
    payload = prompt_failed("req-3", {}, "Prompt interrupted", node_id=None, node_type=None)
    assert set(payload) == {"type", "timestamp", "id", "prompt", "error"}


def test_legacy_payloads() -> None:
    assert output_complete("r", "aGk=", "r_1.png", {"1": {}}, {"x": 1}) == {
        "event": "output.complete",
        "image": "aGk=",
        "id": "r",
        "filename": "r_1.png",
        "prompt": {"1": {}},
        "stats": {"x": 1},
    }
    assert legacy_failed("r", {"1": {}}, "bad") == {
        "event": "prompt.failed",
        "id": "r",
        "prompt": {"1": {}},
        "error": "bad",
    }


def test_redact_removes_credentials_at_any_depth() -> None:
    body = {
        "credentials": [{"auth": {"token": "a"}}],
        "keep": 1,
        "nested": {
            "credentials": "b",
            "list": [{"credentials": {"c": 1}, "ok": True}, "s", 3],
            "t": ({"credentials": 1},),
        },
    }
    original = json.dumps(body, default=list)
    cleaned = redact(body)
    assert cleaned == {"keep": 1, "nested": {"list": [{"ok": True}, "s", 3], "t": [{}]}}
    assert json.dumps(body, default=list) == original
    assert redact("text") == "text"


def test_prompt_failed_redacts_details_and_prompt() -> None:
    payload = prompt_failed("r", {"1": {"inputs": {"credentials": "x"}}}, "e", extra={"credentials": "y"})
    assert "credentials" not in json.dumps(payload)


# --- helpers ------------------------------------------------------------------------------------------------------


class _Redirector:
    """Answers every POST with 307 to `target` (a receiver cannot script Location headers)."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(307)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/start"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


async def test_receiver_rejects_a_wrong_signature(
    receiver: WebhookReceiver, make_sender: Callable[..., WebhookSender]
) -> None:
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    assert not await make_sender(secret=other, retries=1).send(receiver.url, PAYLOAD)
    (got,) = receiver.requests
    assert (got.verified, got.status) == (False, 400)
