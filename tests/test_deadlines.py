"""PROMPT_TIMEOUT_S covers preprocessing: a download or git clone from a server that never answers ends the
request with 504 at the deadline, and leaves no git process or partial file behind."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import psutil
import pytest

from tests.support.graphs import node
from tests.support.server import ApiServer, trusting, wait_until


@pytest.fixture(scope="module")
def stalled() -> Iterator[str]:
    """A server that accepts connections (in its backlog) and never answers."""
    listening = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    listening.close()  # the stalled connections fail now, so their threads end


@pytest.fixture(scope="module")
def deadline_server(make_server: Callable[..., ApiServer], stalled: str) -> ApiServer:
    server = make_server("deadlines", PROMPT_TIMEOUT_S="3", **trusting(stalled))
    (server.base / "models" / "diffusers").mkdir(parents=True, exist_ok=True)
    return server.start()


def git_processes(server: ApiServer) -> list[psutil.Process]:
    assert server.process is not None
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [child for child in children if child.name() == "git" or "git-remote" in child.name()]


def test_a_download_that_never_answers_ends_at_the_deadline(deadline_server: ApiServer, stalled: str) -> None:
    graph = {
        "1": node("LoadImage", image=f"{stalled}/never.png"),
        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
    }
    response = deadline_server.http.post("/prompt", json={"prompt": graph}, timeout=45)
    assert response.status_code == 504, response.text
    assert response.json()["error"] == "The prompt did not finish within PROMPT_TIMEOUT_S=3s"
    assert deadline_server.http.get("/health").status_code == 200


def test_a_git_clone_that_never_answers_ends_at_the_deadline_and_its_git_is_killed(
    deadline_server: ApiServer, stalled: str
) -> None:
    graph = {
        "1": node("DiffusersLoader", model_path=f"{stalled}/org/model.git"),
        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
    }
    response = deadline_server.http.post("/prompt", json={"prompt": graph}, timeout=45)
    assert response.status_code == 504, response.text
    wait_until(lambda: not git_processes(deadline_server), 30, "the git process to be gone")
    assert not (deadline_server.base / "models" / "diffusers" / "model").exists()
    # The repository's lock was released: the next clone of it starts (and ends at its own deadline).
    assert deadline_server.http.post("/prompt", json={"prompt": graph}, timeout=45).status_code == 504


def test_nothing_partial_is_left_in_the_cache(deadline_server: ApiServer, stalled: str) -> None:
    deadline_server.http.post(
        "/prompt",
        json={
            "prompt": {
                "1": node("LoadImage", image=f"{stalled}/again.png"),
                "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
            }
        },
        timeout=45,
    )
    wait_until(
        lambda: not list((deadline_server.base / "cache").glob(".*.part")), 30, "no partial download in the cache"
    )
