"""OpenTelemetry traces, optional: on when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
set, with the `otel` extra installed (`pip install 'comfyui-api[otel]'`). Off, nothing of OpenTelemetry is imported
and nothing is counted.

Each job is one trace, written when the job ends from the times it kept (pipeline/jobs.py): a `job` span from its
receipt to its end, and beneath it `preprocess` (with one `download` span per URL input or model, cache hits
included), `queue` (waiting in ComfyUI's queue), `execution` (with one `node` span per node ComfyUI ran, named
after its class), `conversion` (convert_output) and `upload`. The webhooks, sent after the job ended, are `webhook`
spans of the same trace. Spans are made after the fact, so tracing never sits on a request's path: a job costs a
few span objects at its end, exported in the background by the SDK's batch processor. The exporter, the service
name and the batching are configured by OpenTelemetry's standard variables (OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from .pipeline.jobs import Job

logger = logging.getLogger(__name__)

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_MS = 1_000_000  # nanoseconds


def tracing_from_environment(environ: Mapping[str, str]) -> Tracing | None:
    """Tracing as OpenTelemetry's standard variables configure it, or None when no OTLP endpoint is set."""
    if not any(environ.get(name) for name in _ENDPOINTS):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed ({exc.name}): install the "
            "`otel` extra (pip install 'comfyui-api[otel]'), or unset it"
        ) from None
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; this is the name without them.
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "comfyui-api"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("comfyui_api")

    def job_ended(self, job: Job, outcome: str, now_ms: int) -> None:
        """Write the job's trace from the times it kept; its root span stays on the job for its webhooks."""
        from opentelemetry import trace

        attributes = {"comfyui_api.job.id": job.id, "comfyui_api.job.entry": job.entry, "comfyui_api.outcome": outcome}
        if job.record.error:
            attributes["comfyui_api.error"] = str(job.record.error.get("error", ""))
        root = self._tracer.start_span("job", start_time=job.received_at * _MS, attributes=attributes)
        within = trace.set_span_in_context(root)
        if job.preprocessed_at:
            preprocess = self._tracer.start_span("preprocess", context=within, start_time=job.received_at * _MS)
            for download in job.downloads:
                started = download.finished_at - round(download.duration_s * 1000)
                hit = {"comfyui_api.cache_hit": not download.downloaded, "comfyui_api.size_bytes": download.size}
                self._leaf("download", preprocess, started, download.finished_at, hit)
            preprocess.end(end_time=job.preprocessed_at * _MS)
            if job.exec_start is not None:
                self._leaf("queue", root, job.preprocessed_at, job.exec_start)
        if job.exec_start is not None and job.exec_end is not None:
            execution = self._tracer.start_span("execution", context=within, start_time=job.exec_start * _MS)
            node_start = job.exec_start
            for class_type, seconds in job.node_times():
                node_end = node_start + round(seconds * 1000)
                self._leaf(class_type, execution, node_start, node_end, {"comfyui_api.node.class_type": class_type})
                node_start = node_end
            execution.end(end_time=job.exec_end * _MS)
        for name, (started, ended) in job.windows.items():
            self._leaf(name, root, started, ended)
        root.end(end_time=now_ms * _MS)
        job.trace = root

    @contextlib.contextmanager
    def webhook(self, job: Job, kind: str) -> Iterator[None]:
        """A `webhook` span of the job's trace around its sending (after the job's end)."""
        from opentelemetry import trace

        parent = trace.set_span_in_context(job.trace) if job.trace is not None else None
        with self._tracer.start_as_current_span("webhook", context=parent, attributes={"comfyui_api.webhook": kind}):
            yield

    def _leaf(
        self, name: str, parent: Span, start_ms: int, end_ms: int, attributes: dict[str, Any] | None = None
    ) -> None:
        from opentelemetry import trace

        context = trace.set_span_in_context(parent)
        span = self._tracer.start_span(name, context=context, start_time=start_ms * _MS, attributes=attributes)
        span.end(end_time=end_ms * _MS)

    def shutdown(self) -> None:
        """Export what is still batched (blocking: call it in a worker thread)."""
        self._provider.shutdown()
