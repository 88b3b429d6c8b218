"""Benchmark of the request path: what our server adds to a prompt's latency, and how it holds up under a burst.

    .venv/bin/python -m bench.requests [--requests 200] [--burst 1000] [--rounds 2] [--cases empty,txt2img,burst]
                                       [--json out.json] [--baseline earlier.json]

Run from the repository root. One comfyui-api server (tests/support/server.py's ApiServer, LOG_LEVEL=info, no
warmup) is started in a temporary folder in front of its own CPU ComfyUI, and every case runs the same work twice in
this session: through our server (POST /prompt, the answer read and parsed), and directly against the same ComfyUI
(bench/direct.py: POST /prompt with a client_id, the websocket's completion event, /history, /view, base64). Both
sides use the same HTTP client (comfyui_api.comfy.http) and every prompt differs from every other (a colour or a
seed), so ComfyUI's cache never skips work for either side.

* empty: --requests sequential requests of `EmptyImage 512x512 -> SaveImage` each, ours and direct alternating (and
  which goes first alternating too). Latency runs from sending the request to holding the base64 outputs. ComfyUI's
  execution of a prompt (execution_start to execution_success on the websocket: stats.comfy_execution for ours, the
  client's own reading for direct) varies from prompt to prompt by more than the bars and is not our time, so each
  request's execution is taken out of its latency; "added pX" is pX of ours minus pX of direct, of what is left.
  Bars: added p50 <= 2 ms, added p95 <= 5 ms. Reported too: the raw latencies' percentiles, and the percentiles of
  the paired differences (request by request, raw and net of the execution).
* txt2img: the same with a 64x64, 1-step txt2img on the tests' random SD1.5-shaped checkpoint.
* burst: --burst requests of `EmptyImage 512x512 -> SaveImage` (the trivial graph of the first case) sent at once
  through our server, then as many directly (--rounds 2, the default: then again in the other order; the best wall
  time of each side counts). Every answer
  is checked to carry exactly its own output (each request has its own colour; the PNG's pixel is checked). While
  the burst runs, a separate process polls our GET /health every 10 ms and our RSS is sampled (psutil every 20 ms,
  and the kernel's VmHWM when it can be reset). The burst has two phases: arrival, until every request has reached
  ComfyUI's queue (ComfyUI's queue length, which it broadcasts on every change, plus the answers so far peaks), and
  queued, until the last answer. Bars: no failures or wrong outputs, wall time <= 1.05x the direct run's, peak RSS
  <= 300 MB, /health p99 <= 20 ms while the burst is queued (the arrival of a thousand requests at the same instant
  is a thousand requests' parsing and validation queued ahead of any probe, so the p99 of that phase is reported
  beside it, without a bar). CPU seconds of our server, ComfyUI and this process are reported per round.

The exit status is 0 whatever the bars say, 1 only when something could not be measured. Everything started is
stopped and removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import (
    MIB,
    REPO,
    BenchError,
    check_cases_and_baseline,
    checkpoint,
    compare,
    log,
    prepare,
    print_checks,
    run_session,
    sigterm_exits,
    write_report,
)
from .direct import Outcome

ADDED_P50_BAR_MS = 2.0
ADDED_P95_BAR_MS = 5.0
BURST_WALL_BAR = 1.05
BURST_RSS_BAR_MIB = 300e6 / MIB  # 300 MB
HEALTH_P99_BAR_MS = 20.0
HEALTH_INTERVAL_S = 0.01
WARM_UP_REQUESTS = 5
REQUEST_TIMEOUT_S = 900.0
SEQUENTIAL_CASES = ("empty", "txt2img")
CASES = (*SEQUENTIAL_CASES, "burst")
PNG_BASE64_START = "iVBORw0KGgo"


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if len(values) > 1 else values[0]


def empty_graph(size: int, color: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


def txt2img_graph(seed: int) -> dict[str, Any]:
    from tests.support.graphs import txt2img

    return txt2img(64, 64, seed=seed)


def pixel_color(encoded: str) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        red, green, blue = image.convert("RGB").getpixel((0, 0))
    return (red << 16) | (green << 8) | blue


async def alternate(
    sides: dict[str, Callable[[], Awaitable[Outcome]]], rounds: int, orders: tuple[list[str], list[str]]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """WARM_UP_REQUESTS of each side, then `rounds` rounds of one request per side, in `orders[0]` and `orders[1]`
    by turns; each side's latencies and ComfyUI execution times (ms). Every answer must be one base64 PNG."""
    for _ in range(WARM_UP_REQUESTS):
        for side in sides.values():
            await side()
    times: dict[str, list[float]] = {name: [] for name in sides}
    executions: dict[str, list[float]] = {name: [] for name in sides}
    for index in range(rounds):
        for name in orders[index % 2]:
            started = time.perf_counter()
            outcome = await sides[name]()
            times[name].append((time.perf_counter() - started) * 1000)
            executions[name].append(outcome.execution_ms)
            if len(outcome.images) != 1 or not outcome.images[0].startswith(PNG_BASE64_START):
                raise BenchError(f"{name}: expected one base64 PNG, got {len(outcome.images)} outputs")
        if (index + 1) % 50 == 0:
            log(f"  {index + 1} rounds")
    return times, executions


