"""A real comfyui-api process in front of a real ComfyUI, in a folder of its own, on free ports."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from comfyui_api.urls import url_origin

from .paths import CHECKPOINT_NAME, COMFY_PYTHON, COMFY_TREE, REPO

# Generous: a 2-core CI machine running other work can take long to start ComfyUI and load models.
STARTUP_DEADLINE_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_closed_ports: dict[int, socket.socket] = {}


def closed_port() -> int:
    """A loopback port where nothing listens, held so for the rest of the test process. Its socket stays bound without
    listening: a connection is refused, and neither another listener nor an outgoing connection's ephemeral port can
    take it. (A client that keeps retrying a merely free port in the ephemeral range can connect to itself on it.)"""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    _closed_ports[port] = sock
    return port


def take_closed_port(port: int) -> socket.socket:
    """The bound socket of a `closed_port()`, handed to a service that starts listening on it."""
    return _closed_ports.pop(port)


def trusting(*urls: str) -> dict[str, str]:
    """Server environment that trusts the origins of these loopback test services (HTTP_TRUSTED_ORIGINS), as an
    operator lists an in-cluster service: the URL guard refuses loopback addresses otherwise."""
    return {"HTTP_TRUSTED_ORIGINS": ",".join(dict.fromkeys(url_origin(url) for url in urls))}


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


class ApiServer:
    def __init__(self, base: Path, checkpoint: Path, *, comfy_port: int | None = None, **env: str) -> None:
        self.base = base
        self.port = free_port()
        self.comfy_port = free_port()
        # The port our server talks to; a test may put a relay in front of ComfyUI's own port.
        self.comfy_api_port = comfy_port or self.comfy_port
        for folder in ("custom_nodes", "models/checkpoints", "input", "output", "workflows", "cache"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        link = base / "models" / "checkpoints" / CHECKPOINT_NAME
        if not link.exists():
            link.symlink_to(checkpoint)
        command = [
            str(COMFY_PYTHON),
            str(COMFY_TREE / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.comfy_port),
            "--base-directory",
            str(base),
            "--database-url",
            f"sqlite:///{base}/comfy.db",
            "--disable-auto-launch",
            "--disable-api-nodes",
            # Sampler previews (latent2rgb) on the websocket: the v2 event streams send them.
            "--preview-method",
            "auto",
        ]
        self.env = {
            **os.environ,
            "COMFY_HOME": str(base),
            "CMD": shlex.join(command),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "COMFYUI_PORT_HOST": str(self.comfy_api_port),
            "WORKFLOW_DIR": str(base / "workflows"),
            "CACHE_DIR": str(base / "cache"),
            # Each server's job store in its own folder: servers of one session never share records.
            "STATE_DIR": str(base / "state"),
            "STARTUP_CHECK_INTERVAL_S": "0.5",
            "STARTUP_CHECK_MAX_TRIES": str(int(STARTUP_DEADLINE_S / 0.5)),
            "LOG_LEVEL": "debug",
            **env,
        }
        self.log_path = base / "server.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.comfy_url = f"http://127.0.0.1:{self.comfy_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(300.0, connect=10.0))

    # lifecycle ---------------------------------------------------------------------------------
    def start(self, *, wait: str = "healthy") -> ApiServer:
        """Launch; `wait` is "healthy" (warm), "listening" (port open) or "none"."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "comfyui-api")],
                env=self.env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait == "listening":
            wait_until(self.listening, STARTUP_DEADLINE_S, "the server to listen")
        elif wait == "healthy":
            wait_until(self.healthy, STARTUP_DEADLINE_S, "the server to become healthy", interval_s=0.2)
        return self

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")

    def listening(self) -> bool:
        self._check_alive()
        try:
            self.http.get("/health", timeout=2)
        except httpx.TransportError:
            return False
        return True

    def healthy(self) -> bool:
        self._check_alive()
        try:
            return self.http.get("/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        try:
            return self.http.get("/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        self.http.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # ComfyUI, seen from the side -----------------------------------------------------------------
    def comfy_process(self) -> psutil.Process:
        assert self.process is not None
        children = psutil.Process(self.process.pid).children()
        assert children, "ComfyUI is not running"
        return children[0]

    def comfy_queue(self) -> tuple[list[str], list[str]]:
        data = httpx.get(f"{self.comfy_url}/queue", timeout=10).json()
        return [item[1] for item in data["queue_running"]], [item[1] for item in data["queue_pending"]]

    def wait_comfy_running(self, timeout_s: float = 120) -> str:
        """The prompt id ComfyUI is executing, once it executes one."""
        return wait_until(lambda: next(iter(self.comfy_queue()[0]), None), timeout_s, "ComfyUI to run a prompt")

    def comfy_left_clean(self) -> bool:
        """Nothing of past requests is left: ComfyUI's queue and history and the output folder are empty."""
        history = httpx.get(f"{self.comfy_url}/history", timeout=10).json()
        return self.comfy_queue() == ([], []) and history == {} and self.files_under("output") == []

    def wait_comfy_pending(self, count: int, timeout_s: float = 120) -> list[str]:
        return wait_until(
            lambda: len(pending := self.comfy_queue()[1]) >= count and pending, timeout_s, "prompts to queue in ComfyUI"
        )

    # logs ---------------------------------------------------------------------------------------
    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"raw": line})
        return entries

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def files_under(self, folder: str) -> list[Path]:
        return sorted(p for p in (self.base / folder).rglob("*") if p.is_file() or p.is_symlink())


def run_in_background(function: Callable[[], Any]) -> Callable[[float], Any]:
    """Start `function` in a thread; the returned callable waits for and returns its result."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function)
    pool.shutdown(wait=False)
    return lambda timeout_s: future.result(timeout=timeout_s)
