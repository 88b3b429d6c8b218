"""Benchmark of the Prometheus metrics: what counting adds to a request, and what a scrape costs.

    .venv/bin/python -m bench.metrics [--requests 200] [--jobs 1000] [--scrapes 200] [--json out.json]
                                      [--baseline earlier.json]

Run from the repository root. Two comfyui-api servers start in temporary folders in front of one CPU ComfyUI (the
second brings no ComfyUI of its own), so that they differ by METRICS_ENABLED alone:

* sequential: `EmptyImage 8x8 -> SaveImage` (a colour of its own each time, so ComfyUI's cache never answers it),
  POST /prompt to each server by turns (which goes first alternating too), --requests rounds after a warm-up, and
  the same graph to ComfyUI directly beside them. ComfyUI's execution (stats.comfy_execution) is taken out of each
  latency, as in bench/requests.py. Bar: p50 on minus p50 off <= 0.2 ms.
* scrape: the server with metrics gets more jobs until --jobs have finished on it (8 at a time), then GET /metrics
  and GET /health are sent by turns, --scrapes times each. A scrape's cost is its p50 minus /health's (the HTTP round
  trip both pay). Bar: <= 1 ms. Also reported: the render alone, in this process, of a registry fed --jobs jobs, by
  metrics.py and by prometheus-client's generate_latest (the same bytes; why metrics.py writes them itself).

The exit status is 0 whatever the bars say, 1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import (
    BenchError,
    check_cases_and_baseline,
    compare,
    log,
    prepare,
    print_checks,
    run_session,
    sigterm_exits,
    write_report,
)
from .direct import Outcome
from .requests import (
    WARM_UP_REQUESTS,
    clients_of,
    empty_graph,
    on_against_off,
    percentile,
    servers_on_one_comfyui,
    start_servers,
)

ADDED_P50_BAR_MS = 0.2
SCRAPE_BAR_MS = 1.0
CASES = ("sequential", "scrape")
_CONCURRENT_JOBS = 8


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.figures: dict[str, float] = {}
        self.runs: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.servers: dict[str, Any] = {}
        self._colors = itertools.count(1)

    def start(self) -> None:
        self.servers = servers_on_one_comfyui(
            self.work, {"METRICS_ENABLED": "true"}, {"METRICS_ENABLED": "false"}, LOG_LEVEL="info"
        )
        start_servers(self.servers, "two comfyui-api servers (metrics on, metrics off) in front of one ComfyUI")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    async def run(self) -> None:
        from .requests import DirectSide

        clients = clients_of(self.servers)
        try:
            for case, measure in (("sequential", self.sequential), ("scrape", self.scrape)):
                if case not in self.args.cases:
                    continue
                try:
                    async with DirectSide(self.servers["on"].comfy_url) as direct:
                        await measure(clients, direct)
                except Exception as error:
                    self.errors[case] = f"{type(error).__name__}: {error}"
                    log(f"ERROR: {self.errors[case]}")
        finally:
            for client in clients.values():
                await client.aclose()
        self.render()

    async def prompt(self, http: Any) -> Outcome:
        body = {"prompt": empty_graph(8, next(self._colors))}
        response = await http.request("POST", "/prompt", json_body=body)
        if response.status != 200:
            raise BenchError(f"POST /prompt answered {response.status}: {response.text[:1000]}")
        answer = response.json()
        return Outcome(answer["images"], answer["stats"]["comfy_execution"]["duration"])

    async def sequential(self, clients: dict[str, Any], direct: Any) -> None:
        sides = {
            "on": lambda: self.prompt(clients["on"]),
            "off": lambda: self.prompt(clients["off"]),
            "direct": lambda: direct.comfy.run(empty_graph(8, next(self._colors))),
        }
        log(f"sequential: {WARM_UP_REQUESTS} warm-up requests each, then {self.args.requests} rounds")
        self.runs["sequential"] = await on_against_off(sides, self.args.requests, "sequential", self.figures)
        f = self.figures
        log(
            f"  p50 on {f['sequential.on_p50_ms']:.2f} ms, off {f['sequential.off_p50_ms']:.2f} ms, direct "
            f"{f['sequential.direct_p50_ms']:.2f} ms; added by the metrics (net of ComfyUI's execution) p50 "
            f"{f['sequential.added_p50_ms']:.3f} ms, p95 {f['sequential.added_p95_ms']:.3f} ms"
        )

    async def scrape(self, clients: dict[str, Any], direct: Any) -> None:
        http = clients["on"]
        finished = await self.jobs_finished(http)
        todo = max(int(self.args.jobs - finished), 0)
        log(
            f"scrape: {finished:.0f} jobs finished on the server with metrics; {todo} more, "
            f"{_CONCURRENT_JOBS} at a time"
        )
        gate = asyncio.Semaphore(_CONCURRENT_JOBS)

        async def one() -> None:
            async with gate:
                await self.prompt(http)

        await asyncio.gather(*(one() for _ in range(todo)))
        finished = await self.jobs_finished(http)
        times: dict[str, list[float]] = {"metrics": [], "health": []}
        size = 0
        for turn in range(self.args.scrapes):
            for path in ("/metrics", "/health") if turn % 2 else ("/health", "/metrics"):
                started = time.perf_counter()
                response = await http.request("GET", path)
                times[path.strip("/")].append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise BenchError(f"GET {path} answered {response.status}")
                if path == "/metrics":
                    size = len(response.body)
        self.runs["scrape"] = times
        f = self.figures
        f["scrape.jobs_finished"] = finished
        f["scrape.body_bytes"] = size
        for pct in (50, 95):
            f[f"scrape.metrics_p{pct}_ms"] = percentile(times["metrics"], pct)
            f[f"scrape.health_p{pct}_ms"] = percentile(times["health"], pct)
        f["scrape.cost_p50_ms"] = f["scrape.metrics_p50_ms"] - f["scrape.health_p50_ms"]
        log(
            f"  with {finished:.0f} jobs finished: GET /metrics p50 {f['scrape.metrics_p50_ms']:.2f} ms "
            f"({size} bytes), GET /health p50 {f['scrape.health_p50_ms']:.2f} ms: a scrape costs "
            f"{f['scrape.cost_p50_ms']:.3f} ms"
        )

    @staticmethod
    async def jobs_finished(http: Any) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        response = await http.request("GET", "/metrics")
        return sum(
            sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name == "comfyui_api_jobs_total"
        )

    def render(self) -> None:
        """The render alone, in this process, of a registry that counted --jobs jobs of a few node classes: ours
        (metrics.py's render_text) and prometheus-client's generate_latest, which writes the same bytes."""
        from prometheus_client import generate_latest

        from comfyui_api.metrics import Metrics

        metrics = Metrics()
        nodes = [("EmptyImage", 0.001), ("SaveImage", 0.002)]
        phases = {"total": 0.01, "preprocess": 0.001, "queue_wait": 0.001, "execution": 0.003}
        for index in range(self.args.jobs):
            metrics.job_ended("prompt", "succeeded" if index % 10 else "failed", phases, nodes)
            metrics.request("/prompt", "POST", 200, 0.01)
        for figure, render in (
            ("render", metrics.render),
            ("render_library", lambda: generate_latest(metrics.registry)),
        ):
            samples = []
            for _ in range(200):
                started = time.perf_counter()
                render()
                samples.append((time.perf_counter() - started) * 1000)
            self.figures[f"scrape.{figure}_p50_ms"] = percentile(samples, 50)
        log(
            f"  render alone, in process: p50 {self.figures['scrape.render_p50_ms']:.3f} ms (prometheus-client's "
            f"generate_latest: {self.figures['scrape.render_library_p50_ms']:.3f} ms)"
        )


def _checks(figures: dict[str, float], errors: dict[str, str], cases: list[str]) -> list[dict[str, str]]:
    f = figures
    checks = []
    if "sequential" in cases:
        if "sequential" in errors or "sequential.added_p50_ms" not in f:
            checks.append(_error("sequential"))
        else:
            added = f["sequential.added_p50_ms"]
            checks.append(
                {
                    "case": "sequential: added by the metrics p50 ms (net of ComfyUI's execution; on / off)",
                    "ours": f"{added:.3f}",
                    "reference": f"on {f['sequential.on_p50_ms']:.2f}, off {f['sequential.off_p50_ms']:.2f}, "
                    f"paired p50 {f['sequential.paired_p50_ms']:.3f}",
                    "ratio": "-",
                    "bar": f"<= {ADDED_P50_BAR_MS:g}",
                    "result": "PASS" if added <= ADDED_P50_BAR_MS else "FAIL",
                }
            )
    if "scrape" in cases:
        if "scrape" in errors or "scrape.cost_p50_ms" not in f:
            checks.append(_error("scrape"))
        else:
            cost = f["scrape.cost_p50_ms"]
            checks.append(
                {
                    "case": f"scrape with {f['scrape.jobs_finished']:.0f} jobs finished: cost p50 ms "
                    "(GET /metrics minus GET /health)",
                    "ours": f"{cost:.3f}",
                    "reference": f"/metrics {f['scrape.metrics_p50_ms']:.2f}, /health {f['scrape.health_p50_ms']:.2f}"
                    f", render alone {f['scrape.render_p50_ms']:.3f}",
                    "ratio": "-",
                    "bar": f"<= {SCRAPE_BAR_MS:g}",
                    "result": "PASS" if cost <= SCRAPE_BAR_MS else "FAIL",
                }
            )
    return checks


def _error(case: str) -> dict[str, str]:
    return {"case": f"{case} (all figures)", "ours": "-", "reference": "-", "ratio": "-", "bar": "-", "result": "ERROR"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential rounds of one request per side (200)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs finished before the scrapes (1000)")
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes, each beside a GET /health (200)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.scrapes < 2:
        parser.error("--requests and --scrapes must be >= 2")
    check_cases_and_baseline(parser, args, CASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    prepare()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-metrics-") as folder:
        bench = Bench(args, Path(folder))
        run_session(bench, lambda: asyncio.run(bench.run()))
    cases = args.cases
    checks = _checks(bench.figures, bench.errors, cases)
    print()
    print(f"comfyui-api metrics benchmark: {args.requests} rounds, {args.jobs} jobs, {args.scrapes} scrapes")
    print_checks(checks, bench.errors, quiet=("PASS", "-"))
    if args.baseline:
        print()
        print(compare(bench.figures, args.baseline, cases))
    if args.json:
        write_report(
            args.json,
            started,
            {"requests": args.requests, "jobs": args.jobs, "scrapes": args.scrapes},
            figures=bench.figures,
            checks=checks,
            errors=bench.errors,
            runs=bench.runs,
        )
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
