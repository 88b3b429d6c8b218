"""Static bearer auth end to end: a real server in front of a real ComfyUI with API_KEYS set (at LOG_LEVEL=debug,
the test servers' level): /prompt needs a key, the probes do not, and no key ever shows in the server's log (ours
and ComfyUI's, forwarded).

In process, every other case: tests/unit/test_auth.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.graphs import solid
from tests.support.server import ApiServer, wait_until

KEYS = ("e2e-key-5f1c9a7d3b", "e2e-key-second-0a8e")


@pytest.fixture(scope="module")
def secured(make_server: Callable[..., ApiServer]) -> ApiServer:
    return make_server("auth", API_KEYS=",".join(KEYS)).start()


def test_prompt_needs_a_key_and_the_probes_do_not(secured: ApiServer) -> None:
    body = {"prompt": solid(8, 8)}

    refused = secured.http.post("/prompt", json=body)
    wrong = secured.http.post("/prompt", json=body, headers={"Authorization": "Bearer not-a-key"})
    accepted = secured.http.post("/prompt", json=body, headers={"Authorization": f"Bearer {KEYS[1]}"})

    assert refused.status_code == 401
    assert refused.json() == {
        "error": "Missing bearer token: send Authorization: Bearer <key>",
        "location": "authorization",
    }
    assert refused.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "Invalid bearer token", "location": "authorization"}
    assert accepted.status_code == 200, accepted.text
    assert len(accepted.json()["images"]) == 1
    assert secured.http.get("/health").status_code == 200
    assert secured.http.get("/ready").status_code == 200
    assert secured.http.get("/docs/json").json()["security"] == [{"bearerAuth": []}]


def test_the_log_never_holds_a_key(secured: ApiServer) -> None:
    secured.http.get("/models", headers={"Authorization": f"Bearer {KEYS[0]}"})
    secured.http.get("/models", headers={"Authorization": f"Bearer {KEYS[0]}-wrong"})

    def models_statuses() -> list[int]:
        requests = [entry for entry in secured.log_entries() if entry.get("msg") == "request"]
        return [entry["status"] for entry in requests if entry.get("path") == "/models"][-2:]

    # The access line is written once the response has been sent, possibly just after the client read it.
    wait_until(lambda: models_statuses() == [200, 401], 30, "both requests' log lines")
    log = secured.log_path.read_text(errors="replace")
    assert all(key not in log for key in KEYS)
    (started,) = [entry for entry in secured.log_entries() if entry.get("msg") == "starting"]
    assert started["settings"]["api_keys"] == ["**********", "**********"]
