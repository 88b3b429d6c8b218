"""Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`) for outgoing webhooks.

The key follows Standard Webhooks semantics, exactly what svix does (decisions §12): `WEBHOOK_SECRET` may carry a
`whsec_` prefix, and the rest is base64-decoded leniently. Signing goes through svix itself, so whatever a svix or
standardwebhooks verifier accepts is, by construction, what we produce.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
from datetime import UTC, datetime

from standardwebhooks.webhooks import EmptyWebhookSecretError
from svix.webhooks import Webhook

logger = logging.getLogger(__name__)

WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"

_SECRET_PREFIX = "whsec_"
# What base64.b64decode keeps; anything else in the secret is silently dropped by svix's lenient decoder.
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_INVALID = "WEBHOOK_SECRET is not a valid Standard Webhooks secret (optional whsec_ prefix, then base64)"


class InvalidWebhookSecret(ValueError):
    """WEBHOOK_SECRET cannot be turned into a key. The message never contains the secret."""


class Signer:
    """Builds the Standard Webhooks headers for one message; unsigned (no `webhook-signature`) without a secret.

    `Signer(None)` (or an empty secret) is the "WEBHOOK_SECRET unset" case: the caller logs the startup warning.
    A secret that does not decode to a key raises InvalidWebhookSecret, so startup can stop with a clear message.
    """

    def __init__(self, secret: str | None) -> None:
        self._webhook: Webhook | None = None
        if not secret:
            return
        # Errors below name the reason only: the secret must never reach a log line or an error message.
        if not secret.isascii():
            # b64decode rejects it anyway; checked first so the reason is clear.
            raise InvalidWebhookSecret(f"{_INVALID}: it contains non-ASCII characters")
        try:
            self._webhook = Webhook(secret)
        except EmptyWebhookSecretError:
            raise InvalidWebhookSecret(f"{_INVALID}: it decodes to an empty key") from None
        except (binascii.Error, ValueError):
            raise InvalidWebhookSecret(f"{_INVALID}: its base64 has an impossible length") from None
        if _NOT_BASE64.search(secret.removeprefix(_SECRET_PREFIX)):
            # Node's Buffer.from(s, "base64") (the reference server) reads '-'/'_' as URL-safe base64, svix drops
            # them: such a secret gives a different key than the reference did, so say so once.
            logger.warning(
                "WEBHOOK_SECRET contains characters outside standard base64; they are ignored when deriving the key"
            )

    @property
    def signed(self) -> bool:
        return self._webhook is not None

    def headers(self, message_id: str, body: str, *, timestamp: int | None = None) -> dict[str, str]:
        """The webhook headers for `body`, which must be the exact string sent on the wire.

        `timestamp` is unix seconds (default: now). The same id/timestamp/body always give the same signature,
        so retries of one message carry identical headers.
        """
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {WEBHOOK_ID: message_id, WEBHOOK_TIMESTAMP: str(ts)}
        if self._webhook is not None:
            # svix wants a str body (bytes would sign the text "b'...'") and a UTC datetime (an aware non-UTC one is
            # relabelled, not converted); it floors to whole seconds, and `ts` is already whole.
            when = datetime.fromtimestamp(ts, tz=UTC)
            headers[WEBHOOK_SIGNATURE] = self._webhook.sign(message_id, when, body)
        return headers
