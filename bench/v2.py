"""Benchmark of Comfy API v2: a job's round trip, and a burst of jobs, through our server, through comfy-api-proxy
in front of the same ComfyUI, and against that ComfyUI directly.

    .venv/bin/python -m bench.v2 [--requests 200] [--burst 200] [--rounds 2] [--poll-s 0.5] [--connections 32]
                                 [--cases roundtrip,burst] [--json out.json] [--baseline earlier.json]

Run from the repository root. One comfyui-api server (tests/support/server.py's ApiServer, LOG_LEVEL=info, no
warmup, no API_KEYS: the v2 routes take no key) is started in a temporary folder in front of its own CPU ComfyUI, and
comfy-api-proxy (the reference v2 proxy, `comfy-api-proxy run` from .venv, its defaults: jobs in memory) is started on
a free loopback port in front of that same ComfyUI (`--comfyui` its URL, `--comfyui-base-dir` its base folder). Every
case runs the same graph, `EmptyImage 512x512 -> SaveImage`, on three sides in this session, each through its own
httpx.AsyncClient with the same limits (--connections calls in flight):

* ours and proxy (v2): POST /api/v2/jobs {"workflow": graph}, then the job is followed (below), then every output is
  downloaded from its `url` (GET /api/v2/assets/{id}/content);
* direct: what a client of plain ComfyUI does (bench/direct.py's client, its HTTP calls through httpx like the v2
  sides): POST /prompt with a client_id and a prompt_id, its websocket's `executing {node: null}`, GET /history/{id},
  GET /view of each output.

Every prompt has a colour of its own, so ComfyUI's cache never skips work for any side, and every downloaded output
is checked to be one PNG (its pixel of the prompt's own colour, in the burst). ComfyUI's execution of each prompt is
taken from ComfyUI itself, the same way for all three sides: a small extension in the bench ComfyUI's custom_nodes
(written there before it starts; it adds no node) times each prompt from the executor's `execution_start` message to
its `execution_success`, keyed by the prompt's colour, and answers GET /bench/executions. Neither server's answers
carry that span (ours' v2 metrics.execution_ms ends when the job's outputs are assets, the proxy has none).

* roundtrip: --requests rounds of one job per side, the order of the sides rotating (ours, proxy, direct; proxy,
  direct, ours; ...), after WARM_UP_REQUESTS of each. A v2 job is followed on its event stream, GET urls.events
  (SSE), read to its end (both servers end it after the terminal `status`; the proxy sends the `output` events after
  that status, ours before it). Latency runs from sending the submission to holding every output's bytes. Each
  request's execution is taken out of its latency; "added pX" is pX of what is left for ours (or the proxy) minus pX
  of what is left for direct. Bars: ours added p50 <= 2 ms and p95 <= 5 ms; ours (net) p50 and p95 <= the proxy's.
  What comfy-api-proxy 0.1.6 does with a job this short is part of its latency: a stream that ends with another
  status than `succeeded` (its snapshot reads ComfyUI's /history, then /queue: a prompt between the two is `expired`,
  one whose end event came before its history entry is `running`) is followed up by GETs of the job every 10 ms
  until it is terminal, and counted as a spurious end; a stream whose websocket connected after the prompt ended
  waits for the proxy's 15 s heartbeat.
* burst: --burst jobs submitted at once per side, each followed by polling GET /api/v2/jobs/{id} (urls.self) every
  --poll-s (0.5 s: the first interval of comfy-sdk 0.5.0's poll schedule, held) until it is terminal, then its
  outputs downloaded; the direct side sends as many prompts at once, each waiting for its websocket event (no
  polling). Neither v2 side can follow 200 streams at once (ours serves 100, the proxy 8), hence polling, which
  quantizes each v2 job's latency to the poll interval; the polls are work for this process, the server and (for the
  proxy, which asks ComfyUI's /history and /queue on each) ComfyUI, on the same cores. --rounds 2 (the default): ours,
  proxy, direct, then direct, proxy, ours; the best wall time of each side counts, the per-job latencies (from its
  submission to its outputs downloaded) are pooled over the rounds. CPU seconds of our server, the proxy, ComfyUI and
  this process, the polls and the time to each 201 are reported per round (in the JSON's runs). `expired` answered
  for a job of this run is the proxy's race above: counted, and polled on. Bars: no failed or wrong jobs; ours wall
  time and per-job p50 <= the proxy's.

The exit status is 0 whatever the bars say, 1 only when something could not be measured. Everything started is
stopped and removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import (
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
from .direct import DirectComfy
from .requests import WARM_UP_REQUESTS, CpuTimes, empty_graph, percentile

ADDED_P50_BAR_MS = 2.0
ADDED_P95_BAR_MS = 5.0
CASES = ("roundtrip", "burst")
SIDES = ("ours", "proxy", "direct")
V2_SIDES = ("ours", "proxy")
ORDERS = (["ours", "proxy", "direct"], ["proxy", "direct", "ours"], ["direct", "ours", "proxy"])
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
REQUEST_TIMEOUT_S = 300.0
PROXY_START_TIMEOUT_S = 60.0
# Polling after a spurious end (see V2Side.misses).
MISS_POLL_S = 0.01
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SIZE = 512

# Written into the bench ComfyUI's custom_nodes before it starts: ComfyUI's own execution time of each prompt, from
# the executor's execution_start message to its end message, by the colour of the prompt's EmptyImage.
TIMING_EXTENSION = '''"""comfyui-api bench (bench/v2.py): each prompt's execution as ComfyUI's executor reports it,
from its execution_start message to its end, in ms by the colour of the prompt's EmptyImage; GET /bench/executions
answers them and forgets them. No nodes."""

import time

import execution
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}
_ENDS = {"execution_success", "execution_error", "execution_interrupted"}
_started = {}
_executions = {}
_execute = execution.PromptExecutor.execute
_add_message = execution.PromptExecutor.add_message


def _key(prompt):
    for node in prompt.values():
        if isinstance(node, dict) and node.get("class_type") == "EmptyImage":
            return str(node.get("inputs", {}).get("color"))
    return None


def execute(self, prompt, prompt_id, *args, **kwargs):
    self.bench_key = _key(prompt)
    return _execute(self, prompt, prompt_id, *args, **kwargs)


def add_message(self, event, data, broadcast):
    key = getattr(self, "bench_key", None)
    if key is not None:
        if event == "execution_start":
            _started[key] = time.perf_counter()
        elif event in _ENDS and key in _started:
            _executions[key] = (time.perf_counter() - _started.pop(key)) * 1000
    return _add_message(self, event, data, broadcast)


execution.PromptExecutor.execute = execute
execution.PromptExecutor.add_message = add_message


@PromptServer.instance.routes.get("/bench/executions")
async def executions(request):
    return web.json_response({key: _executions.pop(key) for key in list(_executions)})
'''


def png_color(body: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(body)) as image:
        red, green, blue = image.convert("RGB").getpixel((0, 0))
    return (red << 16) | (green << 8) | blue


def http_client(url: str, connections: int) -> Any:
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=60.0)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, trust_env=False)


# ---------------------------------------------------------------------------------------------------------------------
# The three sides. Each call takes a graph and returns the bytes of its outputs.
# ---------------------------------------------------------------------------------------------------------------------


class V2Side:
    """A v2 client of one server (ours or the proxy): submit, follow (events or polling), download."""

    def __init__(self, name: str, url: str, connections: int) -> None:
        self.name = name
        self.http = http_client(url, connections)
        # Spurious ends: an event stream that ended without `succeeded` (the job is then polled every MISS_POLL_S),
        # `expired` answered for a job of this run (polled on); either way as part of the job's latency.
        self.misses: list[str] = []
        self.polls = 0  # GETs of a job
        self.submits_ms: list[float] = []  # each submission's time to its 201

    async def aclose(self) -> None:
        await self.http.aclose()

    def mark(self) -> tuple[int, int, int]:
        """Where the counters stand now, for `since`."""
        return len(self.misses), self.polls, len(self.submits_ms)

    def since(self, mark: tuple[int, int, int]) -> dict[str, Any]:
        """The spurious ends, polls and submission times since `mark`."""
        misses, polls, submits = mark
        return {"misses": self.misses[misses:], "polls": self.polls - polls, "submits_ms": self.submits_ms[submits:]}

    async def submit(self, graph: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        response = await self.http.post("/api/v2/jobs", json={"workflow": graph})
        self.submits_ms.append((time.perf_counter() - started) * 1000)
        if response.status_code != 201:
            raise BenchError(f"{self.name}: POST /api/v2/jobs answered {response.status_code}: {response.text[:500]}")
        return response.json()

    async def download(self, outputs: list[dict[str, Any]]) -> list[bytes]:
        bodies = []
        for output in outputs:
            response = await self.http.get(output["url"])
            if response.status_code != 200:
                raise BenchError(f"{self.name}: GET {output['url']} answered {response.status_code}")
            bodies.append(response.content)
        return bodies

    async def streamed(self, graph: dict[str, Any]) -> list[bytes]:
        """Submit, read the job's event stream to its end, download every output it announced. A stream that ends
        without `succeeded` is followed up on the job itself (GET urls.self, authoritative in the contract)."""
        job = await self.submit(graph)
        status, outputs = await self._events(job["urls"]["events"])
        if status != "succeeded":
            self.misses.append(f"{job['id']}: its event stream ended {status}")
            return await self._followed(job, MISS_POLL_S)
        return await self.download(outputs)

    async def _events(self, url: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The last `status` of the stream and its `output` events, the stream read until the server ends it."""
        status: str | None = None
        outputs: list[dict[str, Any]] = []
        async with self.http.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            if response.status_code != 200:
                await response.aread()
                raise BenchError(f"{self.name}: GET {url} answered {response.status_code}: {response.text[:500]}")
            name: str | None = None
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line:
                    if name == "output":
                        outputs.append(json.loads("\n".join(data)))
                    elif name == "status":
                        status = json.loads("\n".join(data))["status"]
                    name, data = None, []
        return status, outputs

    async def polled(self, graph: dict[str, Any], interval_s: float) -> list[bytes]:
        """Submit, GET the job every `interval_s` until it is terminal, download its outputs."""
        return await self._followed(await self.submit(graph), interval_s)

    async def _followed(self, job: dict[str, Any], interval_s: float) -> list[bytes]:
        """GET the job every `interval_s` until it is terminal; its outputs. No job of this run can expire (both
        servers keep jobs for hours): `expired` is the proxy's answer for a job it looked for in ComfyUI's history
        before it got there and in ComfyUI's queue after it left, counted in `misses` and polled on."""
        url = job["urls"]["self"]
        while True:
            await asyncio.sleep(interval_s)
            self.polls += 1
            response = await self.http.get(url)
            if response.status_code != 200:
                raise BenchError(f"{self.name}: GET {url} answered {response.status_code}: {response.text[:500]}")
            job = response.json()
            if job["status"] == "expired":
                self.misses.append(f"{job['id']}: GET answered expired")
            elif job["status"] in TERMINAL:
                break
        if job["status"] != "succeeded":
            raise BenchError(f"{self.name}: job {job['id']} ended {job['status']}: {job.get('error')}")
        return await self.download(job["outputs"])


