"""Fleet mode end to end: two server processes, each with its own real CPU ComfyUI, sharing the session's private
RabbitMQ vhost and PostgreSQL database. 100 jobs submitted through both replicas all run once with the right outputs
and both workers take some; any replica answers status and streams the events of a job the other runs; a cancel
reaches the worker that runs the job; urgent jobs run before earlier ones of a lower priority; a job that kills
ComfyUI every time goes to the dead-letter queue after JOB_MAX_ATTEMPTS with its record failed; a SIGTERMed worker
hands its job back and a SIGKILLed one loses it, and either way it completes on the other. Jobs go first to the
worker that has their models loaded, and to any once their FLEET_MODEL_WAIT_S is over. Comfy API v2 jobs go
through the queue too: an asset uploaded to an API-only replica is a worker's input, and the output is served by every
replica. A third server, on a
broker of its own, keeps every accepted job across a restart of that broker and refuses submissions while it is
down."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from PIL import Image

from comfyui_api.fleet.relay import CHUNK_BYTES
from tests.support.graphs import node, png_bytes, slow, solid, txt2img
from tests.support.rabbitmq import queue_depth
from tests.support.receiver import WebhookReceiver
from tests.support.server import STARTUP_DEADLINE_S, ApiServer, trusting, wait_until
from tests.test_v2_durability import KILL_COMFYUI_NODE, kills_comfyui, sse

ServerFactory = Callable[..., ApiServer]
TERMINAL = {"succeeded", "failed", "canceled"}
JOB_DEADLINE_S = STARTUP_DEADLINE_S + 180
PREFIX = f"fleet-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def fleet_env(broker_url: str, database_url: str, receiver: WebhookReceiver) -> dict[str, str]:
    return {
        "BROKER_URL": broker_url,
        "JOB_STORE_URL": database_url,
        "FLEET_SECRET_KEY": Fernet.generate_key().decode(),
        "FLEET_QUEUE_PREFIX": PREFIX,
        "JOB_MAX_ATTEMPTS": "3",
        # A SIGTERM drain waits this long for the running job, then hands it back.
        "SHUTDOWN_GRACE_PERIOD_S": "1",
        "ALWAYS_RESTART_COMFYUI": "true",
        # A job waits this long for a worker warm for its models, then goes to any.
        "FLEET_MODEL_WAIT_S": "2",
        **trusting(receiver.url),
    }


@pytest.fixture(scope="module")
def fleet(make_server: ServerFactory, fleet_env: dict[str, str]) -> list[ApiServer]:
    servers = [make_server(f"fleet-{name}", **fleet_env) for name in "ab"]
    for server in servers:
        (server.base / "custom_nodes" / "kill_comfyui.py").write_text(KILL_COMFYUI_NODE)
        server.start()
    for server in servers:
        wait_until(lambda server=server: server.http.get("/ready").status_code == 200, 120, "the replica to be ready")
    return servers


def record(server: ApiServer, job_id: str) -> dict[str, Any]:
    response = server.http.get(f"/prompt/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(server: ApiServer, job_id: str, *statuses: str) -> dict[str, Any]:
    wanted = set(statuses or TERMINAL)
    return wait_until(
        lambda: (body := record(server, job_id))["status"] in wanted and body,
        JOB_DEADLINE_S,
        f"job {job_id} to be {' or '.join(sorted(wanted))}",
        interval_s=0.2,
    )


def ran(server: ApiServer, job_id: str) -> bool:
    """Whether this replica's ComfyUI ran the job (its log says the prompt completed)."""
    return any(
        entry.get("msg") == "prompt completed" and entry.get("request_id") == job_id for entry in server.log_entries()
    )


def queued_on(servers: list[ApiServer], job_id: str) -> ApiServer:
    """The replica whose ComfyUI the job was queued in."""
    return wait_until(
        lambda: next(
            (
                server
                for server in servers
                if any(
                    entry.get("msg") == "prompt queued" and entry.get("request_id") == job_id
                    for entry in server.log_entries()
                )
            ),
            None,
        ),
        JOB_DEADLINE_S,
        f"job {job_id} to be queued in a ComfyUI",
    )


def hook_types(receiver: WebhookReceiver, path: str) -> list[str]:
    """The types of the webhooks sent to `path`, once one came."""
    got = receiver.wait_for(lambda got: any(r.path == path for r in got), timeout_s=60)
    return [request.json()["type"] for request in got if request.path == path]


