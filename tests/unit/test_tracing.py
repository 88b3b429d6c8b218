"""Traces: a job's spans written from the times it kept, into the OpenTelemetry SDK's in-memory exporter; and with
no OTLP endpoint set, the OpenTelemetry SDK and exporter are not even imported (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from comfyui_api.jobstore.records import JobRecord, JobStatus
from comfyui_api.pipeline.jobs import Job
from comfyui_api.storage.manager import Download
from comfyui_api.tracing import Tracing, tracing_from_environment

MS = 1_000_000


def _traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def _job() -> Job:
    job = Job(id="job-1", received_at=10_000)
    job.record = JobRecord(id="job-1", created_at=10_000, status=JobStatus.SUCCEEDED)
    job.preprocessed_at = 10_400
    job.downloads = [Download(Path("a"), Path("b"), 2048, 0.3, True, finished_at=10_350)]
    job.exec_start, job.exec_end = 10_500, 11_500
    job.node_starts = {"3": 10_500, "9": 11_200}
    job.graph = {"3": {"class_type": "KSampler"}, "9": {"class_type": "SaveImage"}}
    job.windows = {"conversion": (11_550, 11_600), "upload": (11_600, 11_900)}
    return job


def test_a_job_is_one_trace_of_its_phases_downloads_and_nodes() -> None:
    tracing, exporter = _traced()
    job = _job()

    tracing.job_ended(job, "succeeded", now_ms=12_000)
    with tracing.webhook(job, "prompt.complete"):
        pass

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {
        "job",
        "preprocess",
        "download",
        "queue",
        "execution",
        "KSampler",
        "SaveImage",
        "conversion",
        "upload",
        "webhook",
    }
    root = spans["job"]

    def parent(span: ReadableSpan) -> str:
        assert span.parent is not None
        return next(name for name, other in spans.items() if other.context.span_id == span.parent.span_id)

    assert root.parent is None and {span.context.trace_id for span in spans.values()} == {root.context.trace_id}
    assert {name: parent(spans[name]) for name in spans if name != "job"} == {
        "preprocess": "job",
        "download": "preprocess",
        "queue": "job",
        "execution": "job",
        "KSampler": "execution",
        "SaveImage": "execution",
        "conversion": "job",
        "upload": "job",
        "webhook": "job",
    }
    times = {name: (span.start_time // MS, span.end_time // MS) for name, span in spans.items() if name != "webhook"}
    assert times == {
        "job": (10_000, 12_000),
        "preprocess": (10_000, 10_400),
        "download": (10_050, 10_350),
        "queue": (10_400, 10_500),
        "execution": (10_500, 11_500),
        "KSampler": (10_500, 11_200),
        "SaveImage": (11_200, 11_500),
        "conversion": (11_550, 11_600),
        "upload": (11_600, 11_900),
    }
    assert root.attributes is not None and root.attributes["comfyui_api.outcome"] == "succeeded"
    assert spans["download"].attributes == {"comfyui_api.cache_hit": False, "comfyui_api.size_bytes": 2048}
    assert spans["webhook"].attributes == {"comfyui_api.webhook": "prompt.complete"}


def test_a_job_refused_before_it_ran_is_a_lone_span_with_its_error() -> None:
    tracing, exporter = _traced()
    job = Job(id="job-2", received_at=5_000)
    job.record = JobRecord(id="job-2", created_at=5_000, status=JobStatus.FAILED, error={"error": "bad input"})

    tracing.job_ended(job, "failed", now_ms=5_010)

    [span] = exporter.get_finished_spans()
    assert span.name == "job" and span.attributes is not None
    assert span.attributes["comfyui_api.error"] == "bad input"


def test_without_an_endpoint_the_sdk_and_exporter_are_not_imported() -> None:
    # (FastAPI imports OpenTelemetry's API package by itself when it is installed: only the SDK and the exporter,
    # which do the work, are this server's to import.)
    assert tracing_from_environment({}) is None
    code = (
        "import os, sys\n"
        "os.environ.pop('OTEL_EXPORTER_OTLP_ENDPOINT', None)\n"
        "from comfyui_api.app import create_app\n"
        "from comfyui_api.tracing import tracing_from_environment\n"
        "assert tracing_from_environment(os.environ) is None\n"
        "working = ('opentelemetry.sdk', 'opentelemetry.exporter')\n"
        "print(sorted(name for name in sys.modules if name.startswith(working)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
