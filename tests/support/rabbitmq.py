"""RabbitMQ for the fleet tests: a private vhost per session on a running broker, or a broker of our own.

    vhost = PrivateVhost(BrokerServer(url))  # rabbitmqctl, else the management API of TEST_BROKER_ADMIN_URL
    session_url = vhost.create(); ...; vhost.delete()
    with OwnBroker() as broker:              # a private node from the rabbitmq-server package, on free ports
        broker.url; broker.stop(); broker.start()   # restarts keep its data: durable queues, persistent messages
    await queue_depth(url, "jobs")          # a queue's message count, by a passive declare

The plumbing at the top (`answers`, `run_async`, `quiet_free_ports`, `terminate_group`) is shared with
tests/support/postgres.py, which starts its own PostgreSQL the same way.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import httpx
from aio_pika.connection import make_url

from .paths import REPO
from .services import ServiceError, bypass_proxy_for_loopback

T = TypeVar("T")

# Ignored by git (.gitignore): the data folders of the services the tests start themselves.
SERVICES_DIR = REPO / ".services"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
INSTALL_HINT = "install the Debian package: sudo apt-get install {package}"
# A noisy 2-core machine can take long to boot an Erlang node; readiness is a real AMQP login polled until then.
STARTUP_DEADLINE_S = 120.0
STOP_DEADLINE_S = 60.0
CTL_TIMEOUT_S = 120.0  # each rabbitmqctl call boots an Erlang VM of its own: seconds when the machine is busy
START_ATTEMPTS = 3  # a chosen port can be taken before the node binds it: the first start retries on new ports
VHOST_PREFIX = "comfyui-api-test-"

# The package's own scripts, not its /usr/sbin wrappers: those refuse anyone but root and rabbitmq, and as root
# switch to the rabbitmq user and the system node's settings.
_RABBITMQ_SERVER = (Path("/usr/lib/rabbitmq/bin/rabbitmq-server"),)
_RABBITMQ_CTL = (Path("/usr/lib/rabbitmq/bin/rabbitmqctl"),)
# The system-wide command: as root it switches to the rabbitmq user, whose cookie reaches the system node.
_SYSTEM_CTL = (Path("/usr/sbin/rabbitmqctl"),)


# Shared plumbing ------------------------------------------------------------------------------------


def answers(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """Whether anything accepts a TCP connection at host:port: the test for "no service runs there"."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def url_answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    return answers(parts.hostname or "127.0.0.1", parts.port or default_port)


def needs_own_server(variable: str, default_url: str, default_port: int) -> tuple[str, bool]:
    """The URL of a service (environment `variable`, else `default_url`) and whether to start a server of our own
    there instead: only when the variable is unset and nothing answers at the default address (a developer's
    machine without the service running). A URL set explicitly where nothing answers is a misconfiguration, which
    a server of our own would only hide: ServiceError."""
    url = os.environ.get(variable) or default_url
    if url_answers(url, default_port):
        return url, False
    if os.environ.get(variable):
        raise ServiceError(f"nothing answers at {variable}={url}")
    return url, True


def run_async(make: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """Run a coroutine to completion from synchronous code, also from inside a running event loop (an async test
    calling `OwnBroker.start()`): it gets a loop of its own on a helper thread."""

    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout_s)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, bounded()).result()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family) as sock:
                sock.bind((host, port))
        except OSError as error:
            # epmd also listens on ::1; a host without IPv6 cannot bind it at all, which is no conflict.
            if family == socket.AF_INET or error.errno == errno.EADDRINUSE:
                return False
    return True


