"""Benchmark of fleet mode: what dispatching a prompt through RabbitMQ and PostgreSQL adds to its latency, and what
a second worker adds to the throughput of CPU-bound jobs.

    .venv/bin/python -m bench.fleet [--requests 200] [--async-requests 100] [--jobs 24] [--blur-size 512] [--blurs 2]
                                    [--cases dispatch,async,throughput] [--json out.json] [--baseline earlier.json]

Run from the repository root. RabbitMQ and PostgreSQL are found as the fleet tests find them (tests/support/
rabbitmq.py and postgres.py): TEST_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672/, a vhost made with
rabbitmqctl when this runs as root or rabbitmq, else through the management API of TEST_BROKER_ADMIN_URL) and
TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres); where nothing answers at the default
address, a private server of our own is started from the installed packages. The run gets a private vhost and a
private database (random names, comfyui-api-bench-… and comfyui_api_bench_…), deleted at the end, and a queue prefix
of its own. Servers are tests/support/server.py's ApiServer (LOG_LEVEL=info, no warmup) in a temporary folder:

* standalone: a plain server in front of its own CPU ComfyUI (C1);
* fleet: a fleet-mode server (BROKER_URL, JOB_STORE_URL, FLEET_SECRET_KEY, FLEET_ROLE=all) in front of that same
  ComfyUI C1 (its CMD only idles, as bench/guard.py's second server): the two sides differ by fleet mode alone, not
  by two ComfyUI processes' luck on shared cores. It is the fleet's only worker until the throughput case starts a
  second one, so every fleet job of the latency cases runs on C1;
* relayed: an API-only fleet replica (FLEET_ROLE=api, no ComfyUI): its jobs run on the fleet server's worker, whose
  answers come back through RabbitMQ, as for a request taken by any replica but the worker's own (a job run by the
  worker of the replica that took it has its answer handed over in process);
* direct: ComfyUI C1 used directly (bench/direct.py), for reference.

Every ComfyUI gets OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1 (inherited from its server's environment; ComfyUI sets no
thread count of its own), so that one ComfyUI uses one core. Every prompt has a colour of its own, so ComfyUI's cache
never skips work.

* dispatch: --requests rounds of one synchronous request to standalone, fleet and direct (`EmptyImage 8x8 ->
  SaveImage`, POST /prompt, the answer read and parsed), the order of the sides rotating, after WARM_UP_REQUESTS of
  each. ComfyUI's execution of each prompt (stats.comfy_execution for the servers, the websocket's events for
  direct) is taken out of its latency, as bench/requests.py does. "fleet added pX" is pX of the fleet's net latency
  minus pX of the standalone's. Bar: fleet added p50 <= 5 ms. The raw figures and the paired differences are
  reported beside it, and the CPU each server spent per request, how busy the machine was, and what the rest of it
  (RabbitMQ, PostgreSQL, any other work) used meanwhile. Then --requests rounds of a standalone request and a
  relayed one, by turns: "relayed added pX" is pX of the relayed side's net latency minus the standalone's of the
  same rounds (informational), with the CPU of the API-only replica and the worker per relayed request.
* async: --async-requests rounds of one asynchronous request per server side (the same graph, with a webhook_v2 to a
  receiver in this process, tests/support/receiver.py), standalone and fleet by turns: the time from sending the
  request to its 202, and to the arrival of its `prompt.complete` webhook (the receiver's clock on arrival).
* throughput: --jobs synchronous requests at once (tests/support/graphs.py's slow(): --blurs Gaussian blurs of a
  --blur-size square, CPU-bound, about a second a job on one core), all sent to the fleet server; the wall time
  until every answer came, as jobs per second. First with one worker (the fleet server on C1); then a second fleet
  server with a ComfyUI of its own (C2) is started and as many jobs run on the two; then the second one is stopped
  and the one-worker run is repeated (other work on the machine drifts: the one-worker rate is the mean of the runs
  before and after). A few warm-up jobs precede each run. Reported: the ratio of the two-worker rate to the
  one-worker rate, the jobs each worker ran (from its log), the CPU seconds of each server and ComfyUI, how busy
  the whole machine was, and the CPU seconds of the rest of it (RabbitMQ, PostgreSQL, anything else running).
  Bar: ratio >= 1.8 on a machine of at least 4 CPUs; on fewer it is informational (N/A): two single-threaded
  ComfyUIs then share the cores with both servers, RabbitMQ, PostgreSQL and this process.

The exit status is 0 whatever the bars say, 1 only when something could not be measured. Everything started is
stopped and removed at the end (servers, vhost, database, any broker or database server of our own), also on Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
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
from .direct import Outcome
from .requests import PNG_BASE64_START, WARM_UP_REQUESTS, CpuTimes, DirectSide, empty_graph, percentile

ADDED_P50_BAR_MS = 5.0
SCALING_BAR = 1.8
# Below this many CPUs two single-threaded ComfyUIs cannot each have a core to themselves: the servers, the broker,
# the database and this process take their share of the same cores.
SCALING_MIN_CPUS = 4
CASES = ("dispatch", "async", "throughput")
SIDES = ("standalone", "fleet", "direct")
SERVER_SIDES = ("standalone", "fleet")
ORDERS = (["standalone", "fleet", "direct"], ["fleet", "direct", "standalone"], ["direct", "standalone", "fleet"])
RELAYED_ORDERS = (["standalone", "relayed"], ["relayed", "standalone"])
DISPATCH_SIZE = 8
REQUEST_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 120.0
WEBHOOK_TIMEOUT_S = 120.0
THROUGHPUT_WARM_UP = {1: 2, 2: 4}  # jobs at once before each run: enough for every worker to take one
# One ComfyUI, one core: the servers pass their environment on to the ComfyUI they launch.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def slow_graph(size: int, blurs: int, color: int) -> dict[str, Any]:
    from tests.support.graphs import slow

    graph = slow(size=size, blurs=blurs)
    graph["1"]["inputs"]["color"] = color  # slow() has one colour: ComfyUI would answer a repeat from its cache
    return graph


class Services:
    """This run's private vhost and database, on the machine's RabbitMQ and PostgreSQL or on servers of our own."""

    def __init__(self) -> None:
        self.own: list[Any] = []  # an OwnBroker or OwnPostgres started here, closed in stop()
        self.vhost: Any = None
        self.database: Any = None

    def start(self) -> tuple[str, str]:
        """(broker URL, database URL) of the private vhost and database."""
        from tests.support.postgres import DEFAULT_DATABASE_URL, OwnPostgres, PrivateDatabase
        from tests.support.rabbitmq import (
            DEFAULT_BROKER_URL,
            BrokerServer,
            OwnBroker,
            PrivateVhost,
            needs_own_server,
            system_ctl,
        )

        token = secrets.token_hex(6)
        url, own = needs_own_server("TEST_BROKER_URL", DEFAULT_BROKER_URL, 5672)
        if own:
            log(f"no RabbitMQ at {url}: starting one of our own")
            broker = OwnBroker()
            self.own.append(broker)
            server = broker.start().server()
        else:
            server = BrokerServer(url, ctl=system_ctl(), admin_url=os.environ.get("TEST_BROKER_ADMIN_URL") or None)
        self.vhost = PrivateVhost(server, name=f"comfyui-api-bench-{token}")
        broker_url = self.vhost.create()
        log(f"  RabbitMQ vhost {self.vhost.name} on {server.url}")
        admin, own = needs_own_server("TEST_DATABASE_URL", DEFAULT_DATABASE_URL, 5432)
        if own:
            log(f"no PostgreSQL at {admin}: starting one of our own")
            postgres = OwnPostgres()
            self.own.append(postgres)
            admin = postgres.start().url
        self.database = PrivateDatabase(admin, name=f"comfyui_api_bench_{token}")
        database_url = self.database.create()
        log(f"  PostgreSQL database {self.database.name}")
        return broker_url, database_url

    def stop(self) -> None:
        # Each step on its own: a failed one must not leave the others' leftovers behind.
        for what, step in (
            ("delete the vhost", self.vhost.delete if self.vhost else None),
            ("drop the database", self.database.drop if self.database else None),
            *((f"stop {type(own).__name__}", own.close) for own in self.own),
        ):
            if step is None:
                continue
            try:
                step()
            except Exception as error:
                log(f"could not {what}: {error}")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.figures: dict[str, float] = {}
        self.runs: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.services = Services()
        self.receiver: Any = None
        self.standalone: Any = None
        self.fleet: Any = None
        self.gateway: Any = None  # the API-only replica of the dispatch case's relayed rounds
        self.second: Any = None  # the second worker, started by the throughput case
        self.fleet_env: dict[str, str] = {}
        self.token = secrets.token_hex(4)
        self._color = 0x000001  # every prompt of the session gets a colour of its own
        self._ids = 0

    # lifecycle -------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        from cryptography.fernet import Fernet

        from tests.support.receiver import WebhookReceiver
        from tests.support.server import ApiServer, trusting

        log("creating a private RabbitMQ vhost and PostgreSQL database")
        broker_url, database_url = self.services.start()
        self.receiver = WebhookReceiver().start()
        common = {"LOG_LEVEL": "info", **ONE_THREAD, **trusting(self.receiver.url)}
        self.fleet_env = {
            **common,
            "BROKER_URL": broker_url,
            "JOB_STORE_URL": database_url,
            "FLEET_SECRET_KEY": Fernet.generate_key().decode(),
            "FLEET_QUEUE_PREFIX": f"bench-{self.token}",
        }
        self.standalone = ApiServer(self.work / "standalone", checkpoint(), **common)
        self.fleet = ApiServer(
            self.work / "fleet",
            checkpoint(),
            comfy_port=self.standalone.comfy_port,
            CMD="sleep infinity",
            INPUT_DIR=str(self.standalone.base / "input"),
            OUTPUT_DIR=str(self.standalone.base / "output"),
            **self.fleet_env,
        )
        self.gateway = ApiServer(self.work / "gateway", checkpoint(), FLEET_ROLE="api", **self.fleet_env)
        log(
            "starting a standalone comfyui-api with its ComfyUI, a fleet-mode one in front of the same ComfyUI, and an "
            "API-only fleet replica"
        )
        started = time.monotonic()
        servers = (self.standalone, self.fleet, self.gateway)
        for server in servers:
            server.start(wait="none")
        for server in servers:
            _wait_ready(server)
        log(f"  all ready in {time.monotonic() - started:.1f} s")

    def stop(self) -> None:
        for server in (self.second, self.gateway, self.fleet, self.standalone):
            if server is not None:
                server.stop()
        if self.receiver is not None:
            self.receiver.stop()
        self.services.stop()

    def next_color(self) -> int:
        self._color += 1
        return self._color

    def next_id(self, what: str) -> str:
        self._ids += 1
        return f"bench-{self.token}-{what}-{self._ids}"

    async def run(self) -> None:
        from comfyui_api.comfy.http import LocalHttp

        def client(url: str) -> LocalHttp:
            return LocalHttp(url, timeout_s=REQUEST_TIMEOUT_S, connect_timeout_s=60.0, max_connections=256)

        clients = {
            "standalone": client(self.standalone.url),
            "fleet": client(self.fleet.url),
            "relayed": client(self.gateway.url),
        }
        try:
            async with DirectSide(self.standalone.comfy_url) as direct:
                for case in self.args.cases:
                    try:
                        if case == "dispatch":
                            await self.dispatch(clients, direct)
                        elif case == "async":
                            await self.asynchronous(clients)
                        else:
                            await self.throughput(clients["fleet"])
                    except Exception as error:  # one case's failure is reported; the others still run
                        self.errors[case] = f"{type(error).__name__}: {error}"
                        tails = "\n".join(
                            f"--- {name}:\n{server.log_tail(20)}"
                            for name, server in (("standalone", self.standalone), ("fleet", self.fleet))
                        )
                        log(f"ERROR in {case}: {self.errors[case]}\n{tails}")
                    await direct.cleanup(self.standalone.base / "output")
        finally:
            for http in clients.values():
                await http.aclose()

    async def prompt(self, http: Any, body: dict[str, Any]) -> Outcome:
        response = await http.request("POST", "/prompt", json_body=body)
        if response.status != 200:
            raise BenchError(f"POST /prompt answered {response.status}: {response.text[:1000]}")
        answer = response.json()
        outcome = Outcome(answer["images"], answer["stats"]["comfy_execution"]["duration"])
        if len(outcome.images) != 1 or not outcome.images[0].startswith(PNG_BASE64_START):
            raise BenchError(f"expected one base64 PNG, got {len(outcome.images)} outputs")
        return outcome

    # dispatch --------------------------------------------------------------------------------------------------------
    async def dispatch(self, clients: dict[str, Any], direct: DirectSide) -> None:
        def graph() -> dict[str, Any]:
            return empty_graph(DISPATCH_SIZE, self.next_color())

        sides: dict[str, Callable[[], Awaitable[Outcome]]] = {
            "standalone": lambda: self.prompt(clients["standalone"], {"prompt": graph()}),
            "fleet": lambda: self.prompt(clients["fleet"], {"prompt": graph()}),
            "relayed": lambda: self.prompt(clients["relayed"], {"prompt": graph()}),
            "direct": lambda: direct.comfy.run(graph()),
        }
        log(f"dispatch: {WARM_UP_REQUESTS} warm-up requests each, then {self.args.requests} rounds")
        for _ in range(WARM_UP_REQUESTS):
            for call in sides.values():
                await call()
        with self.machine() as machine:
            times, executions = await self._rounds(sides, ORDERS)
        # ComfyUI's execution varies from prompt to prompt and is ComfyUI's time: taken out, as bench/requests.py does.
        net = {name: [t - e for t, e in zip(times[name], executions[name], strict=True)] for name in SIDES}
        paired = [f - s for f, s in zip(times["fleet"], times["standalone"], strict=True)]
        paired_net = [f - s for f, s in zip(net["fleet"], net["standalone"], strict=True)]
        self.runs["dispatch"] = {"times": times, "executions": executions}
        f = self.figures
        for pct in (50, 95, 99):
            for name in SIDES:
                f[f"dispatch.{name}_p{pct}_ms"] = percentile(times[name], pct)
                f[f"dispatch.{name}_net_p{pct}_ms"] = percentile(net[name], pct)
            f[f"dispatch.fleet_added_p{pct}_ms"] = (
                f[f"dispatch.fleet_net_p{pct}_ms"] - f[f"dispatch.standalone_net_p{pct}_ms"]
            )
            f[f"dispatch.fleet_added_raw_p{pct}_ms"] = (
                f[f"dispatch.fleet_p{pct}_ms"] - f[f"dispatch.standalone_p{pct}_ms"]
            )
            f[f"dispatch.standalone_added_p{pct}_ms"] = (
                f[f"dispatch.standalone_net_p{pct}_ms"] - f[f"dispatch.direct_net_p{pct}_ms"]
            )
            f[f"dispatch.paired_p{pct}_ms"] = percentile(paired, pct)
            f[f"dispatch.paired_net_p{pct}_ms"] = percentile(paired_net, pct)
        for name in SIDES:
            f[f"dispatch.{name}_execution_p50_ms"] = percentile(executions[name], 50)
        f["dispatch.machine_busy_percent"] = machine.busy_percent
        f["dispatch.other_cpu_s"] = machine.other_s
        # Each server served --requests of the rounds (the direct side's go to ComfyUI alone): its CPU per request,
        # the fleet server's for both of its parts (the front door and the worker).
        for name in SERVER_SIDES:
            f[f"dispatch.{name}_server_cpu_per_request_ms"] = machine.ours[f"{name}_server"] / self.args.requests * 1000
        log(
            f"  machine {machine.busy_percent:.0f} % busy; CPU s: "
            + ", ".join(f"{name} {value:.1f}" for name, value in machine.ours.items())
            + f", other processes (RabbitMQ, PostgreSQL, anything else) {machine.other_s:.1f}"
        )
        log(
            "  latency p50 / p95 ms: "
            + ", ".join(f"{n} {f[f'dispatch.{n}_p50_ms']:.2f} / {f[f'dispatch.{n}_p95_ms']:.2f}" for n in SIDES)
            + f"; fleet added over standalone (net of ComfyUI's execution) p50 {f['dispatch.fleet_added_p50_ms']:.2f}, "
            f"p95 {f['dispatch.fleet_added_p95_ms']:.2f} ms"
        )
        await self.relayed(sides)

    async def relayed(self, sides: dict[str, Callable[[], Awaitable[Outcome]]]) -> None:
        """Rounds of standalone and relayed requests: through the API-only replica, whose jobs the fleet server's
        worker runs and answers through RabbitMQ, as for a request taken by any replica but the worker's own."""
        log(f"  relayed: {self.args.requests} rounds of a standalone request and one through an API-only replica")
        with self.machine(gateway=True) as machine:
            times, executions = await self._rounds(sides, RELAYED_ORDERS)
        net = {name: [t - e for t, e in zip(times[name], executions[name], strict=True)] for name in times}
        self.runs["dispatch_relayed"] = {"times": times, "executions": executions}
        f = self.figures
        for pct in (50, 95, 99):
            f[f"dispatch.relayed_p{pct}_ms"] = percentile(times["relayed"], pct)
            f[f"dispatch.relayed_standalone_p{pct}_ms"] = percentile(times["standalone"], pct)
            f[f"dispatch.relayed_added_p{pct}_ms"] = percentile(net["relayed"], pct) - percentile(
                net["standalone"], pct
            )
        # A relayed job's front door is the API-only replica, its worker the fleet server.
        used = machine.ours["gateway_server"] + machine.ours["fleet_server"]
        f["dispatch.relayed_server_cpu_per_request_ms"] = used / self.args.requests * 1000
        log(
            f"  latency p50 / p95 ms: standalone {f['dispatch.relayed_standalone_p50_ms']:.2f} / "
            f"{f['dispatch.relayed_standalone_p95_ms']:.2f}, relayed {f['dispatch.relayed_p50_ms']:.2f} / "
            f"{f['dispatch.relayed_p95_ms']:.2f}; relayed added over standalone (net) p50 "
            f"{f['dispatch.relayed_added_p50_ms']:.2f}, p95 {f['dispatch.relayed_added_p95_ms']:.2f} ms"
        )

    async def _rounds(
        self, sides: dict[str, Callable[[], Awaitable[Outcome]]], orders: tuple[list[str], ...]
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """--requests rounds of one request per side of `orders`, the order rotating: each side's latencies and
        ComfyUI execution times, in ms."""
        times: dict[str, list[float]] = {name: [] for name in orders[0]}
        executions: dict[str, list[float]] = {name: [] for name in orders[0]}
        for index in range(self.args.requests):
            for name in orders[index % len(orders)]:
                started = time.perf_counter()
                outcome = await sides[name]()
                times[name].append((time.perf_counter() - started) * 1000)
                executions[name].append(outcome.execution_ms)
            if (index + 1) % 50 == 0:
                log(f"  {index + 1} rounds")
        return times, executions

    # async -----------------------------------------------------------------------------------------------------------
    async def asynchronous(self, clients: dict[str, Any]) -> None:
        assert self.receiver is not None

        async def submit(name: str) -> tuple[float, float]:
            """(ms to the 202, ms to the webhook's arrival) of one async request through `name`."""
            job_id = self.next_id(f"async-{name}")
            path = f"/{job_id}"
            body = {
                "prompt": empty_graph(DISPATCH_SIZE, self.next_color()),
                "id": job_id,
                "webhook_v2": self.receiver.url_for(path),
            }
            started = time.monotonic()
            response = await clients[name].request("POST", "/prompt", json_body=body)
            accepted = time.monotonic()
            if response.status != 202:
                raise BenchError(f"{name}: async POST /prompt answered {response.status}: {response.text[:1000]}")
            got = await self.receiver.async_wait_for(
                lambda requests: any(r.path == path for r in requests), timeout_s=WEBHOOK_TIMEOUT_S
            )
            hook = next(r for r in got if r.path == path)
            if hook.json().get("type") != "prompt.complete":
                raise BenchError(f"{name}: job {job_id} ended with webhook {hook.body[:500]}")
            # The receiver stamps a request on arrival, in its own thread: this process's wake-up is not counted.
            return (accepted - started) * 1000, (hook.at - started) * 1000

        log(f"async: {WARM_UP_REQUESTS} warm-up requests each, then {self.args.async_requests} rounds (webhook_v2)")
        for _ in range(WARM_UP_REQUESTS):
            for name in SERVER_SIDES:
                await submit(name)
        accepts: dict[str, list[float]] = {name: [] for name in SERVER_SIDES}
        done: dict[str, list[float]] = {name: [] for name in SERVER_SIDES}
        for index in range(self.args.async_requests):
            for name in SERVER_SIDES if index % 2 == 0 else SERVER_SIDES[::-1]:
                accept_ms, done_ms = await submit(name)
                accepts[name].append(accept_ms)
                done[name].append(done_ms)
        self.runs["async"] = {"accept_ms": accepts, "webhook_ms": done}
        f = self.figures
        for pct in (50, 95):
            for name in SERVER_SIDES:
                f[f"async.{name}_accept_p{pct}_ms"] = percentile(accepts[name], pct)
                f[f"async.{name}_p{pct}_ms"] = percentile(done[name], pct)
            f[f"async.fleet_added_p{pct}_ms"] = f[f"async.fleet_p{pct}_ms"] - f[f"async.standalone_p{pct}_ms"]
        log(
            "  POST -> 202 p50 ms: "
            + ", ".join(f"{n} {f[f'async.{n}_accept_p50_ms']:.2f}" for n in SERVER_SIDES)
            + "; POST -> webhook p50 / p95 ms: "
            + ", ".join(f"{n} {f[f'async.{n}_p50_ms']:.2f} / {f[f'async.{n}_p95_ms']:.2f}" for n in SERVER_SIDES)
        )

    # throughput ------------------------------------------------------------------------------------------------------
    async def throughput(self, http: Any) -> None:
        from tests.support.server import ApiServer

        count = self.args.jobs
        results: dict[str, dict[str, Any]] = {}
        log(f"throughput: {count} jobs at once (blurs of {self.args.blur_size}², {self.args.blurs} each), one worker")
        results["one"] = await self.batch(http, count, workers=[self.fleet])
        log("  starting a second fleet worker with a ComfyUI of its own")
        self.second = ApiServer(self.work / "fleet-2", checkpoint(), **self.fleet_env)
        started = time.monotonic()
        await asyncio.to_thread(self.second.start, wait="none")
        await asyncio.to_thread(_wait_ready, self.second)
        log(f"  ready in {time.monotonic() - started:.1f} s; {count} jobs at once, two workers")
        results["two"] = await self.batch(http, count, workers=[self.fleet, self.second])
        # One worker again, the second one gone (it holds no job: every batch ended): other work on this machine
        # comes and goes, and the mean of a run before and a run after the two-worker one evens out a drift.
        log(f"  stopping the second worker; {count} jobs at once, one worker again")
        await asyncio.to_thread(self.second.stop)
        results["one_again"] = await self.batch(http, count, workers=[self.fleet])
        self.runs["throughput"] = results
        f = self.figures
        f["throughput.jobs"] = count
        for label, result in results.items():
            f[f"throughput.{label}_wall_s"] = result["wall_s"]
            f[f"throughput.{label}_jobs_per_second"] = count / result["wall_s"]
            f[f"throughput.{label}_machine_busy_percent"] = result["machine_busy_percent"]
            f[f"throughput.{label}_other_cpu_s"] = result["other_cpu_s"]
        one = (f["throughput.one_jobs_per_second"] + f["throughput.one_again_jobs_per_second"]) / 2
        f["throughput.one_mean_jobs_per_second"] = one
        f["throughput.two_over_one.ratio"] = f["throughput.two_jobs_per_second"] / one
        log(
            f"  two workers / one: {f['throughput.two_over_one.ratio']:.2f}x ({one:.2f} jobs/s, the mean of the two "
            f"one-worker runs, -> {f['throughput.two_jobs_per_second']:.2f} jobs/s)"
        )

    async def batch(self, http: Any, count: int, *, workers: list[Any]) -> dict[str, Any]:
        """Warm-up jobs, then `count` synchronous jobs at once through the fleet server; the wall time until all
        were answered, the jobs each worker ran, CPU seconds."""

        def send(job_id: str) -> Awaitable[Outcome]:
            graph = slow_graph(self.args.blur_size, self.args.blurs, self.next_color())
            return self.prompt(http, {"prompt": graph, "id": job_id})

        await asyncio.gather(*(send(self.next_id("warm-up")) for _ in range(THROUGHPUT_WARM_UP[len(workers)])))
        ids = [self.next_id(f"throughput-{len(workers)}") for _ in range(count)]
        with self.machine(second=len(workers) > 1) as machine:
            started = time.perf_counter()
            answers = await asyncio.gather(*(send(job_id) for job_id in ids), return_exceptions=True)
            wall = time.perf_counter() - started
        failures = [a for a in answers if isinstance(a, BaseException)]
        if failures:
            raise BenchError(
                f"{len(failures)} of {count} jobs failed, e.g. {type(failures[0]).__name__}: {failures[0]}"
            )
        ran = [await asyncio.to_thread(_ran, worker, set(ids)) for worker in workers]
        log(
            f"  {wall:.2f} s, {count / wall:.2f} jobs/s; jobs per worker {ran}; machine {machine.busy_percent:.0f} % "
            "busy; CPU s: "
            + ", ".join(f"{name} {value:.1f}" for name, value in machine.ours.items())
            + f", other processes {machine.other_s:.1f}"
        )
        return {
            "wall_s": wall,
            "jobs_per_worker": ran,
            "machine_busy_percent": machine.busy_percent,
            "cpu_s": machine.ours,
            "other_cpu_s": machine.other_s,
        }

    def machine(self, *, second: bool = False, gateway: bool = False) -> MachineCpu:
        """CPU accounting of this run's processes (with the second worker's server and ComfyUI, when `second`; with
        the API-only replica, when `gateway`) and of the whole machine."""
        pids = {
            "standalone_server": self.standalone.process.pid,
            "fleet_server": self.fleet.process.pid,
            "comfyui_1": self.standalone.comfy_process().pid,
        }
        if second:
            pids |= {"fleet_server_2": self.second.process.pid, "comfyui_2": self.second.comfy_process().pid}
        if gateway:
            pids["gateway_server"] = self.gateway.process.pid
        return MachineCpu(**pids, bench=os.getpid())


class MachineCpu(CpuTimes):
    """CpuTimes of the named processes, and of the whole machine: how busy it was, and what the rest of it (RabbitMQ,
    PostgreSQL, any other work on it) used. On a shared 2-core machine the rest is what moves the figures from one run
    to the next."""

    def __init__(self, **pids: int) -> None:
        super().__init__(**pids)
        self._machine_start: Any = None
        self.busy_percent = 0.0
        self.ours: dict[str, float] = {}
        self.other_s = 0.0

    def __enter__(self) -> MachineCpu:
        import psutil

        self._machine_start = psutil.cpu_times()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import psutil

        super().__exit__(*exc)
        self.busy_percent, busy_s = _busy(self._machine_start, psutil.cpu_times())
        self.ours = {name: self.used(name) for name in self.names}
        self.other_s = max(0.0, busy_s - sum(self.ours.values()))


def _wait_ready(server: Any) -> None:
    """Healthy, then ready: a fleet server is ready once its broker connection and job store answer."""
    from tests.support.server import STARTUP_DEADLINE_S, wait_until

    wait_until(server.healthy, STARTUP_DEADLINE_S, "the server to become healthy", interval_s=0.2)
    wait_until(server.ready, READY_TIMEOUT_S, "the server to be ready", interval_s=0.2)


def _ran(server: Any, ids: set[str]) -> int:
    """How many of the jobs `ids` this server's ComfyUI ran (its log's `prompt completed` lines)."""
    return sum(
        1 for entry in server.log_entries() if entry.get("msg") == "prompt completed" and entry.get("request_id") in ids
    )


def _busy(before: Any, after: Any) -> tuple[float, float]:
    """How busy all the machine's CPUs were between two psutil.cpu_times() readings: (percent, CPU seconds)."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    # Guest time is counted in user time as well: leave it out of the busy seconds.
    guest = sum(getattr(after, name, 0.0) - getattr(before, name, 0.0) for name in ("guest", "guest_nice"))
    total -= guest
    return (100.0 * (1 - idle / total) if total > 0 else 0.0), max(0.0, total - idle)


# ---------------------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------------------


def _checks(figures: dict[str, float], errors: dict[str, str], cases: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(case: str, ours: str, reference: str, ratio: str, bar: str, result: str) -> None:
        rows.append({"case": case, "ours": ours, "reference": reference, "ratio": ratio, "bar": bar, "result": result})

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for case in cases:
        if case in errors:
            row(f"fleet-{case} (all figures)", "-", "-", "-", "-", "ERROR")
            continue
        f = {name.split(".", 1)[1]: value for name, value in figures.items() if name.startswith(f"{case}.")}
        if case == "dispatch":
            for pct in (50, 95, 99):
                row(
                    f"fleet-dispatch latency p{pct} ms (fleet / standalone, direct)",
                    f"{f[f'fleet_p{pct}_ms']:.2f}",
                    f"{f[f'standalone_p{pct}_ms']:.2f}, direct {f[f'direct_p{pct}_ms']:.2f}",
                    f"{f[f'fleet_p{pct}_ms'] / f[f'standalone_p{pct}_ms']:.2f}x",
                    "-",
                    "-",
                )
            for pct in (50, 95, 99):
                value = f[f"fleet_added_p{pct}_ms"]
                row(
                    f"fleet-dispatch fleet added p{pct} ms over standalone (net of ComfyUI's execution; raw)",
                    f"{f[f'fleet_net_p{pct}_ms']:.2f} - {f[f'standalone_net_p{pct}_ms']:.2f} = {value:.2f}",
                    f"raw {f[f'fleet_added_raw_p{pct}_ms']:.2f}",
                    "-",
                    f"<= {ADDED_P50_BAR_MS:g} ms" if pct == 50 else "-",
                    verdict(value <= ADDED_P50_BAR_MS) if pct == 50 else "-",
                )
            for pct in (50, 95):
                row(
                    f"fleet-dispatch relayed added p{pct} ms over standalone (net; an API-only replica's request, the "
                    "answer through RabbitMQ)",
                    f"{f[f'relayed_added_p{pct}_ms']:.2f}",
                    f"latency {f[f'relayed_p{pct}_ms']:.2f} / standalone {f[f'relayed_standalone_p{pct}_ms']:.2f}",
                    "-",
                    "-",
                    "-",
                )
            row(
                "fleet-dispatch paired difference fleet - standalone p50 / p95 ms (net)",
                f"{f['paired_net_p50_ms']:.2f} / {f['paired_net_p95_ms']:.2f}",
                "-",
                "-",
                "-",
                "-",
            )
            row(
                "fleet-dispatch server CPU per request ms (fleet: front door and worker / standalone)",
                f"{f['fleet_server_cpu_per_request_ms']:.2f}",
                f"{f['standalone_server_cpu_per_request_ms']:.2f}",
                f"{f['fleet_server_cpu_per_request_ms'] / f['standalone_server_cpu_per_request_ms']:.2f}x",
                "-",
                "-",
            )
            row(
                "fleet-dispatch server CPU per relayed request ms (API-only replica and worker)",
                f"{f['relayed_server_cpu_per_request_ms']:.2f}",
                "-",
                "-",
                "-",
                "-",
            )
            row(
                "fleet-dispatch machine busy % / CPU s not ours (RabbitMQ, PostgreSQL, other work)",
                f"{f['machine_busy_percent']:.0f} % / {f['other_cpu_s']:.1f} s",
                "-",
                "-",
                "-",
                "-",
            )
            row(
                "fleet-dispatch standalone added over direct p50 / p95 ms (net)",
                f"{f['standalone_added_p50_ms']:.2f} / {f['standalone_added_p95_ms']:.2f}",
                "-",
                "-",
                "-",
                "-",
            )
        elif case == "async":
            for pct in (50, 95):
                row(
                    f"fleet-async POST -> webhook p{pct} ms (fleet / standalone)",
                    f"{f[f'fleet_p{pct}_ms']:.2f}",
                    f"{f[f'standalone_p{pct}_ms']:.2f}",
                    f"+{f[f'fleet_added_p{pct}_ms']:.2f} ms",
                    "-",
                    "-",
                )
            row(
                "fleet-async POST -> 202 p50 / p95 ms (fleet / standalone)",
                f"{f['fleet_accept_p50_ms']:.2f} / {f['fleet_accept_p95_ms']:.2f}",
                f"{f['standalone_accept_p50_ms']:.2f} / {f['standalone_accept_p95_ms']:.2f}",
                "-",
                "-",
                "-",
            )
        else:
            count = int(f["jobs"])
            ratio = f["two_over_one.ratio"]
            cpus = os.cpu_count() or 1
            applies = cpus >= SCALING_MIN_CPUS
            for label, what in (("one", "one worker"), ("two", "two workers"), ("one_again", "one worker again")):
                row(
                    f"fleet-throughput {count} jobs, {what}: wall s (jobs/s; machine "
                    f"{f[f'{label}_machine_busy_percent']:.0f} % busy, {f[f'{label}_other_cpu_s']:.1f} CPU s not ours)",
                    f"{f[f'{label}_wall_s']:.2f} ({f[f'{label}_jobs_per_second']:.2f}/s)",
                    "-",
                    "-",
                    "-",
                    "-",
                )
            row(
                f"fleet-throughput two workers / one (jobs/s; one: the mean of both runs), {cpus} CPUs",
                f"{ratio:.2f}x",
                "-",
                "-",
                f">= {SCALING_BAR:g}x" + ("" if applies else f" (with >= {SCALING_MIN_CPUS} CPUs)"),
                verdict(ratio >= SCALING_BAR) if applies else "N/A",
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="dispatch: rounds of one request per side (200)")
    parser.add_argument("--async-requests", type=int, default=100, help="async: rounds of one job per server (100)")
    parser.add_argument("--jobs", type=int, default=24, help="throughput: jobs sent at once per run (24)")
    parser.add_argument("--blur-size", type=int, default=512, help="throughput: the blurred square's side (512)")
    parser.add_argument("--blurs", type=int, default=2, help="throughput: blurs per job (2)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.async_requests < 2 or args.jobs < 2 or args.blur_size < 8 or args.blurs < 1:
        parser.error("--requests, --async-requests and --jobs must be >= 2, --blur-size >= 8, --blurs >= 1")
    check_cases_and_baseline(parser, args, CASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    prepare()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-fleet-") as folder:
        bench = Bench(args, Path(folder))
        run_session(bench, lambda: asyncio.run(bench.run()))
    checks = _checks(bench.figures, bench.errors, [c for c in args.cases if "setup" not in bench.errors])
    cpus = os.cpu_count() or 1
    print()
    print(
        f"comfyui-api fleet benchmark: {args.requests} dispatch rounds, {args.async_requests} async rounds, "
        f"{args.jobs} jobs per throughput run, {cpus} CPUs"
    )
    print_checks(checks, bench.errors, quiet=("PASS", "-", "N/A"))
    print("(added = fleet - standalone, percentile by percentile; both servers and direct use the same ComfyUI)")
    if "throughput" in args.cases and cpus < SCALING_MIN_CPUS:
        print(
            f"(throughput: N/A on {cpus} CPUs: the two single-threaded ComfyUIs share them with both servers, "
            "RabbitMQ, PostgreSQL and this process, so the ratio says what this machine allows, not what fleet "
            "mode does)"
        )
    if args.baseline:
        print()
        print(compare(bench.figures, args.baseline, args.cases))
    if args.json:
        settings = {
            "requests": args.requests,
            "async_requests": args.async_requests,
            "jobs": args.jobs,
            "blur_size": args.blur_size,
            "blurs": args.blurs,
            "cases": args.cases,
        }
        write_report(
            args.json, started, settings, figures=bench.figures, checks=checks, errors=bench.errors, runs=bench.runs
        )
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
