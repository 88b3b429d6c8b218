"""Benchmark of the URL guard: what safe URL fetching adds to a request whose input URL is already cached.

    .venv/bin/python -m bench.guard [--requests 200] [--json out.json] [--baseline earlier.json]

Run from the repository root. Two comfyui-api servers start in temporary folders in front of one CPU ComfyUI (the
second brings no ComfyUI of its own), so that the two sides differ by the guard alone: one with the guard on (the
default), one with HTTP_BLOCK_PRIVATE_ADDRESSES=false. Both get the same
request, `LoadImage(<url>) -> SaveImage` of a 64x64 PNG, alternating between them (and which goes first
alternating too), --requests times each; ComfyUI's own API is driven directly with the same graph on a file already
in its input folder, as the reference beside them.

The input URL is `http://93.184.216.34/bench/input.png`, a public address, so the guard on does all of its work for
an untrusted URL: parse, scheme, origin, trust lookup, and the classification of the address (a literal: no DNS
lookup; with a host name, a request also pays the system resolver once). Its file is placed in both servers' caches
before they start, so every request is a cache hit: nothing is ever downloaded, and each server's HTTP(S)_PROXY
points at a closed loopback port, so that even a bug could not send a packet to that address. The run fails if
either log shows a download.

Latency runs from sending the request to holding the parsed answer; ComfyUI's execution of each prompt
(stats.comfy_execution) is taken out, as in bench/requests.py. Bar: p50 on minus p50 off <= 1 ms. Reported too: p95,
the paired differences (request by request), direct ComfyUI's latency, and the in-process cost of one check (guard on,
a public literal and a trusted origin).

The exit status is 0 whatever the bar says, 1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
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
    on_against_off,
    percentile,
    servers_on_one_comfyui,
    start_servers,
)

ADDED_P50_BAR_MS = 1.0
URL = "http://93.184.216.34/bench/input.png"
CASES = ("cached_url",)


def graph(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "guard"}},
    }


def closed_port() -> int:
    from tests.support.server import closed_port

    return closed_port()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.figures: dict[str, float] = {}
        self.runs: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.servers: dict[str, Any] = {}
        self._turns = 0

    def _turn(self) -> int:
        self._turns += 1
        return self._turns % 2

    def start(self) -> None:
        from PIL import Image

        from comfyui_api.storage.cache import cache_key

        dead_proxy = f"http://127.0.0.1:{closed_port()}"
        self.servers = servers_on_one_comfyui(
            self.work,
            {"HTTP_BLOCK_PRIVATE_ADDRESSES": "true"},
            {"HTTP_BLOCK_PRIVATE_ADDRESSES": "false"},
            LOG_LEVEL="info",
            HTTP_PROXY=dead_proxy,
            HTTPS_PROXY=dead_proxy,
        )
        on = self.servers["on"]
        for server in self.servers.values():
            Image.new("RGB", (64, 64), (30, 60, 90)).save(server.base / "cache" / f"{cache_key(URL)}.png")
        # Two files, used in turn: ComfyUI would answer a repeated prompt from its cache without running it.
        for index in range(2):
            Image.new("RGB", (64, 64), (30, 60, 90 + index)).save(on.base / "input" / f"d{index}.png")
        start_servers(self.servers, "two comfyui-api servers (guard on, guard off) in front of one ComfyUI")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    async def run(self) -> None:
        from .requests import DirectSide

        clients = clients_of(self.servers)
        try:
            async with DirectSide(self.servers["on"].comfy_url) as direct:
                await self.sequential(clients, direct)
        except Exception as error:
            self.errors["cached_url"] = f"{type(error).__name__}: {error}"
            log(f"ERROR: {self.errors['cached_url']}")
        finally:
            for client in clients.values():
                await client.aclose()
        for name, server in self.servers.items():
            if any(entry.get("msg") == "downloaded" for entry in server.log_entries()):
                self.errors[f"{name}: download"] = "the server downloaded the input: the cache was not hit"
        await self.micro()

    async def ours(self, http: Any) -> Outcome:
        response = await http.request("POST", "/prompt", json_body={"prompt": graph(URL)})
        if response.status != 200:
            raise BenchError(f"POST /prompt answered {response.status}: {response.text[:1000]}")
        answer = response.json()
        return Outcome(answer["images"], answer["stats"]["comfy_execution"]["duration"])

    async def sequential(self, clients: dict[str, Any], direct: Any) -> None:
        sides = {
            "on": lambda: self.ours(clients["on"]),
            "off": lambda: self.ours(clients["off"]),
            "direct": lambda: direct.comfy.run(graph(f"d{self._turn()}.png")),
        }
        log(f"cached_url: {WARM_UP_REQUESTS} warm-up requests each, then {self.args.requests} rounds")
        self.runs["cached_url"] = await on_against_off(sides, self.args.requests, "cached_url", self.figures)
        f = self.figures
        log(
            f"  p50 on {f['cached_url.on_p50_ms']:.2f} ms, off {f['cached_url.off_p50_ms']:.2f} ms, direct "
            f"{f['cached_url.direct_p50_ms']:.2f} ms; added by the guard (net of ComfyUI's execution) p50 "
            f"{f['cached_url.added_p50_ms']:.3f} ms, p95 {f['cached_url.added_p95_ms']:.3f} ms"
        )

    async def micro(self) -> None:
        """One check in this process: a public literal address, and a trusted origin."""
        from comfyui_api.storage.net import UrlGuard

        guard = UrlGuard(trusted_origins=["http://minio.internal:9000"])

        async def timed(url: str) -> float:
            samples = []
            for _ in range(2000):
                started = time.perf_counter()
                await guard.check(url)
                samples.append((time.perf_counter() - started) * 1e6)
            return percentile(samples, 50)

        public = await timed(URL)
        trusted = await timed("http://minio.internal:9000/bucket/input.png")
        self.figures["cached_url.check_public_literal_p50_us"] = public
        self.figures["cached_url.check_trusted_origin_p50_us"] = trusted
        log(f"  one check in process: public literal {public:.1f} us, trusted origin {trusted:.1f} us (p50)")


def _checks(figures: dict[str, float], errors: dict[str, str]) -> list[dict[str, str]]:
    if "cached_url" in errors or "cached_url.added_p50_ms" not in figures:
        return [
            {
                "case": "cached_url (all figures)",
                "ours": "-",
                "reference": "-",
                "ratio": "-",
                "bar": "-",
                "result": "ERROR",
            }
        ]
    f = {name.split(".", 1)[1]: value for name, value in figures.items()}
    added = f["added_p50_ms"]
    return [
        {
            "case": "cached URL input: latency p50 ms (guard on / guard off)",
            "ours": f"{f['on_p50_ms']:.2f}",
            "reference": f"{f['off_p50_ms']:.2f} (direct {f['direct_p50_ms']:.2f})",
            "ratio": f"{f['on_p50_ms'] / f['off_p50_ms']:.3f}x",
            "bar": "-",
            "result": "-",
        },
        {
            "case": "cached URL input: added by the guard p50 ms (net of ComfyUI's execution)",
            "ours": f"{added:.3f}",
            "reference": f"paired p50 {f['paired_p50_ms']:.3f}",
            "ratio": "-",
            "bar": f"<= {ADDED_P50_BAR_MS:g}",
            "result": "PASS" if added <= ADDED_P50_BAR_MS else "FAIL",
        },
    ]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="rounds of one request per side (200)")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    args = parser.parse_args(argv)
    args.cases = ",".join(CASES)
    if args.requests < 2:
        parser.error("--requests must be >= 2")
    check_cases_and_baseline(parser, args, CASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    prepare()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-guard-") as folder:
        bench = Bench(args, Path(folder))
        run_session(bench, lambda: asyncio.run(bench.run()))
    checks = _checks(bench.figures, bench.errors)
    print()
    print(f"comfyui-api URL guard benchmark: {args.requests} rounds")
    print_checks(checks, bench.errors, quiet=("PASS", "-"))
    if args.baseline:
        print()
        print(compare(bench.figures, args.baseline, list(CASES)))
    if args.json:
        write_report(
            args.json,
            started,
            {"requests": args.requests},
            figures=bench.figures,
            checks=checks,
            errors=bench.errors,
            runs=bench.runs,
        )
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
