"""The secrets a job message carries (per-request `credentials`, v2 `extra_data`), sealed with the fleet's key.

Fernet (the `cryptography` library): AES-128-CBC with an HMAC-SHA256 over the whole token, so a message altered in
the broker, or sealed with another key, is refused rather than misread. FLEET_SECRET_KEY lists one key or several,
comma-separated: the first seals, any of them opens, so a key is rotated by prepending the new one on every replica,
then dropping the old one once the queues hold no message sealed with it.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import ConfigError, SealError


class Sealer:
    def __init__(self, keys: str) -> None:
        """`keys`: FLEET_SECRET_KEY's value; ConfigError when it holds no valid Fernet key."""
        parts = [key.strip() for key in keys.split(",") if key.strip()]
        if not parts:
            raise ConfigError("FLEET_SECRET_KEY is required in fleet mode (a Fernet key; see the README)")
        fernets = []
        for index, key in enumerate(parts):
            try:
                fernets.append(Fernet(key))
            except ValueError:
                raise ConfigError(
                    f"FLEET_SECRET_KEY: key {index + 1} is not a Fernet key (32 bytes, url-safe base64; "
                    'make one with `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())"`)'
                ) from None
        self._fernet = MultiFernet(fernets)

    def seal(self, secrets: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(secrets, separators=(",", ":")).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            opened = json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError):
            raise SealError(
                "the job's sealed secrets do not open with FLEET_SECRET_KEY (another key, or altered)"
            ) from None
        if not isinstance(opened, dict):
            raise SealError("the job's sealed secrets are not an object")
        return opened
