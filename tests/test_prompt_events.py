"""GET /prompt/{id}/events, the live events of a /prompt request; and GET /api/v2/health."""

from __future__ import annotations

import json

from tests.support.graphs import txt2img
from tests.support.server import ApiServer, run_in_background, wait_until


def _events(server: ApiServer, request_id: str) -> list[tuple[int, str, dict]]:
    events = []
    with server.http.stream("GET", f"/prompt/{request_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                frame[name] = value
                continue
            if "event" in frame:
                events.append((int(frame["id"]), frame["event"], json.loads(frame["data"])))
            frame = {}
    return events


def test_a_prompt_requests_events_stream_to_its_end(server: ApiServer) -> None:
    result = run_in_background(
        lambda: server.http.post("/prompt", json={"prompt": txt2img(steps=4, seed=3), "id": "watched"})
    )
    wait_until(lambda: server.http.get("/prompt/watched").status_code == 200, 120, "the request to be known")
    events = _events(server, "watched")
    assert result(240).status_code == 200

    ids = [event_id for event_id, _, _ in events]
    assert ids == sorted(set(ids))
    statuses = [data["status"] for _, name, data in events if name == "status"]
    assert statuses[-1] == "succeeded"
    assert any(name == "progress" for _, name, _ in events)
    # A finished request streams its stored end at once.
    assert _events(server, "watched")[-1][2]["status"] == "succeeded"


def test_an_unknown_request_has_no_events(server: ApiServer) -> None:
    response = server.http.get("/prompt/never-sent/events")
    assert response.status_code == 404
    assert response.json() == {"error": "No request with id 'never-sent' is known (it may have expired)"}


def test_v2_health_answers_without_a_key(server: ApiServer) -> None:
    response = server.http.get("/api/v2/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["comfyui"]["up"] is True
