"""The warmup prompt: loaded once at startup (file or URL), run after every ComfyUI (re)start."""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import ValidationError

from .config import Settings
from .errors import ConfigError
from .pipeline.request import PromptRequest
from .storage.net import describe_http_error


def parse_warmup(text: str, source: str) -> dict[str, Any]:
    """Validate a warmup prompt (an API-format graph); raise ConfigError naming its source."""
    try:
        graph = json.loads(text)
        PromptRequest(prompt=graph)
    except ValueError as exc:  # JSON or pydantic validation
        reason = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise ConfigError(f"{source} is not a valid API-format prompt: {reason}") from None
    return graph


async def load_warmup(settings: Settings) -> dict[str, Any] | None:
    """The warmup graph from WARMUP_PROMPT_FILE (which wins) or WARMUP_PROMPT_URL, or None."""
    if settings.warmup_prompt_file is not None:
        return parse_warmup(settings.warmup_prompt_file.read_text(), "WARMUP_PROMPT_FILE")
    if settings.warmup_prompt_url is None:
        return None
    headers = dict([settings.http_auth_header]) if settings.http_auth_header else {}
    try:
        async with httpx.AsyncClient(follow_redirects=True, timeout=60) as http:
            response = await http.get(settings.warmup_prompt_url, headers=headers)
    except httpx.HTTPError as exc:
        raise ConfigError(f"WARMUP_PROMPT_URL could not be fetched: {describe_http_error(exc)}") from None
    if not response.is_success:
        raise ConfigError(f"WARMUP_PROMPT_URL answered {response.status_code}")
    return parse_warmup(response.text, "WARMUP_PROMPT_URL")
