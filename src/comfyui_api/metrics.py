"""Prometheus metrics (GET /metrics), with the official prometheus-client, in a registry of the app's own.

What changes with each request or job is counted where it happens, through the small methods below (each a few
dictionary look-ups: bench/metrics.py measures what they add to a request). What is a state of the server (jobs in
flight, ComfyUI's queue, open event streams, the fleet's connectivity, websocket reconnects) is read when Prometheus
scrapes, from the objects that hold it (`watch`), so it costs nothing between scrapes.

Label values are bounded: routes are route templates (`/prompt/{id}`), never paths; providers, phases, outcomes and
causes are fixed sets; node classes are those installed in ComfyUI. No job id or URL is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# No `_created` series: a line per counter and histogram child in every scrape, for a start time that Prometheus
# infers from the counter's resets anyway (bench/metrics.py: a scrape's cost is its lines).
disable_created_metrics()

PREFIX = "comfyui_api"
# Seconds, from a cached node's millisecond to a long job's 10 minutes. Few buckets: each is a line of every
# scrape, and a scrape's cost is its lines (bench/metrics.py).
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
_HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30)
# A job's phases, each a series of the phase histogram.
PHASES = ("queue_wait", "execution", "preprocess", "upload", "total")


@dataclass(frozen=True)
class Reading:
    """A value read at scrape time: `kind` "gauge" or "counter"."""

    name: str
    help: str
    kind: str
    read: Callable[[], float]


class _Readings(Collector):
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def collect(self) -> Iterator[Metric]:
        for reading in self.readings:
            family = GaugeMetricFamily if reading.kind == "gauge" else CounterMetricFamily
            yield family(f"{PREFIX}_{reading.name}", reading.help, value=reading.read())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self._http_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request (its whole body sent), by route template and method.",
            ["route", "method"],
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )
        self._jobs = Counter(
            f"{PREFIX}_jobs",
            "Jobs ended on this server, by entry point (prompt, workflow, v2) and outcome.",
            ["entry", "outcome"],
            registry=registry,
        )
        self._phase_seconds = Histogram(
            f"{PREFIX}_job_phase_seconds",
            "Time a job spent in each phase: queue_wait (in ComfyUI's queue), execution (ComfyUI running it), "
            "preprocess (inputs and downloads), upload, and total (received to ended).",
            ["phase"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self._node_seconds = Histogram(
            f"{PREFIX}_node_execution_seconds",
            "Time ComfyUI spent executing a node, by node class (nodes answered from ComfyUI's cache are not run).",
            ["class_type"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self._restarts = Counter(
            f"{PREFIX}_comfyui_restarts",
            "ComfyUI relaunches by this server, by cause (exited, stalled, requested).",
            ["cause"],
            registry=registry,
        )
        self._cache = Counter(
            f"{PREFIX}_cache_requests",
            "Download cache look-ups, by result (hit: the file was cached; miss: it was downloaded).",
            ["result"],
            registry=registry,
        )
        self._cache_bytes = Counter(
            f"{PREFIX}_cache_bytes",
            "Bytes of the files looked up in the download cache, by result (hit: served from it; miss: downloaded).",
            ["result"],
            registry=registry,
        )
        self._evictions = Counter(
            f"{PREFIX}_cache_evictions", "Files evicted from the download cache.", registry=registry
        )
        self._evicted_bytes = Counter(
            f"{PREFIX}_cache_evicted_bytes", "Bytes evicted from the download cache.", registry=registry
        )
        self._transfer_bytes = Counter(
            f"{PREFIX}_transfer_bytes",
            "Bytes downloaded (inputs, models) and uploaded (outputs), by direction and storage provider.",
            ["direction", "provider"],
            registry=registry,
        )
        self._transfer_seconds = Histogram(
            f"{PREFIX}_transfer_duration_seconds",
            "Time of a download or an upload, by direction and storage provider.",
            ["direction", "provider"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self._webhook_attempts = Counter(
            f"{PREFIX}_webhook_attempts",
            "Webhook requests sent, retries included, by result (delivered, refused: a 4xx/5xx, error: no answer).",
            ["result"],
            registry=registry,
        )
        self._webhooks = Counter(
            f"{PREFIX}_webhooks",
            "Webhooks by outcome: delivered, or failed once every attempt was spent.",
            ["outcome"],
            registry=registry,
        )
        self._system_dropped = Counter(
            f"{PREFIX}_system_events_dropped",
            "System webhook events dropped from a full queue, by event name.",
            ["event"],
            registry=registry,
        )
        self._readings = _Readings()
        registry.register(self._readings)

    def watch(self, readings: Iterable[Reading]) -> None:
        """Read these values at each scrape."""
        self._readings.readings.extend(readings)

    def render(self) -> bytes:
        return render_text(self.registry)

    # What happens ------------------------------------------------------------------------------------------------
    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._http_requests.labels(route, method, str(status)).inc()
        self._http_seconds.labels(route, method).observe(seconds)

    def job_ended(self, entry: str, outcome: str, phases: dict[str, float], nodes: Iterable[tuple[str, float]]) -> None:
        """A job ended: its `phases` (seconds, PHASES' names) and its executed nodes (class, seconds)."""
        self._jobs.labels(entry, outcome).inc()
        for phase, seconds in phases.items():
            self._phase_seconds.labels(phase).observe(seconds)
        for class_type, seconds in nodes:
            self._node_seconds.labels(class_type).observe(seconds)

    def comfy_restarted(self, cause: str) -> None:
        self._restarts.labels(cause).inc()

    def cache_looked_up(self, size: int, *, hit: bool) -> None:
        result = "hit" if hit else "miss"
        self._cache.labels(result).inc()
        self._cache_bytes.labels(result).inc(size)

    def cache_evicted(self, size: int) -> None:
        self._evictions.inc()
        self._evicted_bytes.inc(size)

    def transferred(self, direction: str, provider: str, size: int, seconds: float) -> None:
        self._transfer_bytes.labels(direction, provider).inc(size)
        self._transfer_seconds.labels(direction, provider).observe(seconds)

    def webhook_attempted(self, result: str) -> None:
        self._webhook_attempts.labels(result).inc()

    def webhook_ended(self, *, delivered: bool) -> None:
        self._webhooks.labels("delivered" if delivered else "failed").inc()

    def system_event_dropped(self, event: str) -> None:
        self._system_dropped.labels(event).inc()


def render_text(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (0.0.4), as prometheus-client's `generate_latest` writes it for these
    metrics, in a third of its time: every name here is a valid legacy name, so the per-line validation and escaping
    of names that the library does for any name are skipped (bench/metrics.py measures both; tests/unit/
    test_metrics.py checks that both parse to the same samples). Label values are escaped as the format requires."""
    lines = []
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        kind = family.type if family.type in ("counter", "gauge", "histogram") else "untyped"
        lines.append(f"# HELP {name} {_escape_help(family.documentation)}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{key}="{_escape_value(value)}"' for key, value in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}\n")
            else:
                lines.append(f"{sample.name} {floatToGoString(sample.value)}\n")
    return "".join(lines).encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text
