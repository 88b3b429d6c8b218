"""GET /metrics against a real server and CPU ComfyUI, after a scripted set of jobs: a success, a node failure, an
input downloaded once and then found in the cache, an upload, an async job whose webhook is delivered, and one whose
receiver is down; then ComfyUI killed and restarted. Each metric is read back with prometheus-client's own parser."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.files import FileServer
from tests.support.graphs import img2img, png_bytes, solid
from tests.support.receiver import WebhookReceiver
from tests.support.server import ApiServer, closed_port, trusting, wait_until

ServerFactory = Callable[..., ApiServer]
KEY = "metrics-test-key"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    root = tmp_path_factory.mktemp("metrics-files")
    (root / "input.png").write_bytes(png_bytes(16, 16))
    with FileServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def down_url() -> str:
    """A receiver that is down: nothing listens on its port."""
    return f"http://127.0.0.1:{closed_port()}/hook"


@pytest.fixture(scope="module")
def metered(make_server: ServerFactory, files: FileServer, receiver: WebhookReceiver, down_url: str) -> ApiServer:
    env = trusting(files.url, receiver.url, down_url)
    return make_server(
        "metrics",
        API_KEYS=KEY,
        PROMPT_WEBHOOK_RETRIES="2",
        WEBHOOK_RETRY_WINDOW_S="0",
        ALWAYS_RESTART_COMFYUI="true",
        **env,
    ).start()


def scrape(
    server: ApiServer, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def post(server: ApiServer, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.url}/prompt", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)


def test_metrics_count_what_the_server_did(
    metered: ApiServer, files: FileServer, receiver: WebhookReceiver, down_url: str
) -> None:
    before = scrape(metered)
    (metered.base / "input" / "corrupt.png").write_text("this is not an image")

    assert post(metered, {"prompt": solid(8, 8)}).status_code == 200
    assert post(metered, {"prompt": img2img("corrupt.png")}).status_code == 500
    uploaded = post(metered, {"prompt": solid(12, 12), "http_upload": {"url_prefix": f"{files.url}/up"}})
    assert uploaded.status_code == 200, uploaded.text
    for _ in range(2):  # downloaded once, then found in the cache
        assert post(metered, {"prompt": img2img(f"{files.url}/input.png")}).status_code == 200
    hooked = {"prompt": solid(9, 9), "webhook_v2": receiver.url_for("/metrics")}
    assert post(metered, hooked).status_code == 202
    receiver.wait_for(lambda got: any(request.path == "/metrics" for request in got), timeout_s=120)
    down = {"prompt": solid(10, 10), "webhook_v2": down_url}
    assert post(metered, down).status_code == 202

    after = wait_until(
        lambda: (
            (samples := scrape(metered))
            and value(samples, "comfyui_api_webhooks_total", outcome="failed") >= 1
            and samples
        ),
        120,
        "the failed webhook to be counted",
    )

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("comfyui_api_jobs_total", entry="prompt", outcome="succeeded") == 6
    assert grew("comfyui_api_jobs_total", entry="prompt", outcome="failed") == 1
    assert grew("comfyui_api_http_requests_total", route="/prompt", method="POST", status="200") == 4
    assert grew("comfyui_api_http_requests_total", route="/prompt", method="POST", status="500") == 1
    assert grew("comfyui_api_http_requests_total", route="/prompt", method="POST", status="202") == 2
    assert grew("comfyui_api_http_request_duration_seconds_count", route="/prompt", method="POST") == 7
    for phase in ("total", "preprocess", "queue_wait", "execution"):
        assert grew("comfyui_api_job_phase_seconds_count", phase=phase) >= 4, phase
    assert grew("comfyui_api_node_execution_seconds_count", class_type="SaveImage") >= 4
    assert grew("comfyui_api_node_execution_seconds_count", class_type="LoadImage") >= 1
    assert grew("comfyui_api_cache_requests_total", result="miss") == 1
    assert grew("comfyui_api_cache_requests_total", result="hit") == 1
    assert grew("comfyui_api_cache_bytes_total", result="hit") == len(png_bytes(16, 16))
    assert grew("comfyui_api_transfer_bytes_total", direction="download", provider="http") == len(png_bytes(16, 16))
    assert grew("comfyui_api_transfer_duration_seconds_count", direction="download", provider="http") == 1
    assert grew("comfyui_api_transfer_duration_seconds_count", direction="upload", provider="http") == 1
    assert grew("comfyui_api_transfer_bytes_total", direction="upload", provider="http") > 0
    assert grew("comfyui_api_job_phase_seconds_count", phase="upload") == 1
    assert grew("comfyui_api_webhooks_total", outcome="delivered") == 1
    assert grew("comfyui_api_webhooks_total", outcome="failed") == 1
    assert grew("comfyui_api_webhook_attempts_total", result="delivered") == 1
    assert grew("comfyui_api_webhook_attempts_total", result="error") == 2  # PROMPT_WEBHOOK_RETRIES=2
    assert value(after, "comfyui_api_jobs_in_flight") == 0
    assert value(after, "comfyui_api_comfyui_up") == 1
    assert value(after, "comfyui_api_event_streams_open") == 0


def test_metrics_are_open_without_a_key_and_carry_no_job_ids_or_urls(metered: ApiServer, files: FileServer) -> None:
    assert post(metered, {"prompt": solid(11, 11), "id": "metrics-private-id"}).status_code == 200
    text = httpx.get(f"{metered.url}/metrics", timeout=30).text  # no Authorization header
    assert "metrics-private-id" not in text
    assert files.url not in text and "127.0.0.1" not in text
    assert httpx.get(f"{metered.url}/prompt/metrics-private-id", timeout=30).status_code == 401


def test_metrics_require_the_key_when_told_to(make_server: ServerFactory) -> None:
    server = make_server("metrics-auth", API_KEYS=KEY, METRICS_REQUIRE_AUTH="true").start()
    assert httpx.get(f"{server.url}/metrics", timeout=30).status_code == 401
    assert scrape(server, {"Authorization": f"Bearer {KEY}"})


def test_a_comfyui_restart_is_counted_by_its_cause(metered: ApiServer) -> None:
    before = value(scrape(metered), "comfyui_api_comfyui_restarts_total", cause="exited")
    metered.comfy_process().kill()

    after = wait_until(
        lambda: (
            (samples := scrape(metered))
            and value(samples, "comfyui_api_comfyui_restarts_total", cause="exited") > before
            and value(samples, "comfyui_api_comfyui_up") == 1
            and samples
        ),
        180,
        "ComfyUI to be restarted",
    )

    assert value(after, "comfyui_api_comfyui_restarts_total", cause="exited") == before + 1
    assert post(metered, {"prompt": solid(13, 13)}).status_code == 200
