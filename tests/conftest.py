"""Session fixtures: the random SD1.5-shaped checkpoint and the shared server most tests use."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import CHECKPOINT_NAME, COMFY_PYTHON, COMFY_TREE, REPO, TEST_CACHE
from tests.support.server import ApiServer
from tests.support.services import Azurite, FakeHub, SeaweedS3, ServiceError


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    """Generated once per checkout (about 5 s) and reused: random weights, SD1.5 shape."""
    path = TEST_CACHE / CHECKPOINT_NAME
    if not path.exists():
        if not COMFY_PYTHON.exists():
            pytest.fail("ComfyUI is not installed: run scripts/setup.sh (scripts/test.sh does)")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                str(COMFY_PYTHON),
                str(REPO / "scripts" / "make_sd15_checkpoint.py"),
                "--comfyui",
                str(COMFY_TREE),
                "--out",
                str(path),
            ],
            check=True,
        )
    return path


@pytest.fixture(scope="session")
def make_server(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[Callable[..., ApiServer]]:
    """A factory for servers with their own folders; every server it made is stopped at the end."""
    started: list[ApiServer] = []

    def factory(name: str = "server", **env: str) -> ApiServer:
        server = ApiServer(tmp_path_factory.mktemp(name), checkpoint, **env)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(make_server: Callable[..., ApiServer]) -> ApiServer:
    """The shared server, started once for the session: default settings but for a small body limit and
    a queue-depth limit of 2 (so /ready says 503 while a prompt runs and another waits)."""
    return make_server("shared", MAX_BODY_SIZE_MB="2", MAX_QUEUE_DEPTH="2").start()


def pytest_report_header() -> list[str]:
    return [
        f"ComfyUI install: {COMFY_TREE} ({'present' if COMFY_TREE.exists() else 'missing'})",
        f"CI: {os.environ.get('CI', 'false')}",
    ]


# Storage services (tests/support/services.py): started on first use, stopped at the end of the session.
# Each is shared by the whole session: use unique bucket / container / repo names per test.


def _start_service(factory: Callable[[], Any]) -> Any:
    try:
        return factory().start()
    except ServiceError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS's S3 gateway: `.endpoint_url`, `.access_key`, `.secret_key`, `.region`, `.client()`,
    `.create_bucket(name)`, `.put(bucket, key, data)`, `.get(bucket, key)`, `.env()` (AWS_* for comfyui-api)."""
    server = _start_service(lambda: SeaweedS3(tmp_path_factory.mktemp("seaweedfs")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service: `.account`, `.key`, `.blob_endpoint`, `.connection_string`, `.service_client()`,
    `.create_container(name)`, `.put(container, blob, data)`, `.get(container, blob)`, `.env()`."""
    server = _start_service(lambda: Azurite(tmp_path_factory.mktemp("azurite")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A fake Hugging Face hub without a token: `.url`, `.add_file(repo_id, path, data, revision=, repo_type=)`,
    `.requests`, `.clear_requests()`, `.env()`. For auth tests start `FakeHub(token=...)` yourself."""
    hub = _start_service(lambda: FakeHub(tmp_path_factory.mktemp("fakehub")))
    yield hub
    hub.stop()
