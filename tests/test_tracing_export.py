"""Traces leave a real server over OTLP/HTTP, as OpenTelemetry's standard variables configure them, to a collector
that this test plays: a loopback HTTP server that decodes each export with OpenTelemetry's own protobuf messages.
An async job with a URL input and a webhook is one trace: its phases, its download, its nodes and its webhook."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.files import FileServer
from tests.support.graphs import img2img, png_bytes
from tests.support.receiver import WebhookReceiver
from tests.support.server import ApiServer, trusting, wait_until

ServerFactory = Callable[..., ApiServer]


class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, with its trace's service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                with collector._lock:
                    for resource in request.resource_spans:
                        service = next(
                            (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), ""
                        )
                        for scope in resource.scope_spans:
                            collector.spans.extend((service, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def trace_of(self, job_id: str) -> dict[str, Any]:
        """The spans of the job's trace by name, once they came."""
        with self._lock:
            spans = list(self.spans)
        roots = [
            span
            for _, span in spans
            if span.name == "job"
            and any(a.key == "comfyui_api.job.id" and a.value.string_value == job_id for a in span.attributes)
        ]
        if not roots:
            return {}
        return {span.name: span for _, span in spans if span.trace_id == roots[0].trace_id}


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


def test_a_jobs_trace_reaches_the_collector(
    make_server: ServerFactory, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("traced-files")
    (root / "input.png").write_bytes(png_bytes(16, 16))
    with FileServer(root) as files, WebhookReceiver() as receiver:
        server = make_server(
            "traced",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
            OTEL_SERVICE_NAME="comfyui-api-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
            **trusting(files.url, receiver.url),
        ).start()
        body = {
            "prompt": img2img(f"{files.url}/input.png"),
            "id": "traced-job",
            "webhook_v2": receiver.url_for("/traced"),
        }
        assert httpx.post(f"{server.url}/prompt", json=body, timeout=60).status_code == 202
        spans = wait_until(
            lambda: (found := collector.trace_of("traced-job")) and "webhook" in found and found,
            120,
            "the job's trace, its webhook included",
        )

    assert {"job", "preprocess", "download", "queue", "execution", "KSampler", "SaveImage", "webhook"} <= set(spans)
    by_id = {span.span_id: name for name, span in spans.items()}
    assert by_id[spans["download"].parent_span_id] == "preprocess"
    assert by_id[spans["KSampler"].parent_span_id] == "execution"
    for name in ("preprocess", "queue", "execution", "webhook"):
        assert by_id[spans[name].parent_span_id] == "job", name
    job = spans["job"]
    assert job.start_time_unix_nano <= spans["preprocess"].start_time_unix_nano
    assert spans["execution"].end_time_unix_nano <= job.end_time_unix_nano
    assert {service for service, _ in collector.spans} == {"comfyui-api-test"}