async def on_against_off(
    sides: dict[str, Callable[[], Awaitable[Outcome]]], rounds: int, case: str, figures: dict[str, float]
) -> dict[str, list[float]]:
    """`alternate` over the sides `on`, `off` and `direct` (on and off swapping places each round), into `figures`
    as "<case>.<side>_pX_ms", "<case>.<side>_net_pX_ms" (ComfyUI's execution taken out), "<case>.added_pX_ms" (on's
    net pX minus off's) and "<case>.paired_pX_ms" (pX of the request-by-request differences); the runs."""
    times, executions = await alternate(sides, rounds, (["on", "off", "direct"], ["off", "on", "direct"]))
    net = {name: [t - e for t, e in zip(times[name], executions[name], strict=True)] for name in times}
    paired = [on - off for on, off in zip(net["on"], net["off"], strict=True)]
    for pct in (50, 95):
        for name in times:
            figures[f"{case}.{name}_p{pct}_ms"] = percentile(times[name], pct)
            figures[f"{case}.{name}_net_p{pct}_ms"] = percentile(net[name], pct)
        figures[f"{case}.added_p{pct}_ms"] = figures[f"{case}.on_net_p{pct}_ms"] - figures[f"{case}.off_net_p{pct}_ms"]
        figures[f"{case}.paired_p{pct}_ms"] = percentile(paired, pct)
    return {**times, "executions": executions}  # type: ignore[dict-item]


def servers_on_one_comfyui(work: Path, on: dict[str, str], off: dict[str, str], **common: str) -> dict[str, Any]:
    """Two servers, `on` and `off` (their own settings, plus `common`), in front of one CPU ComfyUI: `on` launches it,
    `off` brings none of its own (its CMD only idles) and shares its folders, so that the two differ by their settings
    alone, not by two ComfyUI processes' luck on two cores."""
    from tests.support.server import ApiServer

    first = ApiServer(work / "on", checkpoint(), **common, **on)
    second = ApiServer(
        work / "off",
        checkpoint(),
        comfy_port=first.comfy_port,
        CMD="sleep infinity",
        INPUT_DIR=str(first.base / "input"),
        OUTPUT_DIR=str(first.base / "output"),
        **common,
        **off,
    )
    return {"on": first, "off": second}


def start_servers(servers: dict[str, Any], what: str) -> None:
    """Start the servers (`what` names them in the log) and wait until each is healthy."""
    log(f"starting {what}")
    started = time.monotonic()
    for server in servers.values():
        server.start()
    log(f"  healthy in {time.monotonic() - started:.1f} s")


