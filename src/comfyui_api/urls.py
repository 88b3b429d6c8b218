"""URL and file-name helpers with no I/O: origins, redaction for logs and messages, safe leaf names.

Light on imports on purpose: settings validation uses it before ComfyUI is launched.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import unicodedata
from urllib.parse import SplitResult, unquote, urlsplit

from .errors import InvalidName, InvalidUrl

# RFC 1035: a host name is at most 253 characters; a longer one is an attack or a mistake, never a host.
MAX_HOST_LENGTH = 253
MAX_URL_LENGTH = 16 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Shown instead of a query string: signed URLs (S3, Azure SAS, GCS) carry their credentials there.
_REDACTED_QUERY = "?<redacted>"


def split_url(url: str) -> SplitResult:
    """`urlsplit`, plus the checks it skips: no control characters, a sane length and host, a valid port."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise InvalidUrl("the URL contains a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"the URL cannot be parsed ({exc})") from None
    # A space in a path or query is sent percent-encoded (S3 keys and blob names may have one); never in a host.
    if " " in parts.netloc:
        raise InvalidUrl("the URL's host contains a space")
    host = parts.hostname or ""
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidUrl(f"the URL's host is longer than {MAX_HOST_LENGTH} characters")
    if port == 0:
        raise InvalidUrl("the URL's port is 0")
    return parts


def origin_of(parts: SplitResult) -> str:
    """`scheme://host[:port]`, lower-cased, default port left out, trailing dots dropped, IPv6 in brackets."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".").lower()
    if ":" in host:
        host = f"[{show_address(host.split('%', 1)[0])}]"
    port = parts.port
    suffix = f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else ""
    return f"{scheme}://{host}{suffix}"


def url_port(parts: SplitResult) -> int:
    """The port a connection to the URL goes to: its own, else its scheme's default (http's for anything else)."""
    return parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 80)


def show_address(address: str) -> str:
    """An IP address in its usual spelling: compressed, IPv4-mapped IPv6 with its IPv4 part dotted."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return ip.compressed


def url_origin(url: str) -> str:
    return origin_of(split_url(url))


def parse_origins(value: str) -> tuple[str, ...]:
    """A comma-separated list of exact origins (`scheme://host[:port]`), canonical; ValueError on a bad entry."""
    origins = []
    for entry in (item.strip() for item in value.split(",")):
        if not entry:
            continue
        try:
            parts = split_url(entry)
        except InvalidUrl as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{entry!r} is not an http(s) origin (scheme://host[:port])")
        if "@" in parts.netloc or "*" in parts.netloc:
            raise ValueError(f"{entry!r}: an origin has no credentials and no wildcards")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{entry!r}: an origin has no path, query or fragment")
        origins.append(origin_of(parts))
    return tuple(dict.fromkeys(origins))


def redact_url(url: str) -> str:
    """The URL as it may appear in logs, events, messages and webhooks: no user-info, no query, no fragment.

    The one redaction policy of the server. A query string is replaced as a whole, since a signed URL's
    credentials may sit under any parameter name.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not parts.netloc:
        # Not a URL with an authority: never echo it whole, it may be a secret passed by mistake.
        return url.split("?", 1)[0].split("#", 1)[0][:200]
    host = parts.netloc.rpartition("@")[2]
    query = _REDACTED_QUERY if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{query}"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_urls_in(text: str) -> str:
    """`text` (an SDK's or HTTP client's error message) with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def safe_leaf_name(name: str) -> str:
    """A single file name fit for a folder: NFKC-normalised, no separators, control characters or dot names,
    at most 255 bytes in UTF-8. Raises InvalidName otherwise."""
    normalised = unicodedata.normalize("NFKC", name)
    if not normalised or normalised in (".", ".."):
        raise InvalidName("must be a file name, not empty, '.' or '..'")
    if "/" in normalised or "\\" in normalised:
        raise InvalidName("must be a plain file name, without '/' or '\\'")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in normalised):
        raise InvalidName("must not contain control characters")
    if ".." in normalised:
        raise InvalidName("must not contain '..'")
    if len(normalised.encode()) > 255:
        raise InvalidName("must be at most 255 bytes long")
    return normalised


def url_leaf_name(url: str) -> str | None:
    """The safe file name a URL's path ends with, or None when it has none."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    try:
        return safe_leaf_name(posixpath.basename(unquote(path)))
    except InvalidName:
        return None
