"""PostgreSQL for the fleet tests: a private database per session on a running server, or a server of our own.

    database = PrivateDatabase(admin_url)    # CREATE DATABASE over asyncpg with a unique random name
    session_url = database.create(); ...; database.drop()   # DROP DATABASE ... WITH (FORCE)
    with OwnPostgres() as server:             # initdb + postgres from the postgresql package, on a free port
        server.url; server.stop(); server.start()   # restarts keep the data

Started the way tests/support/rabbitmq.py starts its own broker, with its plumbing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .rabbitmq import (
    INSTALL_HINT,
    SERVICES_DIR,
    ServiceError,
    answers,
    log_tail,
    quiet_free_ports,
    run_async,
    terminate_group,
)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "comfyui_api_test_"
STARTUP_DEADLINE_S = 120.0
STOP_DEADLINE_S = 60.0
INITDB_TIMEOUT_S = 300.0  # initdb writes a few hundred files: slow on a busy disk
# The Debian layout: /usr/lib/postgresql/<major>/bin, the newest major first.
_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
# A unix socket's path is limited to 107 bytes; postgres names its socket <dir>/.s.PGSQL.<port>.
_SOCKET_PATH_MAX = 100


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url, timeout=30)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


class PrivateDatabase:
    """A database with a unique random name on the server of `admin_url` (a URL whose user may create databases);
    `drop()` removes it, ending whatever connections are still open to it."""

    def __init__(self, admin_url: str, name: str | None = None) -> None:
        self.admin_url = admin_url
        self.name = name or DATABASE_PREFIX + secrets.token_hex(6)
        self.url = with_database(admin_url, self.name)
        self._created = False

    def create(self) -> str:
        # template0: nobody connects to it, so concurrent sessions never hit "source database is being accessed".
        # UTF8 and the C locale whatever the server's defaults: the job records hold any text.
        run_async(
            lambda: query(
                self.admin_url,
                f"CREATE DATABASE {self.name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'",
            ),
            timeout_s=120,
        )
        self._created = True
        return self.url

    def drop(self) -> None:
        if self._created:
            run_async(lambda: query(self.admin_url, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"), 120)
            self._created = False

    def exists(self) -> bool:
        rows = run_async(lambda: query(self.admin_url, "SELECT 1 FROM pg_database WHERE datname = $1", self.name), 60)
        return bool(rows)


class OwnPostgres:
    """A private PostgreSQL server from the system's postgresql package: initdb into a folder of its own (by
    default .services/postgres-<random>), then `postgres` on a free loopback port with its socket in that folder,
    trust authentication for the superuser `postgres`. PostgreSQL refuses to run as root: a root session runs it as
    the `postgres` user (else `nobody`), the folder handed over to that user. `stop()` (a fast shutdown) then
    `start()` restarts it on the same port and data; `close()` stops it and deletes the folder."""

    def __init__(self, workdir: Path | None = None) -> None:
        bin_dir = next((d for d in _BIN_DIRS if (d / "initdb").exists() and (d / "postgres").exists()), None)
        if bin_dir is None:
            hint = INSTALL_HINT.format(package="postgresql")
            raise ServiceError(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): {hint}")
        self.bin_dir = bin_dir
        self._user = _service_user()
        self._own_dir = workdir is None
        self.dir = workdir or SERVICES_DIR / f"postgres-{secrets.token_hex(4)}"
        self._socket_dir: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    # lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Self:
        """initdb on the first start; start the server and wait until a query works."""
        if self.process is not None:
            return self
        atexit.register(self.close)
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        first = self.port == 0
        for _ in range(3 if first else 1):
            if first:  # a port can be taken before postgres binds it: the first start retries on new ones
                (self.port,) = quiet_free_ports(1)
            began = time.monotonic()
            self._launch()
            if self._wait_ready(began):
                self.startup_s = time.monotonic() - began
                return self
            self._reap()
        tail = log_tail(self.log_path)
        self.close()
        raise ServiceError(f"PostgreSQL did not start; its log ends with:\n{tail}")

    def stop(self) -> None:
        """A fast shutdown (SIGINT: open connections are ended), waiting until the server is gone."""
        process, self.process = self.process, None
        if process is not None:
            terminate_group(process, signal.SIGINT, STOP_DEADLINE_S)

    def close(self) -> None:
        """Idempotent: stop and delete the folder."""
        self.stop()
        atexit.unregister(self.close)
        if self._socket_dir is not None and self._socket_dir != self.dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        shutil.rmtree(self.dir if self._own_dir else self.data, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # internals ------------------------------------------------------------------------------------
    def _run_as(self) -> dict[str, object]:
        """Popen arguments that drop root for the service user (no effect for anyone else)."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return env | {"HOME": str(self.dir), "LC_ALL": "C"}

    def _initdb(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not _hand_over(self.dir, self._user):
            # The service user cannot reach the folder (a checkout under a home folder closed to others).
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir, self._own_dir = Path(tempfile.mkdtemp(prefix="comfyui-api-postgres-")), True
            if not _hand_over(self.dir, self._user):
                raise ServiceError(f"the user {self._user.pw_name if self._user else '?'} cannot write {self.dir}")
        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",  # test data: no need to wait for the disk
        ]
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                command,
                env=self._env(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=INITDB_TIMEOUT_S,
                **self._run_as(),  # type: ignore[arg-type]
            )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}); its output ends with:\n{log_tail(self.log_path)}")

    def _sockets(self) -> Path:
        if self._socket_dir is None:
            self._socket_dir = self.dir
            if len(str(self.dir / ".s.PGSQL.65535.lock")) > _SOCKET_PATH_MAX:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="pg-"))
                _hand_over(self._socket_dir, self._user)
        return self._socket_dir

    def _launch(self) -> None:
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self._sockets()),
            # Crash safety is no concern for test data (a stopped or killed server still keeps what it wrote).
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"--- postgres on port {self.port}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                env=self._env(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._run_as(),  # type: ignore[arg-type]
            )

    def _wait_ready(self, began: float) -> bool:
        assert self.process is not None
        last_error: BaseException | None = None
        while self.process.poll() is None:
            if answers("127.0.0.1", self.port, timeout_s=2):
                try:
                    run_async(lambda: query(self.url, "SELECT 1"), timeout_s=30)
                    return True
                except Exception as error:  # "the database system is starting up" until recovery ends
                    last_error = error
            if time.monotonic() - began > STARTUP_DEADLINE_S:
                tail = log_tail(self.log_path)
                self.close()
                raise ServiceError(
                    f"PostgreSQL not ready after {STARTUP_DEADLINE_S:g}s (last error: {last_error!r}); "
                    f"its log ends with:\n{tail}"
                )
            time.sleep(0.1)
        return False

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate_group(process, signal.SIGINT, STOP_DEADLINE_S)


def _service_user() -> pwd.struct_passwd | None:
    """Who runs PostgreSQL: None for the current user, a system user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServiceError("running as root, and there is neither a postgres nor a nobody user to run PostgreSQL as")


def _hand_over(folder: Path, user: pwd.struct_passwd | None) -> bool:
    """Give `folder` to the service user; whether that user can then write in it (every parent must let it pass)."""
    if user is None:
        return True
    os.chown(folder, user.pw_uid, user.pw_gid)
    probe = subprocess.run(
        ["test", "-w", str(folder), "-a", "-x", str(folder)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    return probe.returncode == 0