def quiet_free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now and lie outside the ephemeral range. A restarted service
    must come back on the same port; an ephemeral one could meanwhile be taken by some outgoing connection, or a
    client retrying it while the service is down could connect to itself (TCP simultaneous open)."""
    low, high = _ephemeral_range()
    ranges = [r for r in (range(10000, low), range(high + 1, 65536)) if len(r) >= 1000]
    if not ranges:
        ranges = [range(1024, 65536)]
    rng = secrets.SystemRandom()
    chosen: list[int] = []
    for _ in range(10000):
        port = rng.choice(rng.choice(ranges))
        if port not in chosen and _bindable(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise ServiceError(f"found no {count} free loopback ports outside the ephemeral range {low}-{high}")


def first_existing(candidates: tuple[Path, ...]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def terminate_group(process: subprocess.Popen[bytes], sig: signal.Signals, deadline_s: float) -> None:
    """Send `sig` to the process, wait for it and every process of its group (started with start_new_session) to
    end; SIGKILL the group once `deadline_s` has passed."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    deadline = time.monotonic() + deadline_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=deadline_s)
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    while _group_alive(process.pid):  # SIGKILL cannot be refused: this ends within moments
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # members run as another user (a root session's service user): still alive
        return True
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# AMQP helpers ---------------------------------------------------------------------------------------


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@contextlib.asynccontextmanager
async def connected(url: str, timeout_s: float = 30.0) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """An AMQP connection, closed on the way out also when the login fails. (A login refused inside
    aio_pika.connect() leaves its Connection open, for a finalizer to close later in whatever loop then runs:
    "coroutine 'Connection.close' was never awaited".)"""
    connection = aio_pika.Connection(make_url(url))
    try:
        await connection.connect(timeout=timeout_s)
        yield connection
    finally:
        await connection.close()


async def amqp_login(url: str, timeout_s: float = 10.0) -> None:
    """Log in and open a channel: proves the broker is up and the URL's user may use the URL's vhost."""
    async with connected(url, timeout_s) as connection:
        await connection.channel()


async def queue_depth(url: str, name: str) -> int:
    """The number of ready messages in queue `name` (a passive declare: fails if the queue does not exist)."""
    async with connected(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


# A private vhost on a running broker ----------------------------------------------------------------

Ctl = Callable[..., subprocess.CompletedProcess[str]]


def system_ctl() -> Ctl | None:
    """rabbitmqctl for the machine's own broker, where this user can run it (root or rabbitmq), else None."""
    path = first_existing(_SYSTEM_CTL)
    if path is None or os.geteuid() not in (0, _uid_of("rabbitmq")):
        return None

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(path), "-q", *args], capture_output=True, text=True, timeout=CTL_TIMEOUT_S, stdin=subprocess.DEVNULL
        )

    return ctl


