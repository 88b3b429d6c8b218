"""Strip server paths and tracebacks from ComfyUI's error payloads before they reach a client."""

from __future__ import annotations

import re
from typing import Any

# An absolute POSIX path (two or more components); only its last component is kept.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"<>:]+/)+([^\s/'\"<>:]+)")


def scrub_paths(text: str) -> str:
    return _ABSOLUTE_PATH.sub(r"\1", text)


def scrub(value: Any) -> Any:
    """A copy of a JSON value with tracebacks dropped and absolute paths reduced to file names."""
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items() if key != "traceback"}
    return value
