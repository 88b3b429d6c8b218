"""The metrics registry: its own text rendering writes what prometheus-client's does, a job's phases and node times
are read from its timestamps, and the README's metrics table and the Grafana dashboard name the metrics served."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from comfyui_api.app import _readings
from comfyui_api.jobstore.records import JobKind, JobRecord
from comfyui_api.metrics import Metrics, Reading
from comfyui_api.pipeline.jobs import Job
from comfyui_api.state import ServerState

REPO = Path(__file__).resolve().parents[2]


def _fed() -> Metrics:
    metrics = Metrics()
    metrics.request("/prompt/{id}", "GET", 404, 0.002)
    metrics.request("/prompt", "POST", 200, 0.3)
    metrics.job_ended("prompt", "succeeded", {"total": 1.5, "execution": 1.0}, [("KSampler", 0.9)])
    metrics.job_ended("v2", "failed", {"total": 0.1}, [])
    metrics.transferred("download", "s3", 1234, 0.5)
    metrics.cache_looked_up(512, hit=True)
    metrics.cache_evicted(99)
    metrics.webhook_attempted("error")
    metrics.webhook_ended(delivered=False)
    # A label value the format must escape: a custom node's class name may hold any character.
    metrics.job_ended("prompt", "succeeded", {}, [('Odd "node"\\ \n', 0.01)])
    metrics.system_event_dropped("progress")
    metrics.comfy_restarted("exited")
    metrics.watch(
        [Reading("jobs_in_flight", "Jobs held.", "gauge", lambda: 3), Reading("r", "R.", "counter", lambda: 2)]
    )
    return metrics


def test_the_text_is_what_prometheus_client_writes() -> None:
    metrics = _fed()
    assert metrics.render() == generate_latest(metrics.registry)


def test_the_text_parses_to_the_values_counted() -> None:
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_fed().render().decode())
        for sample in family.samples
    }
    assert samples[("comfyui_api_jobs_total", (("entry", "v2"), ("outcome", "failed")))] == 1
    assert samples[("comfyui_api_node_execution_seconds_count", (("class_type", 'Odd "node"\\ \n'),))] == 1
    assert samples[("comfyui_api_transfer_bytes_total", (("direction", "download"), ("provider", "s3")))] == 1234
    assert samples[("comfyui_api_jobs_in_flight", ())] == 3
    assert samples[("comfyui_api_r_total", ())] == 2
    assert ("comfyui_api_jobs_created", (("entry", "v2"), ("outcome", "failed"))) not in samples


def test_a_jobs_phases_and_node_times_come_from_its_timestamps() -> None:
    job = Job(id="j", received_at=1_000)
    job.record = JobRecord(id="j", created_at=1_000, kind=JobKind.PROMPT)
    job.preprocessed_at = 1_200
    job.exec_start, job.exec_end = 1_500, 2_500
    job.node_starts = {"9": 2_100, "3": 1_500}
    job.graph = {"3": {"class_type": "KSampler"}, "9": {"class_type": "SaveImage"}}
    job.stats["upload_time"] = 300

    assert job.phases(now=3_000) == {
        "total": 2.0,
        "preprocess": 0.2,
        "queue_wait": 0.3,
        "execution": 1.0,
        "upload": 0.3,
    }
    assert job.node_times() == [("KSampler", 0.6), ("SaveImage", 0.4)]
    assert job.entry == "prompt"
    assert Job(id="never-ran").node_times() == []
    job.from_workflow = True
    assert job.entry == "workflow"


def _exposed() -> set[str]:
    """Every metric a server exposes, fleet mode's included, by its family name as Prometheus sees it."""
    fleet = SimpleNamespace(broker=SimpleNamespace(connected=True), store_ok=True)
    events = SimpleNamespace(queue_remaining=0, connections=1)
    metrics = Metrics()
    metrics.watch(_readings(ServerState(), events, [], SimpleNamespace(streams=0), fleet))  # type: ignore[arg-type]
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(metrics.render().decode())
    }


def _referenced(text: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"comfyui_api_[a-z_]+", text)}


def test_the_readme_documents_every_metric_and_the_dashboard_uses_documented_ones() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Metrics") : readme.index("## Fleet mode")]
    documented = _referenced(table)
    assert documented == _exposed()
    dashboard = json.loads((REPO / "deploy" / "grafana" / "comfyui-api.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert _referenced(" ".join(expressions)) <= documented