def clients_of(servers: dict[str, Any]) -> dict[str, Any]:
    """A LocalHttp client per server, by the same names (close each with aclose())."""
    from comfyui_api.comfy.http import LocalHttp

    return {name: LocalHttp(server.url, timeout_s=300, connect_timeout_s=60) for name, server in servers.items()}


# ---------------------------------------------------------------------------------------------------------------------
# The /health prober: a process of its own, so that this process's event loop (busy with a thousand answers) does not
# delay the probes it times.
# ---------------------------------------------------------------------------------------------------------------------


def probe_health(url: str) -> None:
    """GET url every HEALTH_INTERVAL_S until stdin closes; then print [[monotonic time, ms, status], ...]."""
    import httpx

    samples = []
    with httpx.Client(timeout=30.0) as http:
        while True:
            started = time.monotonic()
            try:
                status = http.get(url).status_code
            except httpx.TransportError:
                status = 0
            samples.append((started, (time.monotonic() - started) * 1000, status))
            if select.select([sys.stdin], [], [], HEALTH_INTERVAL_S)[0]:  # readable: end of input
                break
    print(json.dumps(samples))


class HealthProber:
    def __init__(self, url: str) -> None:
        self._url = url
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthProber:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.requests", "--probe", self._url],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> list[tuple[float, float, int]]:
        assert self._process is not None
        stdout, _ = self._process.communicate(timeout=60)
        if self._process.returncode != 0:
            raise BenchError(f"the /health prober exited with {self._process.returncode}")
        return [tuple(sample) for sample in json.loads(stdout)]


# ---------------------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------------------


class BurstProgress:
    """Counts a burst's answers and records ComfyUI's queue length, to tell when the whole burst was queued."""

    def __init__(self) -> None:
        self.answered = 0
        self.samples: list[tuple[float, int]] = []  # (time, queue length + answered)

    async def track(self, call: Awaitable[Outcome]) -> Outcome:
        try:
            return await call
        finally:
            self.answered += 1

    def queue_length(self, length: int) -> None:
        self.samples.append((time.monotonic(), length + self.answered))

    def all_queued_at(self, started: float, ended: float) -> float:
        """When ComfyUI's queue plus the answers first reached their peak: every request had reached ComfyUI."""
        during = [(at, total) for at, total in self.samples if started <= at <= ended]
        if not during:
            return started
        peak = max(total for _, total in during)
        return next(at for at, total in during if total == peak)


def _health_figures(phase: str, health: list[tuple[float, float, int]], start: float, end: float) -> dict[str, Any]:
    """The /health probes sent between start and end: percentiles, failures, and the slowest (time, ms)."""
    window = [(at, ms, status) for at, ms, status in health if start <= at <= end]
    latencies = [ms for _, ms, _ in window]
    return {
        f"{phase}_health_samples": len(window),
        f"{phase}_health_failures": sum(1 for _, _, status in window if status != 200),
        f"{phase}_health_p50_ms": percentile(latencies, 50) if latencies else 0.0,
        f"{phase}_health_p99_ms": percentile(latencies, 99) if latencies else 0.0,
        f"{phase}_health_max_ms": max(latencies, default=0.0),
        f"{phase}_health_slowest": sorted(((at, round(ms, 1)) for at, ms, _ in window), key=lambda s: -s[1])[:20],
    }