def stop_and_restart(server: ApiServer, how: signal.Signals) -> None:
    """Stop a replica with `how`, wait for it and its ComfyUI to go, and start it again on the same folder."""
    comfy = server.comfy_process()
    server.signal(how)
    server.wait_exit(120)
    comfy.wait(60)
    server.start()
    wait_until(lambda: server.http.get("/ready").status_code == 200, 120, "the replica to be ready again")


def image_size(encoded: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return image.size


def test_jobs_through_both_replicas_run_once_each_with_their_own_outputs(fleet: list[ApiServer]) -> None:
    count = 100

    def run(index: int) -> tuple[int, httpx.Response]:
        server = fleet[index % 2]
        body = {"prompt": solid(8 + index, 8, prefix=f"fleet{index}"), "id": f"fleet-sync-{index}", "timeout_s": 600}
        return index, httpx.post(f"{server.url}/prompt", json=body, timeout=JOB_DEADLINE_S)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(run, range(count)))

    for index, response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == f"fleet-sync-{index}"
        [image] = body["images"]
        assert image_size(image) == (8 + index, 8)
    ids = [f"fleet-sync-{index}" for index in range(count)]
    ran_on = [[server for server in fleet if ran(server, job_id)] for job_id in ids]
    assert all(len(servers) == 1 for servers in ran_on), "each job ran exactly once"
    assert {id(servers[0]) for servers in ran_on} == {id(server) for server in fleet}, "both workers ran some"
    for job_id in ids:  # either replica answers for any job, from the shared store
        for server in fleet:
            found = record(server, job_id)
            assert found["status"] == "succeeded" and found["attempts"] == 1


def test_an_async_job_streams_its_events_and_status_on_the_other_replica(
    fleet: list[ApiServer], receiver: WebhookReceiver
) -> None:
    submitted_on, other = fleet
    body = {"prompt": slow(size=512, blurs=2), "id": "fleet-async", "webhook_v2": receiver.url_for("/fleet-async")}
    assert submitted_on.http.post("/prompt", json=body).status_code == 202

    with other.http.stream("GET", "/prompt/fleet-async/events") as response:
        assert response.status_code == 200, response.read()
        events = list(sse(response))

    statuses = [data["status"] for _, name, data in events if name == "status"]
    assert statuses[-1] == "succeeded", events
    assert hook_types(receiver, "/fleet-async") == ["prompt.complete"]
    assert record(other, "fleet-async")["status"] == "succeeded"


def test_a_cancel_on_one_replica_reaches_the_job_running_on_the_other(
    fleet: list[ApiServer], receiver: WebhookReceiver
) -> None:
    body = {"prompt": slow(size=1504), "id": "fleet-cancel", "webhook_v2": receiver.url_for("/fleet-cancel")}
    assert fleet[0].http.post("/prompt", json=body).status_code == 202
    runner = queued_on(fleet, "fleet-cancel")
    other = fleet[1] if runner is fleet[0] else fleet[0]
    wait_status(other, "fleet-cancel", "running")

    response = other.http.post("/interrupt", json={"id": "fleet-cancel"})

    assert response.status_code == 200, response.text
    assert wait_status(other, "fleet-cancel")["status"] == "canceled"


def test_a_job_that_kills_comfyui_every_time_is_dead_lettered_with_its_record_failed(
    fleet: list[ApiServer], receiver: WebhookReceiver, broker_url: str
) -> None:
    body = {"prompt": kills_comfyui(), "id": "fleet-poison", "webhook_v2": receiver.url_for("/fleet-poison")}
    assert fleet[1].http.post("/prompt", json=body).status_code == 202

    ended = wait_status(fleet[0], "fleet-poison")

    assert ended["status"] == "failed", ended
    assert ended["attempts"] == 3
    assert len(ended["attempt_errors"]) == 3
    assert wait_until(
        lambda: asyncio.run(queue_depth(broker_url, f"{PREFIX}.jobs.dead")) == 1, 60, "the dead-lettered job"
    )
    for server in fleet:  # both ComfyUIs are back, and both replicas serve
        wait_until(lambda server=server: server.http.get("/ready").status_code == 200, 180, "the replica to be ready")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["drained", "killed"])