def _uid_of(user: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return -1


@dataclass
class BrokerServer:
    """A running broker: its AMQP `url` (an admin vhost, usually "/"), and what can create vhosts on it."""

    url: str
    ctl: Ctl | None = None
    admin_url: str | None = None  # the management API, http://user:pass@host:15672
    own: OwnBroker | None = field(default=None, repr=False)


class PrivateVhost:
    """A vhost with a unique random name on `server`, its URL's user granted everything on it; `delete()` removes
    it with all its queues. rabbitmqctl creates it where it reaches the URL's broker (checked by logging in to the
    new vhost over AMQP: the command may talk to another node), else the management API of `admin_url`."""

    def __init__(self, server: BrokerServer, name: str | None = None) -> None:
        self.server = server
        self.name = name or VHOST_PREFIX + secrets.token_hex(6)
        self.url = with_vhost(server.url, self.name)
        self.user = unquote(urlsplit(server.url).username or "guest")
        self._delete: Callable[[], None] | None = None

    def create(self) -> str:
        causes: list[str] = []
        if self.server.ctl is not None:
            cause = self._create_with_ctl(self.server.ctl)
            if cause is None:
                return self.url
            causes.append(cause)
        if self.server.admin_url:
            self._create_with_api(self.server.admin_url)
            return self.url
        causes.append(
            "no TEST_BROKER_ADMIN_URL (http://user:pass@host:15672) for the management API; "
            "alternatively run the tests as root or rabbitmq, so that rabbitmqctl reaches the machine's broker"
        )
        raise ServiceError(f"cannot create a vhost on the broker at {self.server.url}: " + "; ".join(causes))

    def delete(self) -> None:
        delete, self._delete = self._delete, None
        if delete is not None:
            delete()

    def _create_with_ctl(self, ctl: Ctl) -> str | None:
        """None when created and verified; else why not (and nothing is left behind)."""
        try:
            added = ctl("add_vhost", self.name)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"rabbitmqctl failed: {error}"
        if added.returncode != 0:
            return f"rabbitmqctl add_vhost failed: {(added.stderr or added.stdout).strip()}"

        def delete() -> None:
            deleted = ctl("delete_vhost", self.name)
            if deleted.returncode != 0:
                raise ServiceError(f"rabbitmqctl delete_vhost {self.name} failed: {deleted.stderr.strip()}")

        self._delete = delete
        granted = ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        cause = None
        if granted.returncode != 0:
            cause = f"rabbitmqctl set_permissions failed: {(granted.stderr or granted.stdout).strip()}"
        else:
            try:
                run_async(lambda: amqp_login(self.url), timeout_s=60)
            except Exception as error:
                cause = f"rabbitmqctl talks to another node than the broker at the URL ({error!r})"
        if cause is not None:
            self.delete()
        return cause

    def _create_with_api(self, admin_url: str) -> None:
        bypass_proxy_for_loopback()
        parts = urlsplit(admin_url)
        auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
        base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], path=""))
        vhost = quote(self.name, safe="")

        def delete() -> None:
            with httpx.Client(base_url=base, auth=auth, timeout=60) as client:
                response = client.delete(f"/api/vhosts/{vhost}")
                if response.status_code != 404:
                    response.raise_for_status()

        try:
            with httpx.Client(base_url=base, auth=auth, timeout=60) as http:
                http.put(f"/api/vhosts/{vhost}", json={"description": "comfyui-api test session"}).raise_for_status()
                self._delete = delete
                permissions = {"configure": ".*", "write": ".*", "read": ".*"}
                http.put(f"/api/permissions/{vhost}/{quote(self.user, safe='')}", json=permissions).raise_for_status()
        except httpx.HTTPError as error:
            with contextlib.suppress(httpx.HTTPError):
                self.delete()
            raise ServiceError(f"the management API at {base} refused to create vhost {self.name}: {error}") from error


# A broker of our own --------------------------------------------------------------------------------


