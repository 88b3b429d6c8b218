"""The one safe outgoing-HTTP layer for URLs that come from requests (inputs, models, uploads, webhooks).

Rules, in the order they apply:
- only `http` and `https` (`s3://` is the S3 provider's, whose endpoint is checked separately);
- the host is resolved once per connection and every answer must be a public unicast address, unless its origin
  is trusted (HTTP_TRUSTED_ORIGINS, or an operator-configured URL) or the check is switched off;
- the connection goes to the address that was checked (the socket is opened to that IP, while TLS and `Host`
  keep the name), so a second DNS answer cannot swap it; through HTTP(S)_PROXY the proxy is asked to CONNECT to
  that same address;
- redirects are followed here, not by httpx: every hop is checked again, `https` → `http` is refused, at most
  20 hops, and credentials go only to the origin they were given for.

The check lives in an httpcore network backend, under httpx's connection pool, so it runs for every new
connection whatever asks for it. httpx offers no public way to give its transport a network backend, so the pool
of httpx's own transport is replaced through its private `_pool`. A transport of our own around an httpcore pool
would use public interfaces only, but would copy httpx's request and response conversion and its mapping of
httpcore's exceptions to httpx's, which every caller here catches; the one private attribute is the smaller
dependency. It is guarded three ways: httpx is pinned, building a client fails if `_pool` is gone (never a client
without the guard), and tests/unit/test_net.py checks that requests really go through the replaced pool.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from ..errors import AddressRefused, UnsafeUrl
from ..urls import origin_of, redact_url, redact_urls_in, show_address, split_url, url_origin, url_port
from .auth import Credentials

# (host, port) → the addresses it resolves to. Injected by tests; the default asks the system resolver.
Resolver = Callable[[str, int], list[str]]
# Called with the (address, port) a connection is about to be opened to. Tests inject one that fails the test.
ConnectHook = Callable[[str, int], None]

MAX_REDIRECTS = 20
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_SCHEMES = ("http", "https")

_V4_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("169.254.0.0/16", "link-local"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("224.0.0.0/4", "multicast"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("255.255.255.255/32", "broadcast"),
)
_V6_RANGES: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique-local"),
    ("ff00::/8", "multicast"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
)
_NAMED_RANGES = tuple((ipaddress.ip_network(network), name) for network, name in (*_V4_RANGES, *_V6_RANGES))
# IPv6 forms that carry an IPv4 address in their low 32 bits (RFC 6052 NAT64, well-known and local-use prefixes).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def address_problem(address: str) -> str | None:
    """Why a connection to `address` is refused ("loopback", "private", …), or None for a public unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and any(ip in network for network in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(str(embedded))
            return f"IPv4-embedded {problem}" if problem else None
    for network, name in _NAMED_RANGES:
        if ip.version == network.version and ip in network:
            return name
    return None if ip.is_global else "reserved"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclasses.dataclass(frozen=True)
class Proxies:
    """HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY, read once (the standard library's reading of them)."""

    by_scheme: dict[str, httpx.URL]
    environ: dict[str, str]

    @classmethod
    def from_environment(cls) -> Proxies:
        environ = urllib.request.getproxies_environment()
        by_scheme = {}
        for scheme in _SCHEMES:
            value = environ.get(scheme) or environ.get("all")
            if not value:
                continue
            url = httpx.URL(value if "://" in value else f"http://{value}")
            if url.scheme not in _SCHEMES or not url.host:
                variable = f"{scheme.upper()}_PROXY" if environ.get(scheme) else "ALL_PROXY"
                raise ValueError(f"{variable}: expected an http(s) proxy URL, got {redact_url(value)!r}")
            by_scheme[scheme] = url
        return cls(by_scheme, environ)

    def for_target(self, scheme: str, host: str) -> httpx.URL | None:
        proxy = self.by_scheme.get(scheme)
        if proxy is None or urllib.request.proxy_bypass_environment(host, self.environ):
            return None
        return proxy


class UrlGuard:
    """The address policy for request-supplied URLs, and the HTTP clients that enforce it on every connection."""

    def __init__(
        self,
        *,
        block_private: bool = True,
        trusted_origins: Iterable[str] = (),
        auth_origins: Iterable[str] = (),
        resolver: Resolver = system_resolver,
        connect_hook: ConnectHook | None = None,
        proxies: Proxies | None = None,
        trust_all: bool = False,
    ) -> None:
        self.block_private = block_private
        self.trusted_origins = frozenset(trusted_origins)
        self.auth_origins = frozenset(auth_origins)
        self._resolver = resolver
        self._connect_hook = connect_hook
        self.proxies = proxies if proxies is not None else Proxies.from_environment()
        # Operator-configured URLs: no address check, and HTTP_AUTH_HEADER_* may go to them.
        self._trust_all = trust_all

    def for_operator(self) -> UrlGuard:
        """The same clients' rules for URLs the operator configured (manifest models): trusted, redirects still
        re-checked for scheme and credentials."""
        return UrlGuard(
            block_private=False,
            trusted_origins=self.trusted_origins,
            auth_origins=self.auth_origins,
            resolver=self._resolver,
            connect_hook=self._connect_hook,
            proxies=self.proxies,
            trust_all=True,
        )

    # policy ------------------------------------------------------------------------------------------
    def checks(self, origin: str) -> bool:
        """Whether connections to `origin` go through the address check."""
        return self.block_private and not self._trust_all and origin not in self.trusted_origins

    def may_send_env_auth(self, url: str) -> bool:
        """HTTP_AUTH_HEADER_* goes only to HTTP_AUTH_ALLOWED_ORIGINS (and to operator-configured URLs)."""
        if self._trust_all:
            return True
        try:
            return url_origin(url) in self.auth_origins
        except ValueError:  # InvalidUrl among them
            return False

    @staticmethod
    def parse(url: str, *, field: str = "URL") -> tuple[SplitResult, str]:
        """The URL's parts and origin after the syntax and scheme checks; UnsafeUrl names what is wrong."""
        try:
            parts = split_url(url)
            if parts.scheme.lower() not in _SCHEMES:
                raise UnsafeUrl(
                    f"{redact_url(url)}: only http and https URLs are allowed for {field}, not "
                    f"{parts.scheme or 'a URL without a scheme'}{':' if parts.scheme else ''}"
                )
            if not parts.hostname:
                raise UnsafeUrl(f"{redact_url(url)}: the URL has no host")
            return parts, origin_of(parts)
        except ValueError as exc:  # InvalidUrl, or an IPv6 host that ipaddress rejects
            raise UnsafeUrl(f"{redact_url(url)} is not a valid URL: {exc}") from None

    async def check(self, url: str, *, field: str = "URL") -> str | None:
        """Refuse `url` now (for a clear 400 before any work starts); the checked address to connect to, or None
        when the origin is not checked. Connections made here are checked again when opened."""
        parts, origin = self.parse(url, field=field)
        if not self.checks(origin):
            return None
        host = (parts.hostname or "").rstrip(".")
        try:
            addresses = self._literal(host) or await asyncio.to_thread(self._resolve, host, url_port(parts))
            self._check_addresses(origin, addresses)
        except AddressRefused as exc:
            raise UnsafeUrl(f"{redact_url(url)} {exc.reason()}") from None
        except OSError as exc:
            raise UnsafeUrl(f"{redact_url(url)}: cannot resolve {host}: {exc}") from None
        return addresses[0]

    def pin(self, scheme: str, host: str, port: int) -> str:
        """The address to connect to for (scheme, host, port): resolved once, every answer checked."""
        origin = origin_of(split_url(f"{scheme}://{_authority(host, port)}"))
        try:
            addresses = self._literal(host) or self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if self.checks(origin):
            self._check_addresses(origin, addresses)
        return addresses[0]

    def connecting(self, address: str, port: int) -> None:
        if self._connect_hook is not None:
            self._connect_hook(address, port)

    @staticmethod
    def _literal(host: str) -> list[str]:
        try:
            return [show_address(host.strip("[]"))]
        except ValueError:
            return []

    def _resolve(self, host: str, port: int) -> list[str]:
        addresses = self._resolver(host, port)
        if not addresses:
            raise OSError(f"no address for {host}")
        return addresses

    @staticmethod
    def _check_addresses(origin: str, addresses: list[str]) -> None:
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:
                raise AddressRefused(origin, address, problem)

    # clients -----------------------------------------------------------------------------------------
    def sync_client(self, timeout: httpx.Timeout) -> httpx.Client:
        mounts = {f"{scheme}://": _transport(httpx.HTTPTransport(trust_env=False), self, scheme) for scheme in _SCHEMES}
        return httpx.Client(mounts=mounts, trust_env=False, follow_redirects=False, timeout=timeout)

    def async_client(self, timeout: httpx.Timeout) -> httpx.AsyncClient:
        mounts = {
            f"{scheme}://": _transport(httpx.AsyncHTTPTransport(trust_env=False), self, scheme) for scheme in _SCHEMES
        }
        return httpx.AsyncClient(mounts=mounts, trust_env=False, follow_redirects=False, timeout=timeout)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _transport(transport: Any, guard: UrlGuard, scheme: str) -> Any:
    ssl_context = httpx.create_ssl_context()
    # httpx's default limits.
    options: dict[str, Any] = {
        "ssl_context": ssl_context,
        "max_connections": 100,
        "max_keepalive_connections": 20,
        "keepalive_expiry": 5.0,
    }
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool | httpcore.AsyncConnectionPool):
        raise RuntimeError(
            f"httpx {httpx.__version__} no longer keeps a transport's connection pool in `_pool`: storage/net.py "
            "cannot put the URL guard under it"
        )
    if isinstance(transport, httpx.AsyncHTTPTransport):
        backend: Any = _GuardedAsyncBackend(guard, scheme, ssl_context)
        transport._pool = httpcore.AsyncConnectionPool(**options, network_backend=backend)
    else:
        transport._pool = httpcore.ConnectionPool(
            **options, network_backend=_GuardedBackend(guard, scheme, ssl_context)
        )
    return transport