def test_a_job_whose_worker_stops_completes_on_the_other(
    fleet: list[ApiServer], receiver: WebhookReceiver, how: signal.Signals
) -> None:
    job_id = f"fleet-{how.name.lower()}"
    # A graph of its own: ComfyUI would take an identical one's nodes from its cache, in no time.
    size = 1472 if how is signal.SIGTERM else 1440
    body = {"prompt": slow(size=size), "id": job_id, "webhook_v2": receiver.url_for(f"/{job_id}")}
    assert fleet[0].http.post("/prompt", json=body).status_code == 202
    victim = queued_on(fleet, job_id)
    survivor = fleet[1] if victim is fleet[0] else fleet[0]
    wait_status(survivor, job_id, "running")

    stop_and_restart(victim, how)

    ended = wait_status(survivor, job_id)
    assert ended["status"] == "succeeded", ended
    assert ended["attempts"] == 2
    [first] = ended["attempt_errors"]
    assert ("handed back" in first["error"]) == (how is signal.SIGTERM), first
    assert hook_types(receiver, f"/{job_id}") == ["prompt.complete"]


def test_urgent_jobs_run_before_earlier_ones_of_a_lower_priority(
    fleet: list[ApiServer], receiver: WebhookReceiver
) -> None:
    def submit(job_id: str, graph: dict[str, Any], priority: int) -> None:
        body = {"prompt": graph, "id": job_id, "priority": priority, "webhook_v2": receiver.url_for(f"/{job_id}")}
        response = fleet[0].http.post("/prompt", json=body)
        assert response.status_code == 202, response.text

    # Every slot of both workers (1 + FLEET_LOOKAHEAD each) busy with a slow job; then low jobs, then urgent ones.
    blockers = [f"fleet-blocker-{index}" for index in range(4)]
    for index, job_id in enumerate(blockers):
        submit(job_id, slow(size=1280 + 16 * index), 0)
    wait_until(
        lambda: all(record(fleet[0], job_id)["status"] == "running" for job_id in blockers[:1]), 120, "a blocker to run"
    )
    low = [f"fleet-low-{index}" for index in range(4)]
    urgent = [f"fleet-urgent-{index}" for index in range(4)]
    for job_id in low:
        submit(job_id, solid(8, 8, prefix=job_id), 0)
    for job_id in urgent:
        submit(job_id, solid(8, 8, prefix=job_id), 2)

    ended = {job_id: wait_status(fleet[0], job_id) for job_id in blockers + low + urgent}

    assert {body["status"] for body in ended.values()} == {"succeeded"}
    for server in fleet:  # each worker queued the urgent jobs it took in its ComfyUI before any low one
        # The order of its log: start times of such short jobs can fall on the same millisecond.
        order = [
            entry["request_id"]
            for entry in server.log_entries()
            if entry.get("msg") == "prompt queued" and entry.get("request_id") in low + urgent
        ]
        urgent_here = [index for index, job_id in enumerate(order) if job_id in urgent]
        low_here = [index for index, job_id in enumerate(order) if job_id in low]
        if urgent_here and low_here:
            assert max(urgent_here) < min(low_here), order


def test_a_priority_above_the_highest_level_is_refused_at_its_field(fleet: list[ApiServer]) -> None:
    response = fleet[0].http.post("/prompt", json={"prompt": solid(8, 8), "priority": 3, "webhook_v2": "x"})

    assert response.status_code == 400
    assert response.json()["location"] == "priority"


@pytest.fixture(scope="module")
def gateway(fleet: list[ApiServer], make_server: ServerFactory, fleet_env: dict[str, str]) -> ApiServer:
    """An API-only replica (no ComfyUI) in front of the two workers."""
    server = make_server("fleet-gateway", **fleet_env, FLEET_ROLE="api").start()
    wait_until(lambda: server.http.get("/ready").status_code == 200, 120, "the API-only replica to be ready")
    return server


def test_an_api_only_replica_queues_jobs_for_the_workers_and_answers_for_them(
    fleet: list[ApiServer], gateway: ApiServer, receiver: WebhookReceiver
) -> None:
    assert "ComfyUI is up" not in gateway.log_path.read_text()

    synced = gateway.http.post("/prompt", json={"prompt": solid(21, 13, prefix="gateway"), "id": "gateway-sync"})
    body = {"prompt": slow(size=544, blurs=2), "id": "gateway-async", "webhook_v2": receiver.url_for("/gateway")}
    assert gateway.http.post("/prompt", json=body).status_code == 202
    with gateway.http.stream("GET", "/prompt/gateway-async/events") as response:
        events = list(sse(response))

    assert synced.status_code == 200, synced.text
    assert image_size(synced.json()["images"][0]) == (21, 13)
    assert [data["status"] for _, name, data in events if name == "status"][-1] == "succeeded"
    assert hook_types(receiver, "/gateway") == ["prompt.complete"]
    assert any(ran(server, "gateway-async") for server in fleet)
    metrics = gateway.http.get("/metrics").text
    for connected in ("fleet_broker_connected", "fleet_store_ok", "fleet_ready"):
        assert f"comfyui_api_{connected} 1.0" in metrics, connected