class OwnBroker:
    """A private RabbitMQ node from the system's rabbitmq-server package, in a folder of its own (by default
    .services/rabbitmq-<random>), on free loopback ports, running as the current user. Its node name, Erlang
    cookie (a private HOME), port mapper (epmd on a private port) and configuration (no plugins, nothing read from
    /etc/rabbitmq) are its own, so it never meets the machine's node. `stop()` then `start()` restarts it on the
    same ports and data: durable queues and persistent messages survive. `close()` stops it and deletes the folder.
    With `management=True` it also runs the management plugin, its HTTP API at `admin_url`. Blocking calls; from an
    async test use `await asyncio.to_thread(broker.stop)`."""

    def __init__(self, workdir: Path | None = None, *, management: bool = False) -> None:
        server = first_existing(_RABBITMQ_SERVER)
        ctl = first_existing(_RABBITMQ_CTL)
        if server is None or ctl is None:
            hint = INSTALL_HINT.format(package="rabbitmq-server")
            raise ServiceError(f"RabbitMQ is not installed (no {_RABBITMQ_SERVER[0]}): {hint}")
        self._server_bin, self._ctl_bin = server, ctl
        self._epmd_bin = shutil.which("epmd") or "epmd"
        token = secrets.token_hex(4)
        self.dir = workdir or SERVICES_DIR / f"rabbitmq-{token}"
        self.nodename = f"comfyui-api-test-{token}@localhost"
        self.management = management
        self.amqp_port = self.dist_port = self.epmd_port = self.management_port = 0
        self.log_path = self.dir / "rabbitmq-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None  # launch to ready, of the latest start
        self._started_once = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def admin_url(self) -> str | None:
        return f"http://guest:guest@127.0.0.1:{self.management_port}" if self.management else None

    def server(self) -> BrokerServer:
        return BrokerServer(self.url, ctl=self.ctl, admin_url=self.admin_url, own=self)

    # lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the node (on the same ports and data after a `stop()`) and wait until an AMQP login works."""
        if self.process is not None:
            return self
        atexit.register(self.close)
        attempts = 1 if self._started_once else START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self._started_once:
                self.amqp_port, self.dist_port, self.epmd_port, self.management_port = quiet_free_ports(4)
                self._write_config()
            began = time.monotonic()
            self._launch(attempt)
            if self._wait_ready(began):
                self.startup_s = time.monotonic() - began
                self._started_once = True
                return self
            self._reap()
            if not self._started_once:  # a port was taken: start afresh on new ones
                shutil.rmtree(self.dir / "mnesia", ignore_errors=True)
        tail = self._tails()
        self.close()
        raise ServiceError(f"RabbitMQ did not start in {attempts} attempt(s); its logs end with:\n{tail}")

    def stop(self) -> None:
        """Stop the node gracefully (SIGTERM) and wait until it and its processes are gone. Keeps the data."""
        process, self.process = self.process, None
        if process is not None:
            terminate_group(process, signal.SIGTERM, STOP_DEADLINE_S)

    def close(self) -> None:
        """Idempotent: stop, end the private epmd, delete the folder."""
        self.stop()
        atexit.unregister(self.close)
        if self.epmd_port:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [self._epmd_bin, "-port", str(self.epmd_port), "-kill"],
                    env=self._env(),
                    capture_output=True,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl against this node (it finds the node by name through the private epmd and cookie)."""
        return subprocess.run(
            [str(self._ctl_bin), "-q", "-n", self.nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )

    # internals ------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        # Nothing of a caller's own RabbitMQ or Erlang settings may leak into the private node.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return env | {
            "HOME": str(self.dir / "home"),  # the Erlang cookie lives here
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(self.dir / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MOTD_FILE": str(self.dir / "motd"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _write_config(self) -> None:
        for sub in ("home", "mnesia", "log", "conf.d"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n" if self.management else "[].\n")
        config = (
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            # A test machine's disk may be nearly full; the broker would then block every publisher.
            "disk_free_limit.absolute = 1MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        if self.management:
            config += f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        (self.dir / "rabbitmq.conf").write_text(config)

    def _launch(self, attempt: int) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- attempt {attempt}: amqp {self.amqp_port}, dist {self.dist_port}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(self._server_bin)],
                env=self._env(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so that stop() can wait for (or kill) the whole group
            )

    def _wait_ready(self, began: float) -> bool:
        """True once an AMQP login works; False if the node exited; fails after STARTUP_DEADLINE_S."""
        assert self.process is not None
        last_error: BaseException | None = None
        while self.process.poll() is None:
            if answers("127.0.0.1", self.amqp_port, timeout_s=2):
                try:
                    run_async(lambda: amqp_login(self.url), timeout_s=30)
                    if self._management_answers():
                        return True
                except Exception as error:
                    last_error = error
            if time.monotonic() - began > STARTUP_DEADLINE_S:
                tail = self._tails()
                self.close()
                raise ServiceError(
                    f"RabbitMQ not ready after {STARTUP_DEADLINE_S:g}s (last login error: {last_error!r}); "
                    f"its logs end with:\n{tail}"
                )
            time.sleep(0.1)
        return False

    def _management_answers(self) -> bool:
        if not self.management:
            return True
        base = f"http://127.0.0.1:{self.management_port}"
        with httpx.Client(base_url=base, auth=("guest", "guest"), timeout=10, trust_env=False) as http:
            http.get("/api/overview").raise_for_status()
        return True

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate_group(process, signal.SIGTERM, STOP_DEADLINE_S)

    def _tails(self) -> str:
        node_log = self.dir / "log" / f"{self.nodename}.log"
        return f"{log_tail(self.log_path)}\n--- {node_log.name}:\n{log_tail(node_log)}"
