"""SaladCloud deletion cost end to end: a server with a SALAD_* variable set reports ComfyUI's queue length to the
node's metadata service (SALAD_METADATA_URL, here a loopback stand-in) as prompts come and go, and serves on while
that service refuses connections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.graphs import slow, solid
from tests.support.metadata import MetadataService
from tests.support.server import ApiServer, closed_port, run_in_background, take_closed_port, wait_until


def salad_lines(server: ApiServer, text: str) -> list[dict[str, Any]]:
    return [e for e in server.log_entries() if e.get("logger") == "comfyui_api.salad" and text in e.get("msg", "")]


def test_the_queue_length_is_put_as_prompts_come_and_go(make_server: Callable[..., ApiServer]) -> None:
    port = closed_port()
    server = make_server("salad", SALAD_MACHINE_ID="machine-1", SALAD_METADATA_URL=f"http://127.0.0.1:{port}").start()
    # Nothing listens there yet: the report of the websocket's first status message is refused, and the server serves.
    wait_until(lambda: salad_lines(server, "could not report"), 60, "the refused report's warning")
    assert server.http.post("/prompt", json={"prompt": solid(8, 8), "id": "salad-refused"}).status_code == 200
    wait_until(lambda: salad_lines(server, "still not reported"), 60, "a retry, refused too")

    with MetadataService(take_closed_port(port)) as service:
        # A later retry sends the latest value: the queue is empty again.
        wait_until(lambda: service.costs()[-1:] == [0], 60, "the retried report")
        put = service.requests[0]
        assert (put.method, put.path, put.headers["Metadata"]) == ("PUT", "/v1/deletion-cost", "true")

        result = run_in_background(lambda: server.http.post("/prompt", json={"prompt": slow(), "id": "salad-queued"}))
        wait_until(lambda: 1 in service.costs(), 60, "the queued prompt's deletion cost")
        assert result(120).status_code == 200
        wait_until(lambda: service.costs()[-1] == 0, 60, "the emptied queue's deletion cost")
        assert service.max_in_flight == 1

    # One warning for the whole streak of refusals, one line when it ended.
    assert len(salad_lines(server, "could not report")) == 1
    [recovered] = salad_lines(server, "reported again")
    assert recovered["failures"] >= 2
