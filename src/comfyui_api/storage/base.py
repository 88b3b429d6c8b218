"""The one interface every storage provider implements."""

from __future__ import annotations

import mimetypes
import posixpath
import re
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from .auth import DownloadAuth

# An extension as the URL's last path segment spells it; longer "extensions" are really names.
_EXTENSION = re.compile(r"^\.[A-Za-z0-9_-]{1,14}$")

_EXTRA_TYPES = {
    "application/octet-stream": ".bin",
    "application/x-safetensors": ".safetensors",
    "image/jpeg": ".jpg",
    "audio/mpeg": ".mp3",
    "audio/flac": ".flac",
    "video/webm": ".webm",
}


class Provider(Protocol):
    name: str

    def matches(self, url: str) -> bool: ...

    def outgoing_urls(self, url: str, auth: DownloadAuth | None) -> list[str]:
        """The request-named http(s) URLs this provider would connect to for `url` (checked by the URL guard);
        none when it only talks to an endpoint the operator configured."""
        ...

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        """Write the object at `url` to `destination`; return a file extension when the response names one."""
        ...

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        """Raise AccessDenied unless `auth` may read `url` (guards cache hits of private files)."""
        ...

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        """Stream the file at `source` to `url`; raise UploadError."""
        ...


def name_extension(name: str) -> str:
    """The extension of a file name or path (`.safetensors`), or "" when it has none."""
    extension = posixpath.splitext(name)[1]
    return extension.lower() if _EXTENSION.match(extension) else ""


def url_extension(url: str) -> str:
    return name_extension(unquote(urlsplit(url).path))


def extension_for_content_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return _EXTRA_TYPES.get(media_type) or mimetypes.guess_extension(media_type) or ""


def content_type_for(name: str) -> str:
    extension = name_extension(name)
    for media_type, known in _EXTRA_TYPES.items():
        if known == extension and media_type != "application/octet-stream":
            return media_type
    return mimetypes.guess_type(f"x{extension}")[0] or "application/octet-stream"
