"""Benchmark of our download path (StorageManager.download) against reference tools, on loopback.

    .venv/bin/python -m bench.download [--size-mb 1024] [--runs 3] [--json out.json] [--baseline previous.json]

Run from the repository root. One file of --size-mb MiB of random bytes is written to a temporary folder, then:

* HTTP: served by a small sendfile(2) server in this process (127.0.0.1); our download vs `curl -s -o FILE URL`.
  `curl -o /dev/null` gives the ceiling of the server and loopback without any disk writes.
* S3: SeaweedFS (tests/support/services.py's SeaweedS3); our download of s3://bucket/key vs boto3's
  `client.download_file` with its default transfer settings.
* Peak RSS: each of our downloads runs in a fresh child process that does only that download, so ru_maxrss is ours
  alone; its RSS right after the imports is reported too.
* Cache hits: after each of our downloads the child asks for the same URL again --hits times, each into a new target
  folder, and times each call (no network).

Every timed download starts with an empty cache folder, after `sync` and dropping the page cache where allowed (root);
the source file (or SeaweedFS's volume files) is then read once, so that the server serves from memory. Throughput is
the best of --runs runs; MiB/s = 2**20 bytes per second; RSS in MiB. Both tools are timed inside their own process,
from the request to the file being complete (ours: the whole `StorageManager.download` call, including the S3
client's creation; boto3's reference likewise creates its client in the timed part; curl: its `time_total`).

The bars (ours >= 90 % of the reference's throughput, peak RSS < 200 MiB, median cache hit < 10 ms) print PASS or
FAIL; the exit status is 0 whatever they say, and 1 only when the benchmark itself could not measure something.
Everything started (servers, children, files) is stopped and removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .common import (
    MIB,
    BenchError,
    compare,
    import_path,
    log,
    prepare,
    print_checks,
    remove,
    run_child,
    sigterm_exits,
    write_report,
)

CHILD_TIMEOUT_S = 300.0  # one download of one file, however slow the machine
THROUGHPUT_BAR = 0.90  # ours / reference
RSS_BAR_MIB = 200.0
HIT_BAR_MS = 10.0
BUCKET = "bench"
KEY = "models/bench-file.bin"


# ---------------------------------------------------------------------------------------------------------------------
# The child: one download in a fresh process, its figures as JSON on stdout.
# ---------------------------------------------------------------------------------------------------------------------


def _rss_now_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib() -> float:
    """ru_maxrss. Started by fork and exec, it may count the parent's RSS at the fork: see vm_hwm_mb, the process's
    own high-water mark, which the results carry too (they agree whenever the parent is the smaller)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from comfyui_api.app import url_guard
    from comfyui_api.config import Settings
    from comfyui_api.storage.manager import StorageManager
    from comfyui_api.urls import url_origin

    baseline_rss = _rss_now_mib()

    async def run() -> dict[str, Any]:
        # The file server listens on loopback: its origin is trusted, as an operator lists in-cluster storage (the
        # S3 endpoint, AWS_ENDPOINT_URL, is trusted as operator configuration).
        trusted = (url_origin(spec["url"]),) if spec["url"].startswith("http") else ()
        settings = Settings(
            cache_dir=spec["cache_dir"],
            comfy_home=spec["comfy_home"],
            aws_region="us-east-1",
            http_trusted_origins=trusted,
        )
        manager = StorageManager(settings, url_guard(settings, None))
        target = Path(spec["target_dir"])
        try:
            started = time.perf_counter()
            download = await manager.download(spec["url"], target)
            seconds = time.perf_counter() - started
            peak, hwm = _peak_rss_mib(), _vm_hwm_mib()  # before the cache hits, which add nothing worth counting
            manager.release(download)
            hits = []
            for index in range(spec["hits"]):
                started = time.perf_counter()
                hit = await manager.download(spec["url"], target.parent / f"hit-{index}")
                hits.append((time.perf_counter() - started) * 1000)
                manager.release(hit)
                if hit.downloaded:
                    raise BenchError("a repeated download was not a cache hit")
        finally:
            await manager.aclose()
        return {
            "seconds": seconds,
            "size": download.size,
            "path": str(download.link),
            "baseline_rss_mb": baseline_rss,
            "peak_rss_mb": peak,
            "vm_hwm_mb": hwm,
            "hits_ms": hits,
        }

    return asyncio.run(run())


