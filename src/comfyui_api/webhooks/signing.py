"""Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`) for outgoing webhooks.

The key follows Standard Webhooks semantics, exactly what svix does (decisions §12): `WEBHOOK_SECRET` may carry a
`whsec_` prefix, and the rest is base64-decoded leniently (the standardwebhooks library's own decoding). The HMAC is
updated chunk by chunk, so a body streamed from disk is signed without ever being held whole; tests check the result
against svix's `sign` and `verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable

from ..errors import InvalidWebhookSecret

logger = logging.getLogger(__name__)

WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"

_SECRET_PREFIX = "whsec_"
# What base64.b64decode keeps; anything else in the secret is silently dropped by svix's lenient decoder.
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_INVALID = "WEBHOOK_SECRET is not a valid Standard Webhooks secret (optional whsec_ prefix, then base64)"


class Signer:
    """Builds the Standard Webhooks headers for one message; unsigned (no `webhook-signature`) without a secret.

    `Signer(None)` (or an empty secret) is the "WEBHOOK_SECRET unset" case: the caller logs the startup warning.
    A secret that does not decode to a key raises InvalidWebhookSecret, so startup can stop with a clear message.
    """

    def __init__(self, secret: str | None) -> None:
        self._key: bytes | None = None
        if not secret:
            return
        # Errors below name the reason only: the secret must never reach a log line or an error message.
        if not secret.isascii():
            # b64decode rejects it anyway; checked first so the reason is clear.
            raise InvalidWebhookSecret(f"{_INVALID}: it contains non-ASCII characters")
        try:
            # standardwebhooks' decoding: padding added for unpadded base64 (extra padding is ignored).
            key = base64.b64decode(secret.removeprefix(_SECRET_PREFIX) + "==")
        except (binascii.Error, ValueError):
            raise InvalidWebhookSecret(f"{_INVALID}: its base64 has an impossible length") from None
        if not key:
            raise InvalidWebhookSecret(f"{_INVALID}: it decodes to an empty key")
        self._key = key
        if _NOT_BASE64.search(secret.removeprefix(_SECRET_PREFIX)):
            # Node's Buffer.from(s, "base64") (the reference server) reads '-'/'_' as URL-safe base64, svix drops
            # them: such a secret gives a different key than the reference did, so say so once.
            logger.warning(
                "WEBHOOK_SECRET contains characters outside standard base64; they are ignored when deriving the key"
            )

    def headers(self, message_id: str, body: Iterable[bytes], *, timestamp: int | None = None) -> dict[str, str]:
        """The webhook headers for the body whose bytes, exactly as sent on the wire, `body` yields in order.

        `body` is read only when there is a key. `timestamp` is unix seconds (default: now). The same
        id/timestamp/body always give the same signature, so retries of one message carry identical headers.
        """
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {WEBHOOK_ID: message_id, WEBHOOK_TIMESTAMP: str(ts)}
        if self._key is not None:
            mac = hmac.new(self._key, f"{message_id}.{ts}.".encode(), hashlib.sha256)
            for chunk in body:
                mac.update(chunk)
            headers[WEBHOOK_SIGNATURE] = "v1," + base64.b64encode(mac.digest()).decode("ascii")
        return headers
