"""A real, threaded HTTP file server on loopback that serves (and stores PUTs into) a folder.

    with FileServer(root, basic=("user", "pass"), dispositions={"/download/123": "model.safetensors"}) as files:
        httpx.get(f"{files.url}/download/123", auth=("user", "pass"))   # serves root/download/123
        files.count("/download/123") == 1

Behaviour, all optional:
* auth: `auth_header=(name, value)` (a required header), `basic=(user, password)`, `bearer=token`; any that is
  set must match, else 401 (with `WWW-Authenticate` for basic/bearer). Applies to GET, HEAD and PUT.
* `dispositions`: URL path -> file name sent as `Content-Disposition: attachment; filename="..."`.
* `content_types`: URL path -> Content-Type (default: guessed from the name, else application/octet-stream).
* GET and HEAD with `Content-Length`, `ETag`, `Last-Modified`, `Accept-Ranges: bytes`, and one-range `Range`
  requests (206 / 416). No directory listings.
* `drop`: URL paths whose GET sends the headers with the full Content-Length, then half the body, then closes the
  connection (clients see a truncated body). Mutable set: `files.drop.add("/x")`.
* `fail(path, status=404)`: that path answers `status` from now on (`statuses` is the mutable mapping).
* PUT stores the body (Content-Length or chunked) under root at the URL path, creating folders, and answers 201.
* `stop()` closes the listening socket: later connections are refused. `__exit__` stops too (idempotent).
Logs: `requests` lists the paths (with query) of authorized GETs, whatever their answer; `count(path)` counts them
for one path (query ignored); `log` has `(method, path, headers)` for every request; `puts` the paths PUT stored.
"""

from __future__ import annotations

import email.utils
import http.server
import mimetypes
import threading
from base64 import b64encode
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import unquote, urlsplit


class FileServer:
    def __init__(
        self,
        root: Path,
        *,
        auth_header: tuple[str, str] | None = None,
        basic: tuple[str, str] | None = None,
        bearer: str | None = None,
        dispositions: dict[str, str] | None = None,
        content_types: dict[str, str] | None = None,
        drop: set[str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.auth_header = auth_header
        self.basic = basic
        self.bearer = bearer
        self.dispositions = dict(dispositions or {})
        self.content_types = dict(content_types or {})
        self.drop = set(drop or ())
        self.statuses: dict[str, int] = {}
        self.requests: list[str] = []
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.puts: list[str] = []
        self._stopped = False
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="FileServer", daemon=True)

    def count(self, path: str) -> int:
        """How many authorized GETs reached `path` (query strings ignored)."""
        return sum(urlsplit(p).path == path for p in self.requests)

    def fail(self, path: str, status: int = 404) -> None:
        self.statuses[path] = status

    def stop(self) -> None:
        """Stop serving and close the listening socket, so that new connections are refused."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # used by the handler ---------------------------------------------------------------------------
    def _authorized(self, headers: dict[str, str]) -> str | None:
        """None when the request passes every configured check, else the WWW-Authenticate value ("" for none)."""
        lower = {k.lower(): v for k, v in headers.items()}
        if self.auth_header and lower.get(self.auth_header[0].lower()) != self.auth_header[1]:
            return ""
        authorization = lower.get("authorization", "")
        if self.basic and authorization != "Basic " + b64encode(":".join(self.basic).encode()).decode():
            return 'Basic realm="files"'
        if self.bearer and authorization != f"Bearer {self.bearer}":
            return 'Bearer realm="files"'
        return None

    def _file(self, path: str) -> Path | None:
        target = (self.root / unquote(path).lstrip("/")).resolve()
        return target if target.is_relative_to(self.root) and target.is_file() else None


def _handler(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at shutdown

        def _start(self) -> str | None:
            """Log and check the request; returns its path, or None when an answer was already sent."""
            headers = dict(self.headers.items())
            server.log.append((self.command, self.path, headers))
            path = urlsplit(self.path).path
            challenge = server._authorized(headers)
            if challenge is None and self.command == "GET":
                server.requests.append(self.path)
            status = 401 if challenge is not None else server.statuses.get(path)
            if status is None:
                return path
            if self.command == "PUT":  # read what the client sends, so that it sees the answer, not a reset
                self._read_body(None)
            self._empty(status, {"WWW-Authenticate": challenge} if challenge else {})
            return None

        def _read_body(self, out: BinaryIO | None) -> None:
            """Read a request body (Content-Length or chunked) into `out`, or discard it."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                    chunk = self.rfile.read(size)
                    if out:
                        out.write(chunk)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 20))):
                if out:
                    out.write(chunk)
                remaining -= len(chunk)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            body = f"{status} {http.HTTPStatus(status).phrase}\n".encode() if self.command != "HEAD" else b""
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _serve(self, *, send_body: bool) -> None:
            path = self._start()
            if path is None:
                return
            file = server._file(path)
            if file is None:
                self._empty(404)
                return
            stat = file.stat()
            size = stat.st_size
            start, end, status = 0, size - 1, 200
            wanted = self.headers.get("Range")
            if wanted:
                parsed = _parse_range(wanted, size)
                if parsed is None:
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                (start, end), status = parsed, 206
            self.send_response(status)
            content_type = server.content_types.get(path) or mimetypes.guess_type(file.name)[0]
            self.send_header("Content-Type", content_type or "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{size:x}"')
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if path in server.dispositions:
                self.send_header("Content-Disposition", f'attachment; filename="{server.dispositions[path]}"')
            self.end_headers()
            if not send_body:
                return
            length = end - start + 1
            if path in server.drop:
                length //= 2
            with open(file, "rb") as f:
                f.seek(start)
                while length > 0 and (chunk := f.read(min(length, 1 << 20))):
                    self.wfile.write(chunk)
                    length -= len(chunk)
            if path in server.drop:
                self.wfile.flush()
                self.close_connection = True

        def do_PUT(self) -> None:
            path = self._start()
            if path is None:
                return
            target = (server.root / unquote(path).lstrip("/")).resolve()
            if not target.is_relative_to(server.root) or target == server.root:
                self._read_body(None)
                self._empty(403)
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            with open(partial, "wb") as out:
                self._read_body(out)
            partial.replace(target)
            server.puts.append(path)
            self._empty(201, {"Location": path})

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range -> (first, last) inclusive, or None when unsatisfiable/unsupported."""
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:  # suffix: the last N bytes
            n = int(last)
            return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start <= end and start < size else None