# The proxy tunnel: CONNECT to the checked address, so the proxy never resolves the name itself.
def _connect_request(address: str, port: int, proxy: httpx.URL) -> bytes:
    authority = _authority(address, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.username:
        token = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _connect_answered(head: bytes) -> bool:
    """True once the proxy's answer head is complete; raises ProxyError unless it is 2xx."""
    if b"\r\n\r\n" not in head:
        if len(head) > 64 * 1024:
            raise httpcore.ProxyError("the proxy's answer to CONNECT is too long")
        return False
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].startswith("2"):
        raise httpcore.ProxyError(f"the proxy refused CONNECT: {status_line}")
    return True


def _proxy_port(proxy: httpx.URL) -> int:
    return url_port(urlsplit(str(proxy)))


# httpcore reads a connection 64 KiB at a time; at that size the cost per read caps a plain-HTTP download well below
# curl (about 800 MiB/s on loopback), while 1 MiB reads go past it with 30 % less CPU per GiB. Over TLS a read
# returns one record at most, whatever the size.
_READ_SIZE = 1024 * 1024


class _LargeReads(httpcore.NetworkStream):
    """A connection of the guarded sync clients: each read takes up to _READ_SIZE of what has arrived, whatever
    httpcore asks for (its HTTP/1.1 parser takes any amount), so that only these connections read in large pieces."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, _READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _LargeReads(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, guard: UrlGuard, scheme: str, ssl_context: ssl.SSLContext) -> None:
        self._guard = guard
        self._scheme = scheme
        self._ssl_context = ssl_context
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = self._guard.pin(self._scheme, host, port)
        proxy = self._guard.proxies.for_target(self._scheme, host)
        if proxy is None:
            self._guard.connecting(address, port)
            return _LargeReads(self._inner.connect_tcp(address, port, timeout, local_address, socket_options))
        self._guard.connecting(proxy.host, _proxy_port(proxy))
        stream = self._inner.connect_tcp(proxy.host, _proxy_port(proxy), timeout, local_address, socket_options)
        try:
            if proxy.scheme == "https":
                stream = stream.start_tls(self._ssl_context, server_hostname=proxy.host, timeout=timeout)
            stream.write(_connect_request(address, port, proxy), timeout)
            head = b""
            while not _connect_answered(head):
                chunk = stream.read(4096, timeout)
                if not chunk:
                    raise httpcore.ProxyError("the proxy closed the connection during CONNECT")
                head += chunk
        except BaseException:
            stream.close()
            raise
        return _LargeReads(stream)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outgoing requests")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, guard: UrlGuard, scheme: str, ssl_context: ssl.SSLContext) -> None:
        self._guard = guard
        self._scheme = scheme
        self._ssl_context = ssl_context
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(  # the signature is httpcore's
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if UrlGuard._literal(host):
            address = self._guard.pin(self._scheme, host, port)
        else:  # name resolution blocks
            address = await asyncio.to_thread(self._guard.pin, self._scheme, host, port)
        proxy = self._guard.proxies.for_target(self._scheme, host)
        if proxy is None:
            self._guard.connecting(address, port)
            return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
        self._guard.connecting(proxy.host, _proxy_port(proxy))
        stream = await self._inner.connect_tcp(proxy.host, _proxy_port(proxy), timeout, local_address, socket_options)
        try:
            if proxy.scheme == "https":
                stream = await stream.start_tls(self._ssl_context, server_hostname=proxy.host, timeout=timeout)
            await stream.write(_connect_request(address, port, proxy), timeout)
            head = b""
            while not _connect_answered(head):
                chunk = await stream.read(4096, timeout)
                if not chunk:
                    raise httpcore.ProxyError("the proxy closed the connection during CONNECT")
                head += chunk
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outgoing requests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# redirects ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Hop:
    method: str
    url: str
    headers: dict[str, str]
    with_body: bool


class Redirects:
    """One request's path through redirects: which hop comes next, with which headers, or why it stops."""

    def __init__(
        self,
        method: str,
        url: str,
        *,
        credentials: Credentials | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._url = url
        self._credentials = credentials
        self._headers = headers or {}
        self.hops = 0
        self.current = self._hop(method, url, with_body=True)

    def _hop(self, method: str, url: str, *, with_body: bool) -> Hop:
        headers = {
            name: value
            for name, value in self._headers.items()
            if with_body or name.lower() not in ("content-type", "content-length")
        }
        if self._credentials is not None:
            url, extra = self._credentials.for_url(url)
            headers.update(extra)
        return Hop(method, url, headers, with_body)

    def follow(self, response: httpx.Response) -> Hop | None:
        """The next hop, or None when `response` is the final answer."""
        location = response.headers.get("location")
        if response.status_code not in _REDIRECT_CODES or not location:
            return None
        self.hops += 1
        if self.hops > MAX_REDIRECTS:
            raise UnsafeUrl(f"{redact_url(self._url)}: more than {MAX_REDIRECTS} redirects")
        try:
            target = response.url.join(location).copy_with(username=None, password=None, fragment=None)
        except (httpx.InvalidURL, ValueError) as exc:
            raise UnsafeUrl(f"{redact_url(self._url)} redirects to an invalid URL: {exc}") from None
        next_url = str(target)
        previous = self.current
        UrlGuard.parse(next_url, field="a redirect")
        if previous.url.startswith("https:") and target.scheme == "http":
            raise UnsafeUrl(f"{redact_url(self._url)}: refused a redirect from https to http ({redact_url(next_url)})")
        method = previous.method
        if (response.status_code == 303 and method != "HEAD") or (
            response.status_code in (301, 302) and method == "POST"
        ):
            method = "GET"
        self.current = self._hop(method, next_url, with_body=previous.with_body and method == previous.method)
        return self.current

    def refused(self, exc: AddressRefused) -> UnsafeUrl:
        """The refusal of a connection, named after the URL (and the redirect) that led to it."""
        if self.hops == 0:
            return UnsafeUrl(f"{redact_url(self._url)} {exc.reason()}")
        return UnsafeUrl(f"{redact_url(self._url)} redirects to {redact_url(self.current.url)}, which {exc.reason()}")


# One body per attempt: a file-backed body is reopened for a redirect that repeats the request.
Body = Callable[[], Any] | bytes | None


def _content(body: Body, hop: Hop) -> Any:
    if not hop.with_body or body is None:
        return None
    return body() if callable(body) else body


def send(client: httpx.Client, redirects: Redirects, body: Body = None) -> httpx.Response:
    """Send through every redirect; the final response is streaming (close it)."""
    hop = redirects.current
    while True:
        request = client.build_request(hop.method, hop.url, headers=hop.headers, content=_content(body, hop))
        try:
            response = client.send(request, stream=True)
        except AddressRefused as exc:
            raise redirects.refused(exc) from None
        try:
            next_hop = redirects.follow(response)
        except BaseException:
            response.close()
            raise
        if next_hop is None:
            return response
        response.close()
        hop = next_hop


async def send_async(client: httpx.AsyncClient, redirects: Redirects, body: Body = None) -> httpx.Response:
    """`send` for the async client; the final response is read."""
    hop = redirects.current
    while True:
        request = client.build_request(hop.method, hop.url, headers=hop.headers, content=_content(body, hop))
        try:
            response = await client.send(request)
        except AddressRefused as exc:
            raise redirects.refused(exc) from None
        next_hop = redirects.follow(response)
        if next_hop is None:
            return response
        hop = next_hop


def describe_http_error(exc: BaseException) -> str:
    """`Type: message` for an httpx error, without the URLs it may quote (they may carry a signed query)."""
    text = redact_urls_in(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