@pytest.mark.parametrize("through", ["gateway", "replica"])
def test_a_large_sync_answer_arrives_whole_from_the_worker_that_ran_it(
    through: str, fleet: list[ApiServer], gateway: ApiServer
) -> None:
    # Noise compresses badly: a PNG of about 3 MB, so the answer (4 MB of JSON) is streamed, and through the broker
    # in many chunks from a worker of another replica: always so through the API-only replica; through a replica that
    # is a worker too, it may be its own worker's, which hands it over in process.
    server = gateway if through == "gateway" else fleet[0]
    graph = {
        "1": node("EmptyImage", width=1024, height=1024, batch_size=1, color=0x808080),
        "2": node("ImageAddNoise", image=["1", 0], seed=7, strength=0.5),
        "3": node("SaveImage", images=["2", 0], filename_prefix=f"large-{through}"),
    }
    job_id = f"large-{through}"

    response = server.http.post("/prompt", json={"prompt": graph, "id": job_id}, timeout=JOB_DEADLINE_S)

    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content) > 8 * CHUNK_BYTES
    [image] = response.json()["images"]
    assert image_size(image) == (1024, 1024)
    assert record(server, job_id)["status"] == "succeeded"


def loads_asset(asset_id: str, prefix: str) -> dict[str, Any]:
    """A graph that saves the image of a v2 asset again."""
    reference = {"__type": "core/ASSET", "info": {"id": asset_id}}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_a_v2_job_reads_an_asset_uploaded_to_one_replica_and_its_output_is_served_by_every_replica(
    fleet: list[ApiServer], gateway: ApiServer
) -> None:
    uploaded = gateway.http.post(
        "/api/v2/assets",
        files={"file": ("input.png", png_bytes(23, 17), "image/png")},
        data={"file_path": "input.png", "content_type": "image/png"},
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    workflow = loads_asset(uploaded.json()["id"], "v2-fleet")

    response = gateway.http.post("/api/v2/jobs", json={"workflow": workflow, "metadata": {"priority": "1"}})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    with fleet[0].http.stream("GET", f"/api/v2/jobs/{job_id}/events") as stream:
        events = list(sse(stream))

    assert [data["status"] for _, name, data in events if name == "status"][-1] == "succeeded", events
    assert [name for _, name, _ in events].count("output") == 1
    [ran_on] = [server for server in fleet if ran(server, job_id)]
    for server in (gateway, *fleet):  # the output is the fleet's: whichever replica is asked serves it
        job = server.http.get(f"/api/v2/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["metadata"] == {"priority": "1"}
        [output] = job["outputs"]
        content = server.http.get(f"/api/v2/assets/{output['id']}/content")
        assert content.status_code == 200
        with Image.open(io.BytesIO(content.content)) as image:
            assert image.size == (23, 17)
    assert ran_on in fleet


def test_a_v2_job_submitted_on_one_replica_is_canceled_from_another_wherever_it_runs(
    fleet: list[ApiServer], gateway: ApiServer
) -> None:
    response = fleet[0].http.post("/api/v2/jobs", json={"workflow": slow(size=1376), "metadata": {"t": "v2"}})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    runner = queued_on(fleet, job_id)
    other = fleet[1] if runner is fleet[0] else fleet[0]

    with other.http.stream("GET", f"/api/v2/jobs/{job_id}/events") as stream:
        assert stream.status_code == 200
        frames = sse(stream)
        first = next(frames)
        assert first[1] == "status" and first[2]["status"] in {"queued", "running"}
        canceled = gateway.http.post(f"/api/v2/jobs/{job_id}/cancel")
        assert canceled.status_code == 200, canceled.text
        events = [first, *frames]

    assert events[-1][2]["status"] == "canceled", events
    assert other.http.get(f"/api/v2/jobs/{job_id}").json()["status"] == "canceled"
    listed = gateway.http.get("/api/v2/jobs", params={"metadata[t]": "v2"}).json()
    assert [job["id"] for job in listed["jobs"]] == [job_id], listed
    assert not ran(runner, job_id)


def test_a_v2_job_is_refused_at_its_field_before_it_is_queued(fleet: list[ApiServer]) -> None:
    too_urgent = fleet[0].http.post("/api/v2/jobs", json={"workflow": solid(8, 8), "metadata": {"priority": "3"}})
    not_a_level = fleet[0].http.post("/api/v2/jobs", json={"workflow": solid(8, 8), "metadata": {"priority": "hi"}})
    no_asset = fleet[1].http.post("/api/v2/jobs", json={"workflow": loads_asset(str(uuid.uuid4()), "none")})

    assert too_urgent.status_code == 422 and "metadata.priority" in too_urgent.json()["error"]["message"]
    assert not_a_level.status_code == 422
    assert not_a_level.json()["error"]["details"] == {"location": "metadata.priority"}
    assert no_asset.status_code == 422
    assert no_asset.json()["error"]["code"] == "missing_asset"
    assert no_asset.json()["error"]["details"] == {"location": "prompt.1.inputs.image"}


def test_jobs_go_first_to_the_worker_warm_for_their_models_and_to_any_once_their_wait_is_over(
    fleet: list[ApiServer],
) -> None:
    def generate(server: ApiServer, job_id: str, seed: int) -> str:
        body = {"prompt": txt2img(seed=seed), "id": job_id, "timeout_s": 600}
        response = httpx.post(f"{server.url}/prompt", json=body, timeout=JOB_DEADLINE_S)
        assert response.status_code == 200, response.text
        return job_id

    first = generate(fleet[0], "models-first", 1)
    [warm] = [server for server in fleet if ran(server, first)]
    cold = fleet[1] if warm is fleet[0] else fleet[0]

    # Both workers idle: each job of the same checkpoint goes to the one that has it loaded, whichever replica took
    # it (without routing, the broker would hand them to the two workers in turn).
    following = [generate(fleet[index % 2], f"models-next-{index}", 2 + index) for index in range(4)]
    assert all(ran(warm, job_id) for job_id in following)

    # The warm worker gone: the job waits FLEET_MODEL_WAIT_S in its model queue, then any worker takes it.
    comfy = warm.comfy_process()
    warm.signal(signal.SIGTERM)
    warm.wait_exit(120)
    comfy.wait(60)
    try:
        fallen = generate(cold, "models-fallback", 9)
        assert ran(cold, fallen)
        assert record(cold, fallen)["attempts"] == 1
    finally:
        warm.start()
        wait_until(lambda: warm.http.get("/ready").status_code == 200, 120, "the replica to be ready again")


def test_a_job_that_kills_comfyui_from_a_model_queue_is_dead_lettered_too(
    fleet: list[ApiServer], receiver: WebhookReceiver, broker_url: str
) -> None:
    warming = {"prompt": txt2img(seed=11), "id": "poison-warms", "timeout_s": 600}
    assert httpx.post(f"{fleet[0].url}/prompt", json=warming, timeout=JOB_DEADLINE_S).status_code == 200
    dead_before = asyncio.run(queue_depth(broker_url, f"{PREFIX}.jobs.dead"))
    # The checkpoint loader (not run: nothing uses it) gives the job the models a worker is warm for: it is
    # published to their model queue, whose own dead-letter exchange leads back to the priority queues.
    graph = {**kills_comfyui(), "90": txt2img()["1"]}
    body = {"prompt": graph, "id": "poison-model", "webhook_v2": receiver.url_for("/poison-model")}
    assert fleet[1].http.post("/prompt", json=body).status_code == 202

    ended = wait_status(fleet[0], "poison-model")

    assert ended["status"] == "failed", ended
    assert ended["attempts"] == 3 and len(ended["attempt_errors"]) == 3, ended
    assert wait_until(
        lambda: asyncio.run(queue_depth(broker_url, f"{PREFIX}.jobs.dead")) == dead_before + 1,
        60,
        "the dead-lettered job",
    )
    for server in fleet:
        wait_until(lambda server=server: server.http.get("/ready").status_code == 200, 180, "the replica to be ready")


def test_a_sync_request_whose_client_leaves_is_canceled_on_the_worker(fleet: list[ApiServer]) -> None:
    # Seconds of work: the client gives up long before its end.
    body = {"prompt": slow(size=1600, blurs=5), "id": "fleet-left"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fleet[0].url}/prompt", json=body, timeout=httpx.Timeout(3.0, connect=5.0))

    ended = wait_status(fleet[1], "fleet-left")

    assert ended["status"] == "canceled", ended
