"""Outgoing webhooks: Standard Webhooks signing, retrying delivery, prompt payloads and system events."""