class CpuTimes:
    """CPU seconds (user + system) each named process spent inside the `with` block."""

    def __init__(self, **pids: int) -> None:
        import psutil

        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.names = list(pids)
        self._start: dict[str, float] = {}
        self._end: dict[str, float] = {}

    def _now(self, name: str) -> float:
        times = self._processes[name].cpu_times()
        return times.user + times.system

    def __enter__(self) -> CpuTimes:
        self._start = {name: self._now(name) for name in self.names}
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = {name: self._now(name) for name in self.names}

    def used(self, name: str) -> float:
        return self._end[name] - self._start[name]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.figures: dict[str, float] = {}
        self.runs: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.server: Any = None
        self._color = 0x000001  # every prompt of the session gets a colour (or seed) of its own

    def start(self) -> None:
        from tests.support.server import ApiServer

        log("starting comfyui-api and its ComfyUI")
        self.server = ApiServer(self.work / "server", checkpoint(), LOG_LEVEL="info")
        started = time.monotonic()
        self.server.start()
        log(f"  healthy in {time.monotonic() - started:.1f} s")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def next_color(self) -> int:
        self._color += 1
        return self._color

    async def run(self) -> None:
        from comfyui_api.comfy.http import LocalHttp

        # The client of our server is the lean one our server uses for ComfyUI (and the direct side too): a burst
        # then measures the servers, not httpx's cost per call in this process.
        http = LocalHttp(
            self.server.url, timeout_s=REQUEST_TIMEOUT_S, connect_timeout_s=60.0, max_connections=self.args.burst
        )
        try:
            async with DirectSide(self.server.comfy_url) as direct:
                for case in self.args.cases:
                    try:
                        if case == "burst":
                            await self.burst(http, direct)
                        else:
                            await self.sequential(case, http, direct)
                    except Exception as error:  # one case's failure is reported; the others still run
                        self.errors[case] = f"{type(error).__name__}: {error}"
                        log(f"ERROR in {case}: {self.errors[case]}\n{self.server.log_tail(20)}")
                    await direct.cleanup(self.server.base / "output")
        finally:
            await http.aclose()

    async def ours(self, http: Any, graph: dict[str, Any]) -> Outcome:
        response = await http.request("POST", "/prompt", json_body={"prompt": graph})
        if response.status != 200:
            raise BenchError(f"POST /prompt answered {response.status}: {response.text[:1000]}")
        answer = response.json()
        return Outcome(answer["images"], answer["stats"]["comfy_execution"]["duration"])

    # sequential ------------------------------------------------------------------------------------------------------
    async def sequential(self, case: str, http: Any, direct: DirectSide) -> None:
        def graph() -> dict[str, Any]:
            return empty_graph(512, self.next_color()) if case == "empty" else txt2img_graph(self.next_color())

        sides: dict[str, Callable[[], Awaitable[Outcome]]] = {
            "ours": lambda: self.ours(http, graph()),
            "direct": lambda: direct.comfy.run(graph()),
        }
        log(f"{case}: {WARM_UP_REQUESTS} warm-up requests each, then {self.args.requests} pairs")
        times, executions = await alternate(sides, self.args.requests, (["ours", "direct"], ["direct", "ours"]))
        # ComfyUI's execution of a prompt varies from one prompt to the next by more than the bars, and it is
        # ComfyUI's time, not ours: each request's execution (from its execution_start event to its
        # execution_success) is taken out, leaving what each side spent around it.
        overhead = {name: [t - e for t, e in zip(times[name], executions[name], strict=True)] for name in times}
        paired = [o - d for o, d in zip(times["ours"], times["direct"], strict=True)]
        paired_net = [o - d for o, d in zip(overhead["ours"], overhead["direct"], strict=True)]
        self.runs[case] = {**times, "executions": executions}
        f = self.figures
        for pct in (50, 95, 99):
            for name in times:
                f[f"{case}.{name}_p{pct}_ms"] = percentile(times[name], pct)
                f[f"{case}.{name}_overhead_p{pct}_ms"] = percentile(overhead[name], pct)
            f[f"{case}.added_p{pct}_ms"] = f[f"{case}.ours_overhead_p{pct}_ms"] - f[f"{case}.direct_overhead_p{pct}_ms"]
            f[f"{case}.paired_p{pct}_ms"] = percentile(paired, pct)
            f[f"{case}.paired_net_p{pct}_ms"] = percentile(paired_net, pct)
        for name, values in executions.items():
            f[f"{case}.{name}_execution_p50_ms"] = percentile(values, 50)
        log(
            f"  latency p50 ours {f[f'{case}.ours_p50_ms']:.2f} ms, direct {f[f'{case}.direct_p50_ms']:.2f} ms; "
            f"added (net of ComfyUI's execution) p50 {f[f'{case}.added_p50_ms']:.2f}, "
            f"p95 {f[f'{case}.added_p95_ms']:.2f}, p99 {f[f'{case}.added_p99_ms']:.2f} ms; paired differences p50 "
            f"{f[f'{case}.paired_p50_ms']:.2f} / {f[f'{case}.paired_net_p50_ms']:.2f} (net), p95 "
            f"{f[f'{case}.paired_p95_ms']:.2f} / {f[f'{case}.paired_net_p95_ms']:.2f} (net) ms"
        )

    # burst -------------------------------------------------------------------------------------------------------
    async def burst(self, http: Any, direct: DirectSide) -> None:
        from .outputs import RssSampler

        count = self.args.burst
        order = ["ours", "direct", "direct", "ours"][: 2 * self.args.rounds]
        results: dict[str, list[dict[str, Any]]] = {"ours": [], "direct": []}
        for name in order:
            colors = [self.next_color() for _ in range(count)]
            send = functools.partial(self.ours, http) if name == "ours" else direct.comfy.run
            progress = BurstProgress()
            direct.comfy.on_queue_length = progress.queue_length
            log(f"burst: {count} requests at once, {name}")
            with (
                RssSampler(self.server.process.pid) as rss,
                HealthProber(f"{self.server.url}/health") as prober,
                CpuTimes(
                    server=self.server.process.pid, comfyui=self.server.comfy_process().pid, bench=os.getpid()
                ) as cpu,
            ):
                started = time.monotonic()
                answers = await asyncio.gather(
                    *(progress.track(send(empty_graph(512, color))) for color in colors), return_exceptions=True
                )
                ended = time.monotonic()
                health = prober.stop()
            direct.comfy.on_queue_length = None
            result = _check_burst(answers, colors)
            queued = progress.all_queued_at(started, ended)
            result.update(
                wall_s=ended - started,
                queue_all_s=queued - started,
                cpu_s={name: cpu.used(name) for name in cpu.names},
                **_health_figures("arrival", health, started, queued),
                **_health_figures("queued", health, queued, ended),
                **rss.figures(),
            )
            results[name].append(result)
            log(
                f"  {result['wall_s']:.2f} s ({result['queue_all_s']:.2f} s until all were in ComfyUI's queue), "
                f"{result['failures']} failed, {result['wrong']} wrong; our RSS peak {rss.peak:.0f} MiB (idle "
                f"{rss.idle:.0f}); CPU s: " + ", ".join(f"{key} {value:.1f}" for key, value in result["cpu_s"].items())
            )
            for phase in ("arrival", "queued"):
                log(
                    f"  /health while {phase}: p50 {result[f'{phase}_health_p50_ms']:.1f} ms, p99 "
                    f"{result[f'{phase}_health_p99_ms']:.1f} ms, max {result[f'{phase}_health_max_ms']:.1f} ms "
                    f"({result[f'{phase}_health_samples']} probes); slowest (s into the burst, ms): "
                    f"{[(round(at - started, 2), ms) for at, ms in result[f'{phase}_health_slowest'][:5]]}"
                )
            for error in result["errors"][:3]:
                log(f"  e.g. {error}")
            await direct.cleanup(self.server.base / "output")
        self.runs["burst"] = results
        f = self.figures
        ours, other = results["ours"], results["direct"]
        f["burst.requests"] = count
        f["burst.failures"] = sum(r["failures"] + r["wrong"] for r in ours)
        f["burst.direct_failures"] = sum(r["failures"] + r["wrong"] for r in other)
        f["burst.ours_wall_s"] = min(r["wall_s"] for r in ours)
        f["burst.direct_wall_s"] = min(r["wall_s"] for r in other)
        f["burst.wall.ratio"] = f["burst.ours_wall_s"] / f["burst.direct_wall_s"]
        f["burst.peak_rss_mib"] = max(r["peak_rss_mb"] for r in ours)
        f["burst.idle_rss_mib"] = max(r["idle_rss_mb"] for r in ours)
        f["burst.ours_queue_all_s"] = min(r["queue_all_s"] for r in ours)
        f["burst.direct_queue_all_s"] = min(r["queue_all_s"] for r in other)
        for phase in ("arrival", "queued"):
            for stat in ("p50", "p99", "max"):
                f[f"burst.{phase}_health_{stat}_ms"] = max(r[f"{phase}_health_{stat}_ms"] for r in ours)
            f[f"burst.{phase}_health_failures"] = sum(r[f"{phase}_health_failures"] for r in ours)
            f[f"burst.direct_{phase}_health_p99_ms"] = max(r[f"{phase}_health_p99_ms"] for r in other)