def _child_boto3(spec: dict[str, Any]) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    baseline_rss = _rss_now_mib()
    started = time.perf_counter()
    # Default transfer settings; path-style addressing only because the endpoint is an IP address.
    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    client.download_file(spec["bucket"], spec["key"], spec["path"])
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "size": os.path.getsize(spec["path"]),
        "path": spec["path"],
        "baseline_rss_mb": baseline_rss,
        "peak_rss_mb": _peak_rss_mib(),
        "vm_hwm_mb": _vm_hwm_mib(),
    }


def _child_main(encoded: str) -> None:
    spec = json.loads(encoded)
    result = _child_ours(spec) if spec["tool"] == "ours" else _child_boto3(spec)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------------
# Helpers of the parent: processes, page cache, a fast static server.
# ---------------------------------------------------------------------------------------------------------------------


def _run_child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    return run_child("bench.download", spec, env or {}, timeout_s=CHILD_TIMEOUT_S, what=f"{spec['tool']} download")


def _curl(url: str, output: str) -> dict[str, Any]:
    """curl's own transfer time, and its peak RSS (from wait4, as it is not a Python child)."""
    command = ["curl", "-s", "-S", "--fail", "--max-time", str(int(CHILD_TIMEOUT_S)), "-o", output]
    process = subprocess.Popen(
        [*command, "-w", "%{time_total} %{size_download}", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = _HighWater(process.pid)
    try:
        _, status, _ = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        peak.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout = process.stdout.read().decode() if process.stdout else ""
    stderr = process.stderr.read().decode() if process.stderr else ""
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()
    if process.returncode != 0:
        raise BenchError(f"curl failed (exit {process.returncode}): {stderr.strip()}")
    seconds, size = stdout.split()
    path = None if output == os.devnull else output
    return {"seconds": float(seconds), "size": int(size), "path": path, "peak_rss_mb": peak.mib}


class _HighWater:
    """A process's VmHWM (its own peak RSS), polled until it exits. Not ru_maxrss from wait4: for a process started
    from Python that counts the Python parent's RSS too (the kernel keeps the high-water mark across fork and exec)."""

    def __init__(self, pid: int) -> None:
        self.mib = 0.0
        self._path = Path(f"/proc/{pid}/status")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(OSError, ValueError):
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.mib = max(self.mib, int(line.split()[1]) / 1024)
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


class PageCache:
    """`sync` and drop the page cache before each timed download (when allowed), then warm the server's files."""

    def __init__(self) -> None:
        self.dropped: bool | None = None  # None: not tried yet
        self.why = ""

    def reset(self, warm: list[Path]) -> None:
        os.sync()
        if self.dropped is not False:
            try:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                self.dropped = True
            except OSError as error:
                self.dropped = False
                self.why = f"{type(error).__name__}: {error.strerror or error}"
        for root in warm:
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                with open(path, "rb", buffering=0) as handle:
                    while handle.readinto(_WARM_BUFFER):
                        pass

    def describe(self) -> str:
        if self.dropped:
            return "sync + drop_caches before each timed download, then the source re-read into memory"
        return f"sync only: the page cache could not be dropped ({self.why or 'not tried'})"


_WARM_BUFFER = bytearray(8 * MIB)


class SendfileServer:
    """Static files under `root` over HTTP/1.1 on 127.0.0.1, bodies with sendfile(2), one thread per connection.

    Just enough HTTP for GET and HEAD of whole files; `Connection: close` after each response."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="bench-http", daemon=True)

    def __enter__(self) -> SendfileServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._acceptor.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError, ValueError):
            connection.settimeout(60)
            request = b""
            while b"\r\n\r\n" not in request:
                data = connection.recv(65536)
                if not data or len(request) > 65536:
                    return
                request += data
            method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = (self.root / unquote(urlsplit(target).path).lstrip("/")).resolve()
            if method not in ("GET", "HEAD") or not path.is_relative_to(self.root) or not path.is_file():
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
                connection.sendall(f"{head}Connection: close\r\n\r\n".encode())
                if method == "GET":
                    connection.sendfile(handle)


def _write_source(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        remaining = size
        while remaining > 0:
            block = min(remaining, 4 * MIB)
            handle.write(os.urandom(block))
            remaining -= block


def _same_bytes(source: Path, copy: Path) -> None:
    """The copy has the source's size and the same bytes at its start, middle and end."""
    size = source.stat().st_size
    if copy.stat().st_size != size:
        raise BenchError(f"{copy} has {copy.stat().st_size} bytes, not {size}")
    with open(source, "rb") as a, open(copy, "rb") as b:
        for offset in {0, max(size // 2 - 32768, 0), max(size - 65536, 0)}:
            a.seek(offset)
            b.seek(offset)
            if a.read(65536) != b.read(65536):
                raise BenchError(f"{copy} differs from the source at offset {offset}")


# ---------------------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.size = args.size_mb * MIB
        self.source = work / "serve" / "bench-file.bin"
        self.page_cache = PageCache()
        self.runs: dict[str, list[dict[str, Any]]] = {}  # "http.ours" -> one result per run
        self.figures: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    def log(self, message: str) -> None:
        log(message)

    def prepare(self) -> None:
        self.source.parent.mkdir(parents=True)
        started = time.monotonic()
        _write_source(self.source, self.size)
        self.log(f"wrote {self.args.size_mb} MiB of random bytes in {time.monotonic() - started:.1f} s")

    def _timed(
        self, name: str, warm: list[Path], outputs: list[Path], measure: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """One timed download from a cold start; its output is checked, recorded, then deleted."""
        remove(*outputs)
        self.page_cache.reset(warm)
        result = measure()
        try:
            if result["path"] is not None:  # None: written to /dev/null
                _same_bytes(self.source, Path(result["path"]))
        finally:
            remove(*outputs)
        result["mib_s"] = self.size / MIB / result["seconds"]
        self.runs.setdefault(name, []).append(result)
        rss = f", peak RSS {result['peak_rss_mb']:.0f} MiB" if "peak_rss_mb" in result else ""
        if abs(result.get("vm_hwm_mb", result.get("peak_rss_mb", 0)) - result.get("peak_rss_mb", 0)) > 1:
            rss += f" (but VmHWM {result['vm_hwm_mb']:.0f} MiB: ru_maxrss counted the parent's RSS at the fork)"
        self.log(f"  {name}: {result['seconds']:.2f} s, {result['mib_s']:.0f} MiB/s{rss}")
        return result

    def _ours(self, name: str, url: str, warm: list[Path], env: dict[str, str] | None = None) -> dict[str, Any]:
        run = self.work / f"ours-{len(self.runs.get(name, []))}"
        spec = {
            "tool": "ours",
            "url": url,
            "cache_dir": str(run / "cache"),
            "comfy_home": str(run / "comfy"),
            "target_dir": str(run / "targets" / "first"),
            "hits": self.args.hits,
        }
        return self._timed(name, warm, [run], lambda: _run_child(spec, env))

    def http(self) -> None:
        self.log(f"HTTP: sendfile server on 127.0.0.1, {self.args.runs} runs each of curl and ours")
        with SendfileServer(self.source.parent) as server:
            url = f"{server.url}/{self.source.name}"
            curl_out = self.work / "curl.bin"
            warm = [self.source]
            for index in range(self.args.runs):
                self._timed("http.ceiling", warm, [], lambda: _curl(url, os.devnull))
                steps = [
                    lambda: self._timed("http.curl", warm, [curl_out], lambda: _curl(url, str(curl_out))),
                    lambda: self._ours("http.ours", url, warm),
                ]
                for step in steps if index % 2 == 0 else steps[::-1]:  # alternate which goes first
                    step()
        self._throughput("http", "curl")

    def s3(self) -> None:
        import_path()
        from tests.support.services import SeaweedS3

        self.log("S3: starting SeaweedFS")
        with SeaweedS3() as s3:
            self.log(f"  ready in {s3.startup_s:.1f} s; uploading the file")
            s3.create_bucket(BUCKET)
            started = time.monotonic()
            s3.client().upload_file(str(self.source), BUCKET, KEY)
            self.figures["s3.upload_s"] = time.monotonic() - started
            self.log(f"  uploaded in {self.figures['s3.upload_s']:.1f} s; {self.args.runs} runs each of boto3 and ours")
            env = s3.env()
            warm = [s3.dir / "data"]
            url = f"s3://{BUCKET}/{KEY}"
            for index in range(self.args.runs):
                path = self.work / "boto3.bin"
                spec = {"tool": "boto3", "bucket": BUCKET, "key": KEY, "path": str(path)}
                steps = [
                    lambda spec=spec, path=path: self._timed("s3.boto3", warm, [path], lambda: _run_child(spec, env)),
                    lambda: self._ours("s3.ours", url, warm, env),
                ]
                for step in steps if index % 2 == 0 else steps[::-1]:  # alternate which goes first
                    step()
        self._throughput("s3", "boto3")

    def _throughput(self, case: str, reference: str) -> None:
        ours = self.runs[f"{case}.ours"]
        theirs = self.runs[f"{case}.{reference}"]
        self.figures[f"{case}.ours_mib_s"] = max(r["mib_s"] for r in ours)
        self.figures[f"{case}.{reference}_mib_s"] = max(r["mib_s"] for r in theirs)
        self.figures[f"{case}.ratio"] = self.figures[f"{case}.ours_mib_s"] / self.figures[f"{case}.{reference}_mib_s"]
        if f"{case}.ceiling" in self.runs:
            self.figures[f"{case}.ceiling_mib_s"] = max(r["mib_s"] for r in self.runs[f"{case}.ceiling"])
        self.figures[f"{case}.ours_peak_rss_mib"] = max(r["peak_rss_mb"] for r in ours)
        self.figures[f"{case}.ours_baseline_rss_mib"] = max(r["baseline_rss_mb"] for r in ours)
        self.figures[f"{case}.{reference}_peak_rss_mib"] = max(r["peak_rss_mb"] for r in theirs)
        hits = [hit for r in ours for hit in r["hits_ms"]]
        if hits:
            self.figures[f"{case}.hit_median_ms"] = statistics.median(hits)
            self.figures[f"{case}.hit_p95_ms"] = statistics.quantiles(hits, n=20)[-1] if len(hits) > 1 else hits[0]


# ---------------------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------------------


def _checks(figures: dict[str, float], errors: dict[str, str]) -> list[dict[str, str]]:
    rows = []

    def row(case: str, ours: str, reference: str, ratio: str, bar: str, ok: bool | None) -> None:
        result = "ERROR" if ok is None else "PASS" if ok else "FAIL"
        rows.append({"case": case, "ours": ours, "reference": reference, "ratio": ratio, "bar": bar, "result": result})

    for case, reference, label in (("http", "curl", "HTTP"), ("s3", "boto3", "S3")):
        if case in errors:
            row(f"{label} download (all figures)", "-", "-", "-", "-", None)
            continue
        if f"{case}.ours_mib_s" not in figures:
            continue
        ours, theirs, ratio = (figures[f"{case}.{n}"] for n in ("ours_mib_s", f"{reference}_mib_s", "ratio"))
        bar = f">= {THROUGHPUT_BAR:.0%} of {reference}"
        row(
            f"{label} throughput MiB/s",
            f"{ours:.0f}",
            f"{theirs:.0f} ({reference})",
            f"{ratio:.0%}",
            bar,
            ratio >= THROUGHPUT_BAR,
        )
        peak, base = figures[f"{case}.ours_peak_rss_mib"], figures[f"{case}.ours_baseline_rss_mib"]
        their_peak = figures[f"{case}.{reference}_peak_rss_mib"]
        row(
            f"{label} peak RSS MiB (after imports: {base:.0f})",
            f"{peak:.0f}",
            f"{their_peak:.0f} ({reference})",
            f"{peak / their_peak:.1f}x",
            f"< {RSS_BAR_MIB:.0f} MiB",
            peak < RSS_BAR_MIB,
        )
        if f"{case}.hit_median_ms" in figures:
            median, p95 = figures[f"{case}.hit_median_ms"], figures[f"{case}.hit_p95_ms"]
            row(
                f"{label} cache hit ms (p95 {p95:.2f})",
                f"{median:.2f}",
                "-",
                "-",
                f"< {HIT_BAR_MS:g} ms",
                median < HIT_BAR_MS,
            )
    return rows


def _compare(figures: dict[str, float], baseline_path: Path, cases: list[str], size_mb: int) -> str:
    def notes(meta: dict[str, Any]) -> list[str]:
        if meta.get("size_mb") != size_mb:
            return [f"the baseline used a {meta.get('size_mb')} MiB file, this run {size_mb} MiB"]
        return []

    return compare(figures, baseline_path, cases, notes)


# ---------------------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the test file in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool and case; the best counts (3)")
    parser.add_argument("--hits", type=int, default=50, help="cache hits timed after each of our downloads (50)")
    parser.add_argument("--cases", default="http,s3", help="comma-separated subset of http,s3 (default both)")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.runs < 1 or args.hits < 0:
        parser.error("--size-mb and --runs must be >= 1, --hits >= 0")
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not cases or cases - {"http", "s3"}:
        parser.error("--cases takes http, s3 or both")
    args.cases = [c for c in ("http", "s3") if c in cases]
    if args.baseline and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        _child_main(args.child)
        return 0
    if shutil.which("curl") is None and "http" in args.cases:
        print("curl is not installed: it is the HTTP reference", file=sys.stderr)
        return 1
    prepare()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-") as folder:
        bench = Bench(args, Path(folder))
        bench.prepare()
        for case in args.cases:
            try:
                getattr(bench, case)()
            except BenchError as error:
                bench.errors[case] = str(error)
                bench.log(f"ERROR in {case}: {error}")
        bench.log("cleaning up")
    checks = _checks(bench.figures, bench.errors)
    print()
    print(
        f"comfyui-api download benchmark: {args.size_mb} MiB file, best of {args.runs} runs, {os.cpu_count()} CPUs; "
        f"{bench.page_cache.describe()}"
    )
    print_checks(checks, bench.errors)
    if "http.ceiling_mib_s" in bench.figures:
        print(f"(server + loopback ceiling, curl -o /dev/null: {bench.figures['http.ceiling_mib_s']:.0f} MiB/s)")
    if args.baseline:
        print()
        print(_compare(bench.figures, args.baseline, args.cases, args.size_mb))
    if args.json:
        drop = ("hits_ms", "path")  # summarised in the figures / deleted temporary files
        runs = {name: [{k: v for k, v in r.items() if k not in drop} for r in rs] for name, rs in bench.runs.items()}
        settings = {"size_mb": args.size_mb, "runs": args.runs, "hits": args.hits, "cases": args.cases}
        settings["page_cache"] = bench.page_cache.describe()
        write_report(args.json, started, settings, figures=bench.figures, checks=checks, errors=bench.errors, runs=runs)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