class _Answer:
    """An httpx response in the shape of comfyui_api.comfy.http's Reply, which DirectComfy reads."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _HttpxCalls:
    """DirectComfy's calls (LocalHttp's interface) made through httpx, as the v2 sides make theirs."""

    def __init__(self, url: str, connections: int) -> None:
        self._http = http_client(url, connections)

    async def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None
    ) -> _Answer:
        response = await self._http.request(method, path, json=json_body, params=params)
        return _Answer(response.status_code, response.content)

    async def aclose(self) -> None:
        await self._http.aclose()


class DirectSide(DirectComfy):
    """bench/direct.py's client (its websocket open for the whole run), its HTTP calls through httpx, the outputs'
    bytes kept as they are (a v2 client gets bytes too)."""

    def __init__(self, url: str, connections: int) -> None:
        super().__init__(url)
        self._http = _HttpxCalls(url, connections)  # type: ignore[assignment]

    async def fetched(self, graph: dict[str, Any]) -> list[bytes]:
        prompt_id = str(uuid.uuid4())
        done = asyncio.get_running_loop().create_future()
        self._waiters[prompt_id] = done
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        response = await self._http.request("POST", "/prompt", json_body=body)
        if response.status != 200:
            self._waiters.pop(prompt_id, None)
            raise BenchError(f"direct: ComfyUI refused the prompt: {response.status} {response.text[:500]}")
        await done
        self._executions.pop(prompt_id, None)  # timed by the extension, as for the other sides
        entry = (await self._http.request("GET", f"/history/{prompt_id}")).json().get(prompt_id)
        if not entry or not entry.get("status", {}).get("completed"):
            raise BenchError(f"direct: ComfyUI did not complete the prompt: {json.dumps(entry)[:1000]}")
        bodies = []
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                view = await self._http.request("GET", "/view", params=image)
                if view.status != 200:
                    raise BenchError(f"direct: /view answered {view.status} for {image}")
                bodies.append(view.body)
        return bodies

    async def executions(self) -> dict[int, float]:
        """ComfyUI's execution (ms) of each prompt since the last call, by colour (the bench's extension)."""
        answer = await self._http.request("GET", "/bench/executions")
        if answer.status != 200:
            raise BenchError(f"GET /bench/executions answered {answer.status}: the timing extension is not loaded")
        return {int(color): ms for color, ms in answer.json().items()}


# ---------------------------------------------------------------------------------------------------------------------
# The proxy process.
# ---------------------------------------------------------------------------------------------------------------------


class Proxy:
    """comfy-api-proxy in front of a ComfyUI, on a free loopback port, its output to a file."""

    def __init__(self, work: Path, comfy_url: str, comfy_base: Path) -> None:
        from tests.support.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "proxy.log"
        self.command = [
            str(Path(sys.executable).parent / "comfy-api-proxy"),
            "run",
            "--comfyui",
            comfy_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--comfyui-base-dir",
            str(comfy_base),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                self.command, cwd=self.log_path.parent, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        deadline = time.monotonic() + PROXY_START_TIMEOUT_S
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                if self.process.poll() is not None:
                    raise BenchError(f"comfy-api-proxy exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.url}/api/v2/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"comfy-api-proxy did not answer within {PROXY_START_TIMEOUT_S:g} s")
                time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.figures: dict[str, float] = {}
        self.runs: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.server: Any = None
        self.proxy: Proxy | None = None
        self._color = 0x000001  # every prompt of the session gets a colour of its own

    def start(self) -> None:
        from tests.support.server import ApiServer

        self.server = ApiServer(self.work / "server", checkpoint(), LOG_LEVEL="info")
        (self.server.base / "custom_nodes" / "comfyui_api_bench_timing.py").write_text(TIMING_EXTENSION)
        log("starting comfyui-api and its ComfyUI")
        started = time.monotonic()
        self.server.start()
        log(f"  healthy in {time.monotonic() - started:.1f} s")
        log("starting comfy-api-proxy in front of the same ComfyUI")
        self.proxy = Proxy(self.work, self.server.comfy_url, self.server.base)
        self.proxy.start()
        log(f"  {self.proxy.url}")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.server is not None:
            self.server.stop()

    def next_color(self) -> int:
        self._color += 1
        return self._color

    async def run(self) -> None:
        connections = self.args.connections
        ours = V2Side("ours", self.server.url, connections)
        assert self.proxy is not None
        proxy = V2Side("proxy", self.proxy.url, connections)
        try:
            async with DirectSide(self.server.comfy_url, connections) as direct:
                await direct.executions()  # whatever was timed before this run
                for case in self.args.cases:
                    try:
                        if case == "roundtrip":
                            await self.roundtrip(ours, proxy, direct)
                        else:
                            await self.burst(ours, proxy, direct)
                    except Exception as error:  # one case's failure is reported; the others still run
                        self.errors[case] = f"{type(error).__name__}: {error}"
                        log(
                            f"ERROR in {case}: {self.errors[case]}\n{self.server.log_tail(20)}\n{self.proxy.log_tail()}"
                        )
                    await self.cleanup(direct)
        finally:
            await ours.aclose()
            await proxy.aclose()

    async def cleanup(self, direct: DirectSide) -> None:
        """Our server deletes its own history entries and output files; the proxy's and the direct client's are
        removed here (between cases, with nothing in flight)."""
        await direct.forget()
        await asyncio.to_thread(_remove_files, self.server.base / "output")

    # roundtrip ---------------------------------------------------------------------------------------------------
    async def roundtrip(self, ours: V2Side, proxy: V2Side, direct: DirectSide) -> None:
        sides: dict[str, Callable[[dict[str, Any]], Awaitable[list[bytes]]]] = {
            "ours": ours.streamed,
            "proxy": proxy.streamed,
            "direct": direct.fetched,
        }
        log(f"roundtrip: {WARM_UP_REQUESTS} warm-up jobs each, then {self.args.requests} rounds")
        for _ in range(WARM_UP_REQUESTS):
            for call in sides.values():
                await call(empty_graph(IMAGE_SIZE, self.next_color()))
        await direct.executions()
        v2 = {"ours": ours, "proxy": proxy}
        marks = {name: side.mark() for name, side in v2.items()}
        times: dict[str, list[float]] = {name: [] for name in SIDES}
        colors: dict[str, list[int]] = {name: [] for name in SIDES}
        for index in range(self.args.requests):
            for name in ORDERS[index % len(ORDERS)]:
                color = self.next_color()
                started = time.perf_counter()
                bodies = await sides[name](empty_graph(IMAGE_SIZE, color))
                times[name].append((time.perf_counter() - started) * 1000)
                colors[name].append(color)
                if len(bodies) != 1 or not bodies[0].startswith(PNG_SIGNATURE):
                    raise BenchError(f"{name}: expected one PNG, got {len(bodies)} outputs")
            if (index + 1) % 50 == 0:
                log(f"  {index + 1} rounds")
        timed = await direct.executions()
        missing = [color for name in SIDES for color in colors[name] if color not in timed]
        if missing:
            raise BenchError(f"ComfyUI's execution of {len(missing)} prompts was not timed (e.g. {missing[:3]})")
        executions = {name: [timed[color] for color in colors[name]] for name in SIDES}
        net = {name: [t - e for t, e in zip(times[name], executions[name], strict=True)] for name in SIDES}
        misses = {name: side.since(marks[name])["misses"] for name, side in v2.items()}
        self.runs["roundtrip"] = {"times": times, "executions": executions, "misses": misses}
        paired = [o - d for o, d in zip(net["ours"], net["direct"], strict=True)]
        versus = [o - p for o, p in zip(net["ours"], net["proxy"], strict=True)]
        f = self.figures
        for pct in (50, 95, 99):
            for name in SIDES:
                f[f"roundtrip.{name}_p{pct}_ms"] = percentile(times[name], pct)
                f[f"roundtrip.{name}_net_p{pct}_ms"] = percentile(net[name], pct)
            f[f"roundtrip.added_p{pct}_ms"] = f[f"roundtrip.ours_net_p{pct}_ms"] - f[f"roundtrip.direct_net_p{pct}_ms"]
            f[f"roundtrip.proxy_added_p{pct}_ms"] = (
                f[f"roundtrip.proxy_net_p{pct}_ms"] - f[f"roundtrip.direct_net_p{pct}_ms"]
            )
            f[f"roundtrip.paired_net_p{pct}_ms"] = percentile(paired, pct)
            f[f"roundtrip.paired_proxy_net_p{pct}_ms"] = percentile(versus, pct)
        for name in SIDES:
            f[f"roundtrip.{name}_execution_p50_ms"] = percentile(executions[name], 50)
        for name in V2_SIDES:
            f[f"roundtrip.{name}_misses"] = len(misses[name])
            for miss in misses[name][:3]:
                log(f"  {name}: {miss}")
        log(
            "  latency p50 / p95 ms: "
            + ", ".join(f"{n} {f[f'roundtrip.{n}_p50_ms']:.2f} / {f[f'roundtrip.{n}_p95_ms']:.2f}" for n in SIDES)
            + "; net of ComfyUI's execution: "
            + ", ".join(
                f"{n} {f[f'roundtrip.{n}_net_p50_ms']:.2f} / {f[f'roundtrip.{n}_net_p95_ms']:.2f}" for n in SIDES
            )
        )
        log(
            f"  added over direct (net) p50 / p95 ms: ours {f['roundtrip.added_p50_ms']:.2f} / "
            f"{f['roundtrip.added_p95_ms']:.2f}, proxy {f['roundtrip.proxy_added_p50_ms']:.2f} / "
            f"{f['roundtrip.proxy_added_p95_ms']:.2f}"
        )

    # burst -------------------------------------------------------------------------------------------------------
    async def burst(self, ours: V2Side, proxy: V2Side, direct: DirectSide) -> None:
        count = self.args.burst
        interval = self.args.poll_s
        sides: dict[str, Callable[[dict[str, Any]], Awaitable[list[bytes]]]] = {
            "ours": lambda graph: ours.polled(graph, interval),
            "proxy": lambda graph: proxy.polled(graph, interval),
            "direct": direct.fetched,
        }
        assert self.proxy is not None and self.proxy.process is not None
        pids = {
            "server": self.server.process.pid,
            "proxy": self.proxy.process.pid,
            "comfyui": self.server.comfy_process().pid,
            "bench": os.getpid(),
        }
        order = ["ours", "proxy", "direct", "direct", "proxy", "ours"][: 3 * self.args.rounds]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in SIDES}

        async def timed(call: Awaitable[list[bytes]]) -> tuple[float, list[bytes]]:
            started = time.perf_counter()
            bodies = await call
            return (time.perf_counter() - started) * 1000, bodies

        for name in order:
            colors = [self.next_color() for _ in range(count)]
            log(
                f"burst: {count} jobs at once, {name}" + (f" (polled every {interval:g} s)" if name != "direct" else "")
            )
            side = {"ours": ours, "proxy": proxy}.get(name)
            mark = side.mark() if side is not None else (0, 0, 0)
            with CpuTimes(**pids) as cpu:
                started = time.perf_counter()
                answers = await asyncio.gather(
                    *(timed(sides[name](empty_graph(IMAGE_SIZE, color))) for color in colors), return_exceptions=True
                )
                wall = time.perf_counter() - started
            result = _check_burst(answers, colors)
            result.update(
                wall_s=wall,
                cpu_s={key: cpu.used(key) for key in cpu.names},
                **(side.since(mark) if side is not None else {"misses": [], "polls": 0, "submits_ms": []}),
            )
            results[name].append(result)
            latencies = result["latencies_ms"]
            log(
                f"  {wall:.2f} s, {result['failures']} failed, {result['wrong']} wrong, {len(result['misses'])} "
                f"spurious ends, {result['polls']} polls"
                + (f", 201 p50 {percentile(result['submits_ms'], 50):.0f} ms" if result["submits_ms"] else "")
                + "; per job p50 "
                f"{percentile(latencies, 50) if latencies else 0:.0f} ms, p95 "
                f"{percentile(latencies, 95) if latencies else 0:.0f} ms; CPU s: "
                + ", ".join(f"{key} {value:.1f}" for key, value in result["cpu_s"].items())
            )
            for error in result["errors"][:3]:
                log(f"  e.g. {error}")
            await direct.executions()
            await self.cleanup(direct)
        self.runs["burst"] = results
        f = self.figures
        f["burst.jobs"] = count
        f["burst.poll_s"] = interval
        for name in SIDES:
            rounds = results[name]
            latencies = [ms for r in rounds for ms in r["latencies_ms"]]
            f[f"burst.{name}_failures"] = sum(r["failures"] + r["wrong"] for r in rounds)
            f[f"burst.{name}_misses"] = sum(len(r["misses"]) for r in rounds)
            f[f"burst.{name}_polls"] = sum(r["polls"] for r in rounds) / len(rounds)
            submits = [ms for r in rounds for ms in r["submits_ms"]]
            if submits:
                f[f"burst.{name}_submit_p50_ms"] = percentile(submits, 50)
            f[f"burst.{name}_wall_s"] = min(r["wall_s"] for r in rounds)
            for pct in (50, 95, 99):
                f[f"burst.{name}_p{pct}_ms"] = percentile(latencies, pct) if latencies else 0.0
            for key in pids:
                f[f"burst.{name}_cpu_{key}_s"] = min(r["cpu_s"][key] for r in rounds)
        f["burst.wall.ratio"] = f["burst.ours_wall_s"] / f["burst.proxy_wall_s"]


def _check_burst(answers: list[Any], colors: list[int]) -> dict[str, Any]:
    """Failures (an exception) and wrong answers (not exactly one output, of the job's own colour); the latencies of
    the others."""
    failures, wrong, errors, latencies = 0, 0, [], []
    for answer, color in zip(answers, colors, strict=True):
        if isinstance(answer, BaseException):
            failures += 1
            errors.append(f"{type(answer).__name__}: {answer}")
            continue
        ms, bodies = answer
        if len(bodies) != 1 or png_color(bodies[0]) != color:
            wrong += 1
            errors.append(f"expected one image of colour {color:#08x}, got {len(bodies)}")
            continue
        latencies.append(ms)
    return {"failures": failures, "wrong": wrong, "errors": errors[:20], "latencies_ms": latencies}


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
            row(f"v2-{case} (all figures)", "-", "-", "-", "-", None)
            continue
        f = {name.split(".", 1)[1]: value for name, value in figures.items() if name.startswith(f"{case}.")}
        if case == "roundtrip":
            for pct in (50, 95, 99):
                row(
                    f"v2-roundtrip latency p{pct} ms (ours / proxy, direct)",
                    f"{f[f'ours_p{pct}_ms']:.2f}",
                    f"{f[f'proxy_p{pct}_ms']:.2f}, direct {f[f'direct_p{pct}_ms']:.2f}",
                    f"{f[f'ours_p{pct}_ms'] / f[f'proxy_p{pct}_ms']:.2f}x",
                    "-",
                    True,
                )
            for pct, bar in ((50, ADDED_P50_BAR_MS), (95, ADDED_P95_BAR_MS), (99, None)):
                value = f[f"added_p{pct}_ms"]
                row(
                    f"v2-roundtrip added p{pct} ms over direct (net of ComfyUI's execution)",
                    f"{f[f'ours_net_p{pct}_ms']:.2f} - {f[f'direct_net_p{pct}_ms']:.2f} = {value:.2f}",
                    f"proxy {f[f'proxy_added_p{pct}_ms']:.2f}",
                    "-",
                    "-" if bar is None else f"<= {bar:g} ms",
                    True if bar is None else value <= bar,
                )
            for pct in (50, 95):
                row(
                    f"v2-roundtrip paired difference p{pct} ms, net (ours - direct / ours - proxy)",
                    f"{f[f'paired_net_p{pct}_ms']:.2f} / {f[f'paired_proxy_net_p{pct}_ms']:.2f}",
                    "-",
                    "-",
                    "-",
                    True,
                )
            row(
                "v2-roundtrip spurious ends, polled on (ours / proxy)",
                f"{f['ours_misses']:.0f}",
                f"{f['proxy_misses']:.0f}",
                "-",
                "-",
                True,
            )
            for pct in (50, 95):
                ours, proxy = f[f"ours_net_p{pct}_ms"], f[f"proxy_net_p{pct}_ms"]
                row(
                    f"v2-roundtrip p{pct} ms net of execution (ours / proxy)",
                    f"{ours:.2f}",
                    f"{proxy:.2f}",
                    f"{ours / proxy:.2f}x" if proxy else "-",
                    "<= proxy",
                    ours <= proxy,
                )
            continue
        count = int(f["jobs"])
        row(
            f"v2-burst of {count}: failed or wrong jobs (ours / proxy, direct)",
            f"{f['ours_failures']:.0f}",
            f"{f['proxy_failures']:.0f}, direct {f['direct_failures']:.0f}",
            "-",
            "0",
            f["ours_failures"] == 0,
        )
        row(
            f"v2-burst of {count}: spurious `expired`, polled on (ours / proxy)",
            f"{f['ours_misses']:.0f}",
            f"{f['proxy_misses']:.0f}",
            "-",
            "-",
            True,
        )
        row(
            f"v2-burst of {count}: wall time s (ours / proxy, direct)",
            f"{f['ours_wall_s']:.2f}",
            f"{f['proxy_wall_s']:.2f}, direct {f['direct_wall_s']:.2f}",
            f"{f['wall.ratio']:.2f}x",
            "<= proxy",
            f["ours_wall_s"] <= f["proxy_wall_s"],
        )
        for pct in (50, 95, 99):
            ours, proxy = f[f"ours_p{pct}_ms"], f[f"proxy_p{pct}_ms"]
            row(
                f"v2-burst of {count}: per-job latency p{pct} ms (ours / proxy, direct; polled every "
                f"{f['poll_s']:g} s)",
                f"{ours:.0f}",
                f"{proxy:.0f}, direct {f[f'direct_p{pct}_ms']:.0f}",
                f"{ours / proxy:.2f}x" if proxy else "-",
                "<= proxy" if pct == 50 else "-",
                ours <= proxy,
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.v2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="roundtrip: rounds of one job per side (200)")
    parser.add_argument("--burst", type=int, default=200, help="burst: jobs submitted at once per side (200)")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="burst rounds per side (2)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="burst: seconds between polls of a job (0.5)")
    parser.add_argument("--connections", type=int, default=32, help="calls in flight per side's client (32)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.burst < 1 or args.poll_s <= 0 or args.connections < 1:
        parser.error("--requests must be >= 2, --burst and --connections >= 1, --poll-s > 0")
    check_cases_and_baseline(parser, args, CASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    prepare()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-v2-") as folder:
        bench = Bench(args, Path(folder))
        run_session(bench, lambda: asyncio.run(bench.run()))
    checks = _checks(bench.figures, bench.errors, [c for c in args.cases if "setup" not in bench.errors])
    print()
    print(
        f"comfyui-api Comfy API v2 benchmark: {args.requests} rounds, bursts of {args.burst}, against "
        f"comfy-api-proxy {_proxy_version()} and direct ComfyUI, {os.cpu_count()} CPUs"
    )
    print_checks(checks, bench.errors, quiet=("PASS", "-"))
    print("(added = ours - direct, percentile by percentile, of each side's latency net of ComfyUI's execution)")
    if args.baseline:
        print()
        print(compare(bench.figures, args.baseline, args.cases))
    if args.json:
        settings = {
            "requests": args.requests,
            "burst": args.burst,
            "rounds": args.rounds,
            "poll_s": args.poll_s,
            "connections": args.connections,
            "cases": args.cases,
            "proxy": f"comfy-api-proxy {_proxy_version()}",
        }
        write_report(
            args.json, started, settings, figures=bench.figures, checks=checks, errors=bench.errors, runs=bench.runs
        )
    return 1 if bench.errors else 0


def _proxy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comfy-api-proxy")
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
