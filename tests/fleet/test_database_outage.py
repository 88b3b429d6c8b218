"""A job store outage loses no accepted job: a fleet server on a PostgreSQL server of this test alone says it is not
ready and refuses submissions with 503 while the database is down, takes no job from the broker meanwhile, and
once the database is back serves again; a job accepted before the outage ends with its record written after it, and
one queued while its record could not be written is withdrawn: it never runs."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.fernet import Fernet

from tests.support.graphs import slow, solid
from tests.support.postgres import OwnPostgres
from tests.support.receiver import WebhookReceiver
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, trusting, wait_until

JOB_DEADLINE_S = STARTUP_DEADLINE_S + 180


def test_a_database_outage_refuses_submissions_and_loses_no_accepted_job(
    make_server: Callable[..., ApiServer], own_postgres: OwnPostgres, broker_url: str
) -> None:
    with WebhookReceiver() as receiver:
        server = make_server(
            "fleet-db-outage",
            BROKER_URL=broker_url,
            JOB_STORE_URL=own_postgres.url,
            FLEET_SECRET_KEY=Fernet.generate_key().decode(),
            FLEET_QUEUE_PREFIX="db-outage-test",
            **trusting(receiver.url),
        ).start()
        wait_until(lambda: server.http.get("/ready").status_code == 200, 120, "the server to be ready")
        body = {"prompt": slow(size=1408), "id": "outage-running", "webhook_v2": receiver.url_for("/outage-running")}
        assert server.http.post("/prompt", json=body).status_code == 202
        wait_until(
            lambda: server.http.get("/prompt/outage-running").json()["status"] == "running", 120, "the job to run"
        )

        own_postgres.stop()

        wait_until(lambda: server.http.get("/ready").status_code == 503, 60, "the server to say it is not ready")
        late = {"prompt": solid(8, 8), "id": "outage-late", "webhook_v2": receiver.url_for("/outage-late")}
        refused = server.http.post("/prompt", json=late)
        assert refused.status_code == 503, refused.text
        # Without an id, a job is queued while its record is written: the write fails, and the job is withdrawn.
        fresh = {"prompt": solid(9, 9), "webhook_v2": receiver.url_for("/outage-fresh")}
        refused = server.http.post("/prompt", json=fresh)
        assert refused.status_code == 503, refused.text
        withdrawn = wait_until(
            lambda: next(
                (
                    entry["request_id"]
                    for entry in server.log_entries()
                    if entry.get("msg") == "a job queued without its record was withdrawn"
                ),
                None,
            ),
            30,
            "the job queued without its record to be withdrawn",
        )
        # The running job ends meanwhile: its webhook goes out, its record waits for the database.
        got = receiver.wait_for(lambda got: any(r.path == "/outage-running" for r in got), JOB_DEADLINE_S)
        assert [r.json()["type"] for r in got if r.path == "/outage-running"] == ["prompt.complete"]

        own_postgres.start()

        wait_until(lambda: server.http.get("/ready").status_code == 200, 120, "the server to be ready again")
        ended = wait_until(
            lambda: (found := server.http.get("/prompt/outage-running").json())["status"] == "succeeded" and found,
            60,
            "the job's record to be written",
        )
        assert ended["attempts"] == 1
        assert server.http.post("/prompt", json=late).status_code == 202
        wait_until(
            lambda: server.http.get("/prompt/outage-late").json().get("status") == "succeeded",
            JOB_DEADLINE_S,
            "a job submitted after the outage to succeed",
        )
        # Taken before it (both waited in the queue), the withdrawn job was dropped: recorded canceled, never run.
        dropped = server.http.get(f"/prompt/{withdrawn}").json()
        assert dropped["status"] == "canceled", dropped
        assert not any(request.path == "/outage-fresh" for request in receiver.requests)
