"""A broker outage loses no accepted job: a fleet server on a RabbitMQ node of this test alone takes async jobs,
the node stops with them queued, and the server refuses new submissions with 503 (and says it is not ready) while it
is down; once the node is back, the server reconnects by itself and runs every job it accepted."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.fernet import Fernet

from tests.support.graphs import slow, solid
from tests.support.rabbitmq import OwnBroker
from tests.support.receiver import WebhookReceiver
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, trusting, wait_until

JOB_DEADLINE_S = STARTUP_DEADLINE_S + 180


def test_jobs_accepted_before_a_broker_restart_all_run_after_it(
    make_server: Callable[..., ApiServer], own_broker: OwnBroker, database_url: str
) -> None:
    with WebhookReceiver() as receiver:
        server = make_server(
            "fleet-restart",
            BROKER_URL=own_broker.url,
            JOB_STORE_URL=database_url,
            FLEET_SECRET_KEY=Fernet.generate_key().decode(),
            FLEET_QUEUE_PREFIX="restart-test",
            **trusting(receiver.url),
        ).start()
        wait_until(lambda: server.http.get("/ready").status_code == 200, 120, "the server to be ready")
        ids = ["restart-blocker"] + [f"restart-{index}" for index in range(5)]
        for job_id in ids:
            graph = slow() if job_id == "restart-blocker" else solid(8, 8, prefix=job_id)
            body = {"prompt": graph, "id": job_id, "webhook_v2": receiver.url_for(f"/{job_id}")}
            assert server.http.post("/prompt", json=body).status_code == 202

        own_broker.stop()

        wait_until(lambda: server.http.get("/ready").status_code == 503, 60, "the server to say it is not ready")
        refused = server.http.post("/prompt", json={"prompt": solid(8, 8), "webhook_v2": receiver.url_for("/late")})
        assert refused.status_code == 503, refused.text

        own_broker.start()

        wait_until(lambda: server.http.get("/ready").status_code == 200, 120, "the server to be ready again")
        for job_id in ids:
            ended = wait_until(
                lambda job_id=job_id: (
                    (body := server.http.get(f"/prompt/{job_id}").json())["status"]
                    in {"succeeded", "failed", "canceled"}
                    and body
                ),
                JOB_DEADLINE_S,
                f"job {job_id} to end",
                interval_s=0.2,
            )
            assert ended["status"] == "succeeded", ended
        got = receiver.wait_for(lambda got: {r.path for r in got} >= {f"/{job_id}" for job_id in ids}, 60)
        assert sorted(r.path for r in got if r.json()["type"] == "prompt.complete") == sorted(f"/{i}" for i in ids)
