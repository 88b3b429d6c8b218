"""A client that disconnects from a sync /prompt or /workflow/* request cancels its job, against a real ComfyUI: a
running prompt is interrupted and a queued one leaves ComfyUI's queue, within 2 s of the close; with
CANCEL_ON_DISCONNECT=false the prompt runs to its end. The decisions themselves are tested in process in
tests/unit/test_disconnect.py."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.graphs import Graph, node, solid
from tests.support.server import ApiServer, run_in_background, wait_until

CUSTOM_NODES = Path(__file__).parent / "support" / "custom_nodes"
# The bound: from the client's close to the prompt's absence from ComfyUI's queue, interrupt included.
LEAVES_WITHIN_S = 2.0


def steps(count: int = 100, color: int = 0) -> Graph:
    """A prompt that runs `count` tenths of a second in InterruptibleSteps, a node that takes an interrupt between
    steps as a sampler does (tests/support/custom_nodes). ComfyUI caches node outputs across prompts: a different
    `color` makes it run again."""
    return {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=color),
        "2": node("InterruptibleSteps", image=["1", 0], steps=count, step_s=0.1),
        "3": node("SaveImage", images=["2", 0], filename_prefix="steps"),
    }


# A workflow endpoint that runs `steps(color=input.color)` (the module stands alone: the server does not import the
# tests).
STEPS_WORKFLOW = f"""
import json

from pydantic import BaseModel


class RequestSchema(BaseModel):
    color: int


def generate_workflow(input: RequestSchema) -> dict:
    graph = json.loads({json.dumps(steps())!r})
    graph["1"]["inputs"]["color"] = input.color
    return graph
"""


def with_steps_node(server: ApiServer) -> ApiServer:
    shutil.copy(CUSTOM_NODES / "interruptible_steps.py", server.base / "custom_nodes")
    return server


@pytest.fixture(scope="module")
def disconnect_server(make_server: Callable[..., ApiServer]) -> ApiServer:
    """Default settings (CANCEL_ON_DISCONNECT on), InterruptibleSteps, and the `steps` workflow endpoint."""
    server = with_steps_node(make_server("disconnect"))
    (server.base / "workflows" / "steps.py").write_text(STEPS_WORKFLOW)
    return server.start()


def send_and_hold(server: ApiServer, body: dict[str, Any], path: str = "/prompt") -> socket.socket:
    """A sync POST on a raw connection, left open without reading the answer (the caller closes it)."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(head + payload)
    return connection


def seconds_until(predicate: Callable[[], bool], since: float, what: str) -> float:
    """How long after `since` `predicate` first held (waited for with a generous deadline; timed separately)."""
    wait_until(predicate, 60, what, interval_s=0.02)
    return time.monotonic() - since


def times_logged(server: ApiServer, message: str, **fields: Any) -> int:
    return sum(
        entry.get("msg") == message and all(entry.get(k) == v for k, v in fields.items())
        for entry in server.log_entries()
    )


def logged(server: ApiServer, message: str, **fields: Any) -> bool:
    return times_logged(server, message, **fields) > 0


def gone_from_comfy(server: ApiServer, prompt_id: str) -> Callable[[], bool]:
    def check() -> bool:
        running, pending = server.comfy_queue()
        return prompt_id not in running and prompt_id not in pending

    return check


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/prompt", {"prompt": steps(color=1), "id": "gone-while-running"}),
        ("/workflow/steps", {"input": {"color": 2}, "id": "gone-while-running-workflow"}),
    ],
    ids=["prompt", "workflow"],
)
def test_a_client_that_leaves_a_running_prompt_interrupts_it(
    disconnect_server: ApiServer, path: str, body: dict[str, Any]
) -> None:
    server = disconnect_server
    interrupts = times_logged(server, "Processing interrupted")  # ComfyUI's line, which names no prompt
    connection = send_and_hold(server, body, path)
    prompt_id = server.wait_comfy_running()

    connection.close()
    closed = time.monotonic()
    elapsed = seconds_until(gone_from_comfy(server, prompt_id), closed, "the prompt to leave ComfyUI")

    print(f"{path}: the running prompt left ComfyUI {elapsed:.3f} s after the client closed")
    assert elapsed <= LEAVES_WITHIN_S
    wait_until(
        lambda: logged(server, "client disconnected; request cancelled", request_id=body["id"]),
        30,
        "the cancellation's log line",
    )
    # Stopped by the interrupt (it had 10 s to go), before its SaveImage; whatever it had saved would have gone with
    # its history entry.
    wait_until(lambda: logged(server, "cleaned up an abandoned prompt", prompt_id=prompt_id), 30, "the cleanup")
    assert times_logged(server, "Processing interrupted") == interrupts + 1
    assert server.files_under("output") == []
    assert httpx.get(f"{server.comfy_url}/history/{prompt_id}").json() == {}


def test_a_client_that_leaves_a_queued_prompt_takes_it_out_of_comfyuis_queue(disconnect_server: ApiServer) -> None:
    server = disconnect_server
    blocker = run_in_background(lambda: server.http.post("/prompt", json={"prompt": steps(color=3), "id": "blocker"}))
    running = server.wait_comfy_running()
    connection = send_and_hold(server, {"prompt": solid(8, 8), "id": "gone-while-queued"})
    (queued,) = server.wait_comfy_pending(1)

    connection.close()
    closed = time.monotonic()
    elapsed = seconds_until(gone_from_comfy(server, queued), closed, "the queued prompt to leave ComfyUI")

    print(f"queued prompt left ComfyUI {elapsed:.3f} s after the client closed")
    assert elapsed <= LEAVES_WITHIN_S
    # Taken out of the queue while the blocker still ran: it never ran.
    assert server.comfy_queue() == ([running], [])
    assert httpx.get(f"{server.comfy_url}/history/{queued}").json() == {}

    assert server.http.post("/interrupt", json={"id": "blocker"}).status_code == 200
    assert blocker(120).status_code == 500
    wait_until(lambda: server.comfy_queue() == ([], []), 60, "ComfyUI's queue to empty")
    assert server.files_under("output") == []


def test_with_cancel_on_disconnect_off_the_prompt_runs_to_its_end(make_server: Callable[..., ApiServer]) -> None:
    server = with_steps_node(make_server("keep-on-disconnect", CANCEL_ON_DISCONNECT="false")).start()
    connection = send_and_hold(server, {"prompt": steps(count=20), "id": "left-running"})
    prompt_id = server.wait_comfy_running()

    connection.close()

    wait_until(lambda: logged(server, "prompt completed", request_id="left-running"), 120, "the prompt to complete")
    assert not logged(server, "client disconnected; request cancelled")
    # The job ended like any other: its history entry and its outputs are gone once the (unread) answer was sent.
    wait_until(lambda: server.files_under("output") == [], 30, "the outputs to be deleted")
    wait_until(lambda: httpx.get(f"{server.comfy_url}/history/{prompt_id}").json() == {}, 30, "the history entry to go")