def _check_burst(answers: list[Any], colors: list[int]) -> dict[str, Any]:
    """Failures (an exception or a refusal) and wrong answers (not exactly one output, of the request's own colour)."""
    failures, wrong, errors = 0, 0, []
    for answer, color in zip(answers, colors, strict=True):
        if isinstance(answer, BaseException):
            failures += 1
            errors.append(f"{type(answer).__name__}: {answer}")
        elif len(answer.images) != 1 or pixel_color(answer.images[0]) != color:
            wrong += 1
            errors.append(f"expected one image of colour {color:#08x}, got {len(answer.images)}")
    return {"failures": failures, "wrong": wrong, "errors": errors[:20]}


class DirectSide:
    """The direct client, its websocket open for the whole run, and the clean-up after each case."""

    def __init__(self, url: str) -> None:
        from .direct import DirectComfy

        self.comfy = DirectComfy(url)

    async def __aenter__(self) -> DirectSide:
        await self.comfy.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.comfy.__aexit__(*exc)

    async def cleanup(self, output_dir: Path) -> None:
        """Our server deletes its outputs and history entries; the direct client's are removed here."""
        await self.comfy.forget()
        await asyncio.to_thread(_remove_files, output_dir)


def _remove_files(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------------------


def _checks(figures: dict[str, float], errors: dict[str, str], cases: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(case: str, ours: str, reference: str, ratio: str, bar: str, ok: bool | None) -> None:
        result = "ERROR" if ok is None else "-" if bar == "-" else "PASS" if ok else "FAIL"
        rows.append({"case": case, "ours": ours, "reference": reference, "ratio": ratio, "bar": bar, "result": result})

    for case in cases:
        if case in errors:
            row(f"{case} (all figures)", "-", "-", "-", "-", None)
            continue
        f = {name.split(".", 1)[1]: value for name, value in figures.items() if name.startswith(f"{case}.")}
        if case in SEQUENTIAL_CASES:
            for pct in (50, 95, 99):
                row(
                    f"{case} latency p{pct} ms (ours / direct)",
                    f"{f[f'ours_p{pct}_ms']:.2f}",
                    f"{f[f'direct_p{pct}_ms']:.2f}",
                    f"{f[f'ours_p{pct}_ms'] / f[f'direct_p{pct}_ms']:.2f}x",
                    "-",
                    True,
                )
            for pct, bar in ((50, ADDED_P50_BAR_MS), (95, ADDED_P95_BAR_MS), (99, None)):
                value = f[f"added_p{pct}_ms"]
                row(
                    f"{case} added p{pct} ms (net of ComfyUI's execution)",
                    f"{f[f'ours_overhead_p{pct}_ms']:.2f} - {f[f'direct_overhead_p{pct}_ms']:.2f} = {value:.2f}",
                    "-",
                    "-",
                    "-" if bar is None else f"<= {bar:g} ms",
                    True if bar is None else value <= bar,
                )
            for pct in (50, 95, 99):
                row(
                    f"{case} paired difference p{pct} ms (raw / net)",
                    f"{f[f'paired_p{pct}_ms']:.2f} / {f[f'paired_net_p{pct}_ms']:.2f}",
                    "-",
                    "-",
                    "-",
                    True,
                )
            continue
        count = int(f["requests"])
        row(
            f"burst of {count}: failed or wrong answers",
            f"{f['failures']:.0f}",
            f"{f['direct_failures']:.0f} (direct)",
            "-",
            "0",
            f["failures"] == 0,
        )
        row(
            f"burst of {count}: wall time s",
            f"{f['ours_wall_s']:.2f}",
            f"{f['direct_wall_s']:.2f} (direct)",
            f"{f['wall.ratio']:.3f}x",
            f"<= {BURST_WALL_BAR:g}x",
            f["wall.ratio"] <= BURST_WALL_BAR,
        )
        row(
            f"burst of {count}: peak RSS MiB (idle {f['idle_rss_mib']:.0f})",
            f"{f['peak_rss_mib']:.0f}",
            "-",
            "-",
            f"<= 300 MB ({BURST_RSS_BAR_MIB:.0f} MiB)",
            f["peak_rss_mib"] <= BURST_RSS_BAR_MIB,
        )
        row(
            f"burst of {count}: time to get all into ComfyUI's queue s",
            f"{f['ours_queue_all_s']:.2f}",
            f"{f['direct_queue_all_s']:.2f} (direct)",
            f"{f['ours_queue_all_s'] / f['direct_queue_all_s']:.2f}x" if f["direct_queue_all_s"] else "-",
            "-",
            True,
        )
        row(
            f"burst of {count}: GET /health p99 ms while queued (p50 {f['queued_health_p50_ms']:.1f}, max "
            f"{f['queued_health_max_ms']:.1f})",
            f"{f['queued_health_p99_ms']:.1f}",
            f"{f['direct_queued_health_p99_ms']:.1f} (idle server, direct burst)",
            "-",
            f"<= {HEALTH_P99_BAR_MS:g} ms, all 200",
            f["queued_health_p99_ms"] <= HEALTH_P99_BAR_MS and f["queued_health_failures"] == 0,
        )
        row(
            f"burst of {count}: GET /health p99 ms while arriving (p50 {f['arrival_health_p50_ms']:.1f}, max "
            f"{f['arrival_health_max_ms']:.1f})",
            f"{f['arrival_health_p99_ms']:.1f}",
            f"{f['direct_arrival_health_p99_ms']:.1f} (idle server, direct burst)",
            "-",
            "-",
            f["arrival_health_failures"] == 0,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.requests", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential pairs per case (200)")
    parser.add_argument("--burst", type=int, default=1000, help="requests sent at once (1000)")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="burst rounds per side (2)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 2 or args.burst < 1:
        parser.error("--requests must be >= 2 and --burst >= 1")
    check_cases_and_baseline(parser, args, CASES)
    return args


def _raise_open_files_limit() -> None:
    """A burst holds a connection per request open in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.probe:
        probe_health(args.probe)
        return 0
    prepare()
    _raise_open_files_limit()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-") as folder:
        bench = Bench(args, Path(folder))
        run_session(bench, lambda: asyncio.run(bench.run()))
    checks = _checks(bench.figures, bench.errors, [c for c in args.cases if "setup" not in bench.errors])
    print()
    print(f"comfyui-api request benchmark: {args.requests} pairs, bursts of {args.burst}, {os.cpu_count()} CPUs")
    print_checks(checks, bench.errors, quiet=("PASS", "-"))
    print("(added = ours - direct, paired request by request; RSS: the comfyui-api process)")
    if args.baseline:
        print()
        print(compare(bench.figures, args.baseline, args.cases))
    if args.json:
        settings = {"requests": args.requests, "burst": args.burst, "rounds": args.rounds, "cases": args.cases}
        write_report(
            args.json, started, settings, figures=bench.figures, checks=checks, errors=bench.errors, runs=bench.runs
        )
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
