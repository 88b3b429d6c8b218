"""A loopback HTTP listener that records every connection and request, for the URL guard's tests.

`Listener()` binds 127.0.0.1 (or `host="::1"`) on a free port. It answers 200 with `body`, or a redirect for the
paths given to `redirect(path, location, status)`. `connections` counts accepted TCP connections (so a test can
prove none was opened); `requests` has (method, path, headers) and `bodies` the body of each request. With
`tls=self_signed_certificate(folder)` it speaks https.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that does not write every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_in_thread(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A loopback HTTP server on a free port, serving in a daemon thread; stop it with `stop_server`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop_server(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listener: Listener, address: tuple[str, int], handler: type, family: int) -> None:
        self.address_family = family
        self.listener = listener
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, object]:
        accepted = super().get_request()
        with self.listener.lock:
            self.listener.connections += 1
        return accepted


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost (and its key), valid for a day: the server under test trusts it
    through SSL_CERT_FILE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "listener.crt", folder / "listener.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Listener:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        body: bytes = b"",
        content_type: str = "image/png",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []
        self.redirects: dict[str, tuple[str, int]] = {}
        self.extra_headers: dict[str, str] = {}  # sent with every 200 answer
        self.body = body
        self.content_type = content_type
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                with listener.lock:
                    listener.requests.append((self.command, self.path, dict(self.headers.items())))
                    listener.bodies.append(payload)
                path = self.path.split("?", 1)[0]
                if path in listener.redirects:
                    location, status = listener.redirects[path]
                    self.send_response(status)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", listener.content_type)
                self.send_header("Content-Length", str(len(listener.body)))
                for name, value in listener.extra_headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(listener.body)

            do_GET = do_HEAD = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server(self, (host, 0), Handler, family)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.redirects[path] = (location, status)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
