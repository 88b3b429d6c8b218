"""Benchmark of our startup: launch to /ready 200, against ComfyUI's own time to answer its first probe.

    .venv/bin/python -m bench.startup [--runs 3] [--json out.json] [--baseline earlier.json]

Run from the repository root. Each run launches, in a fresh temporary base folder each (the tests' random checkpoint
symlinked in, a fresh SQLite database), one after the other and alternating which goes first:

* ComfyUI alone: exactly the command tests/support/server.py's ApiServer gives our server as CMD (--cpu, loopback,
  a free port, --base-directory, --database-url, --disable-auto-launch, --disable-api-nodes), in a session of its
  own as our server launches it, its output to a file. `GET /` is polled every 10 ms from just before Popen until
  the first 2xx: ComfyUI's own time to answer its first probe. Then SIGTERM (SIGKILL after 30 s).
* Ours: comfyui-api as ApiServer starts it, but as users get it: no warmup prompt, STARTUP_CHECK_INTERVAL_S unset
  (the default, 1 s), LOG_LEVEL=info, STARTUP_CHECK_MAX_TRIES=240 (a slow machine must not fail the run). `GET
  /ready` is polled every 10 ms from just before Popen (connection refused counts as not yet) until 200; the first
  answer of any status is when the port opened. Then SIGTERM; our server stops its ComfyUI, and both are waited for
  (killed after 60 s) before the next launch.

Overhead (the bar) = median over runs of (ours to /ready 200 - the time the ComfyUI we launched took, in that same
launch, from "ComfyUI launched" to its own "To see the GUI go to" line, its port bound and answering): what our
server adds to the path to readiness, before ComfyUI's launch (imports) and after its answer (probe, websocket,
routes, our port). Reported beside it: ours to /ready 200 - ComfyUI alone to its first answer, paired by run, whose
spread is ComfyUI's own boot time varying by about a second from one launch to the next. Where the time goes
comes from our server's JSON log ("time" is wall-clock UTC with ms; launch is taken with time.time() too):
"ComfyUI launched" (everything before it, Python's imports above all, is ours), ComfyUI's own "To see the GUI go
to" (its port is bound), "ComfyUI is up" (our startup probe saw it), "connected to ComfyUI websocket", and
uvicorn's "Uvicorn running on" (our port is bound).

Bar: overhead <= 1.0 s without a warmup prompt (PASS or FAIL); the breakdown rows carry no bar. The exit status is
0 whatever the bar says, 1 only when something could not be measured. Everything started (servers, ComfyUIs, files)
is stopped and removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import (
    BenchError,
    checkpoint,
    compare,
    log,
    prepare,
    print_checks,
    sigterm_exits,
    table,
    write_report,
)

OVERHEAD_BAR_S = 1.0
LAUNCH_DEADLINE_S = 240.0
POLL_INTERVAL_S = 0.01
# Probes at the product's default interval (1 s) for as long as a launch may take here.
STARTUP_CHECK_MAX_TRIES = 240
COMFY_STOP_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 60.0
# The server's own log lines (JSON "msg") that mark its startup, by the name of their time in the results.
MARKS: dict[str, Callable[[str], bool]] = {
    "comfy_launched_s": lambda msg: msg == "ComfyUI launched",
    "comfy_listening_s": lambda msg: msg.startswith("To see the GUI go to"),
    "comfy_up_s": lambda msg: msg == "ComfyUI is up",
    "websocket_s": lambda msg: msg == "connected to ComfyUI websocket",
    "app_startup_s": lambda msg: msg.startswith("Application startup complete"),
    "uvicorn_running_s": lambda msg: msg.startswith("Uvicorn running on"),
}
# Spans of our launch, from mark to mark (medians of each run's span): where our time goes.
SPANS = [
    # figure name, from, to, label
    ("launch_to_comfy_launched_s", None, "comfy_launched_s", "launch -> 'ComfyUI launched' (our imports, setup)"),
    ("comfy_launched_to_listening_s", "comfy_launched_s", "comfy_listening_s", "'ComfyUI launched' -> its port bound"),
    ("comfy_listening_to_up_s", "comfy_listening_s", "comfy_up_s", "its port bound -> 'ComfyUI is up'"),
    ("comfy_up_to_websocket_s", "comfy_up_s", "websocket_s", "'ComfyUI is up' -> websocket connected"),
    ("comfy_up_to_uvicorn_s", "comfy_up_s", "uvicorn_s", "'ComfyUI is up' -> our port bound (uvicorn)"),
    ("uvicorn_to_ready_s", "uvicorn_s", "ready_s", "our port bound -> /ready 200 seen"),
]


# ---------------------------------------------------------------------------------------------------------------------
# Launching, polling, stopping.
# ---------------------------------------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _poll(url: str, process: subprocess.Popen[bytes], started: float, what: str, log_path: Path) -> tuple[float, float]:
    """GET `url` every POLL_INTERVAL_S (on a fixed grid from `started`, a time.monotonic()) until a 2xx answer:
    (seconds to the first answer of any status, seconds to the first 2xx), both from `started`."""
    import httpx

    first_answer: float | None = None
    deadline = started + LAUNCH_DEADLINE_S
    tick = started
    # A fresh client per launch: no pooled connection from an earlier launch on a reused port.
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0)) as http:
        while True:
            try:
                status: int | None = http.get(url).status_code
            except httpx.TransportError:
                status = None
            now = time.monotonic()
            if status is not None:
                first_answer = now - started if first_answer is None else first_answer
                if 200 <= status < 300:
                    return first_answer, now - started
            if process.poll() is not None:
                raise BenchError(f"{what} exited with {process.returncode} before a 2xx from {url}:\n{_tail(log_path)}")
            if now > deadline:
                raise BenchError(f"{url} did not answer 2xx within {LAUNCH_DEADLINE_S:g} s:\n{_tail(log_path)}")
            while tick <= now:
                tick += POLL_INTERVAL_S
            time.sleep(tick - now)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's session (it leads its own), SIGKILL after COMFY_STOP_TIMEOUT_S; waits for it."""
    # Signalled only while not yet reaped: its pid (the group's id) cannot have been reused.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=COMFY_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"  ComfyUI {process.pid} ignored SIGTERM; killing it")
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _stop_server(server: Any) -> None:
    """SIGTERM our server (it stops its ComfyUI), SIGKILL after SERVER_STOP_TIMEOUT_S; then make sure its ComfyUI
    and any other descendant are gone too, so that the next launch has the CPUs to itself."""
    import psutil

    descendants: list[psutil.Process] = []
    if server.process is not None and server.process.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants = psutil.Process(server.process.pid).children(recursive=True)
    server.stop()
    _, alive = psutil.wait_procs(descendants, timeout=SERVER_STOP_TIMEOUT_S)
    for process in alive:
        log(f"  pid {process.pid} outlived our server; killing it")
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


def _log_marks(log_path: Path, launched_wall: float) -> dict[str, float]:
    """Seconds from launch (`launched_wall`, a time.time()) to the first log line of each of MARKS."""
    marks: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            msg = str(entry["msg"])
            when = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except (ValueError, KeyError, TypeError):
            continue  # not one of our JSON lines
        marks.setdefault("first_log_s", when - launched_wall)
        for name, matches in MARKS.items():
            if name not in marks and matches(msg):
                marks[name] = when - launched_wall
    # Uvicorn binds the port right after "Application startup complete"; either marks it, the former closer.
    if "uvicorn_running_s" in marks or "app_startup_s" in marks:
        marks["uvicorn_s"] = marks.get("uvicorn_running_s", marks.get("app_startup_s", 0.0))
    return marks


def comfy_alone(base: Path, checkpoint_path: Path) -> dict[str, Any]:
    """ComfyUI launched the way our server launches it: seconds from Popen to its first 2xx answer to GET /."""
    from tests.support.server import ApiServer

    spec = ApiServer(base, checkpoint_path)  # only for its command, port and folders: it launches nothing here
    spec.http.close()
    command = shlex.split(spec.env["CMD"])
    log_path = base / "comfyui.log"
    with open(log_path, "wb") as output:
        started_wall = time.time()
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as our server launches it; and its whole group can be stopped
        )
    try:
        first_answer_s, first_probe_s = _poll(f"{spec.comfy_url}/", process, started, "ComfyUI", log_path)
    finally:
        _stop_group(process)
    return {"first_probe_s": first_probe_s, "first_answer_s": first_answer_s, "launched_at": started_wall}


def ours(base: Path, checkpoint_path: Path) -> dict[str, Any]:
    """comfyui-api as users get it (no warmup, the default probe interval): seconds from Popen to /ready 200, to
    its first answer of any status, and to each of MARKS in its log."""
    from tests.support.server import ApiServer

    server = ApiServer(base, checkpoint_path, LOG_LEVEL="info", STARTUP_CHECK_MAX_TRIES=str(STARTUP_CHECK_MAX_TRIES))
    for name in ("STARTUP_CHECK_INTERVAL_S", "WARMUP_PROMPT_FILE", "WARMUP_PROMPT_URL"):
        server.env.pop(name, None)
    try:
        started_wall = time.time()
        started = time.monotonic()
        server.start(wait="none")
        port_open_s, ready_s = _poll(f"{server.url}/ready", server.process, started, "comfyui-api", server.log_path)
    finally:
        _stop_server(server)
    marks = _log_marks(server.log_path, started_wall)
    missing = [name for name in ("comfy_launched_s", "comfy_up_s", "uvicorn_s") if name not in marks]
    if missing:
        raise BenchError(f"no log line for {', '.join(missing)} in {server.log_path}:\n{_tail(server.log_path)}")
    return {"ready_s": ready_s, "port_open_s": port_open_s, "launched_at": started_wall, **marks}


# ---------------------------------------------------------------------------------------------------------------------
# The runs and the report.
# ---------------------------------------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, work: Path, errors: dict[str, str]) -> list[dict[str, Any]]:
    checkpoint_path = checkpoint()
    runs: list[dict[str, Any]] = []
    for index in range(args.runs):
        order = ["comfy", "ours"] if index % 2 == 0 else ["ours", "comfy"]  # alternate which goes first
        run: dict[str, Any] = {"run": index + 1, "order": order}
        try:
            for kind in order:
                base = work / f"run{index + 1}-{kind}"
                log(f"run {index + 1}/{args.runs}: {'ComfyUI alone' if kind == 'comfy' else 'comfyui-api'}")
                if kind == "comfy":
                    run["comfy"] = comfy_alone(base, checkpoint_path)
                    log(f"  first answer to GET / after {run['comfy']['first_probe_s']:.3f} s")
                else:
                    run["ours"] = ours(base, checkpoint_path)
                    o = run["ours"]
                    log(
                        f"  /ready 200 after {o['ready_s']:.3f} s (port open {o['port_open_s']:.3f}; ComfyUI launched "
                        f"{o['comfy_launched_s']:.3f}, up {o['comfy_up_s']:.3f}, uvicorn {o['uvicorn_s']:.3f})"
                    )
        except Exception as error:  # one run's failure is reported; the others still run
            errors[f"run {index + 1}"] = f"{type(error).__name__}: {error}"
            log(f"ERROR in run {index + 1}: {errors[f'run {index + 1}']}")
            continue
        ours_run = run["ours"]
        run["overhead_vs_alone_s"] = ours_run["ready_s"] - run["comfy"]["first_probe_s"]
        if "comfy_launched_s" in ours_run and "comfy_listening_s" in ours_run:
            # ComfyUI's own time in this very launch: from our launching it to its answering (its port bound).
            run["comfy_own_s"] = ours_run["comfy_listening_s"] - ours_run["comfy_launched_s"]
            run["overhead_s"] = ours_run["ready_s"] - run["comfy_own_s"]
        log(
            f"  overhead {run.get('overhead_s', float('nan')):.3f} s (against this launch's ComfyUI), "
            f"{run['overhead_vs_alone_s']:.3f} s (against ComfyUI alone)"
        )
        runs.append(run)
    return runs


def _span(ours_run: dict[str, Any], start: str | None, end: str) -> float | None:
    if end not in ours_run or (start is not None and start not in ours_run):
        return None
    return ours_run[end] - (ours_run[start] if start is not None else 0.0)


def figures_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    if not runs:
        return {}
    comfy = [r["comfy"]["first_probe_s"] for r in runs]
    ready = [r["ours"]["ready_s"] for r in runs]
    overhead = [r["overhead_s"] for r in runs if "overhead_s" in r]
    vs_alone = [r["overhead_vs_alone_s"] for r in runs]
    f = {
        "startup.comfy_first_probe_s": statistics.median(comfy),
        "startup.comfy_first_probe_max_s": max(comfy),
        "startup.ours_ready_s": statistics.median(ready),
        "startup.ours_ready_max_s": max(ready),
        "startup.ours_port_open_s": statistics.median(r["ours"]["port_open_s"] for r in runs),
        "startup.overhead_vs_alone_s": statistics.median(vs_alone),
        "startup.overhead_vs_alone_max_s": max(vs_alone),
        "startup.overhead_vs_alone_min_s": min(vs_alone),
        "startup.overhead_of_medians_s": statistics.median(ready) - statistics.median(comfy),
    }
    if overhead:
        f["startup.overhead_s"] = statistics.median(overhead)
        f["startup.overhead_max_s"] = max(overhead)
    for name in ("comfy_launched_s", "comfy_listening_s", "comfy_up_s", "websocket_s", "uvicorn_s"):
        values = [r["ours"][name] for r in runs if name in r["ours"]]
        if values:
            f[f"startup.ours_{name}"] = statistics.median(values)
    for name, start, end, _ in SPANS:
        spans = [s for r in runs if (s := _span(r["ours"], start, end)) is not None]
        if spans:
            f[f"startup.{name}"] = statistics.median(spans)
    # ComfyUI under our server, launched to bound, against ComfyUI alone: does running under us slow it down?
    if "startup.comfy_launched_to_listening_s" in f:
        f["startup.comfy_under_ours_vs_alone_x"] = (
            f["startup.comfy_launched_to_listening_s"] / f["startup.comfy_first_probe_s"]
        )
    return f


def _checks(figures: dict[str, float], runs: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(case: str, ours: str, reference: str, ratio: str, bar: str, ok: bool | None) -> None:
        result = "ERROR" if ok is None else "-" if bar == "-" else "PASS" if ok else "FAIL"
        rows.append({"case": case, "ours": ours, "reference": reference, "ratio": ratio, "bar": bar, "result": result})

    f = {name.removeprefix("startup."): value for name, value in figures.items()}
    bar = f"<= {OVERHEAD_BAR_S:.2f} s"
    if "overhead_s" not in f:
        row("startup overhead (no run completed)", "-", "-", "-", bar, None)
        return rows
    row(
        f"startup: launch -> /ready 200 (median of {runs})",
        f"{f['ours_ready_s']:.3f} s",
        f"{f['comfy_first_probe_s']:.3f} s (ComfyUI alone, GET /)",
        f"{f['ours_ready_s'] / f['comfy_first_probe_s']:.2f}x",
        "-",
        True,
    )
    row(
        "startup overhead: /ready 200 - the same launch's ComfyUI to its answer (median)",
        f"{f['overhead_s']:.3f} s",
        f"worst {f['overhead_max_s']:.3f} s",
        "-",
        bar,
        f["overhead_s"] <= OVERHEAD_BAR_S,
    )
    row(
        "startup overhead: /ready 200 - ComfyUI alone (median of paired runs; ComfyUI's boot varies by ~1 s)",
        f"{f['overhead_vs_alone_s']:.3f} s",
        f"{f['overhead_vs_alone_min_s']:.3f} to {f['overhead_vs_alone_max_s']:.3f} s",
        "-",
        "-",
        True,
    )
    for name, _, _, label in SPANS:
        if name in f:
            reference, ratio = "-", "-"
            if name == "comfy_launched_to_listening_s":
                reference = f"{f['comfy_first_probe_s']:.3f} s (ComfyUI alone)"
                ratio = f"{f['comfy_under_ours_vs_alone_x']:.2f}x"
            row(f"  {label}", f"{f[name]:.3f} s", reference, ratio, "-", True)
    return rows


def _runs_table(runs: list[dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    headers = ["run", "first", "ComfyUI alone", "ours /ready", "overhead", "vs alone", "our port", "launched"]
    headers += ["Comfy bound"]
    headers += ["Comfy up", "websocket", "uvicorn"]
    rows = []
    for r in runs:
        o = r["ours"]
        rows.append(
            [str(r["run"]), r["order"][0], cell(r["comfy"]["first_probe_s"]), cell(o["ready_s"])]
            + [cell(r.get("overhead_s")), cell(r["overhead_vs_alone_s"])]
            + [cell(o.get(name)) for name in ("port_open_s", "comfy_launched_s", "comfy_listening_s", "comfy_up_s")]
            + [cell(o.get(name)) for name in ("websocket_s", "uvicorn_s")]
        )
    return table(headers, rows)


# ---------------------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="paired launches (ComfyUI alone, ours); medians count (3)")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.baseline and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    prepare()
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    errors: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-") as folder:
        try:
            runs = run_all(args, Path(folder), errors)
        except BenchError as error:  # before any run: no checkpoint, no ComfyUI
            errors["setup"] = str(error)
            log(f"ERROR in setup: {error}")
        finally:
            log("cleaning up")
    figures = figures_of(runs)
    checks = _checks(figures, len(runs))
    print()
    print(f"comfyui-api startup benchmark: {len(runs)} of {args.runs} paired runs, {os.cpu_count()} CPUs")
    if runs:
        print("per run, seconds from launch (ours: when our polling saw /ready 200 and the port, and log lines):")
        print(_runs_table(runs))
        print()
    print_checks(checks, errors, quiet=("PASS", "-"))
    print(
        "(ComfyUI alone: launch to its first 2xx answer to GET /, polled every 10 ms; ours: launch to /ready 200, "
        "polled every 10 ms, no warmup, STARTUP_CHECK_INTERVAL_S at its default; spans from our JSON log, ms)"
    )
    if args.baseline:
        print()
        print(_compare(figures, args.baseline, args.runs))
    if args.json:
        settings = {"runs": args.runs, "loadavg_before": load_before, "overhead_bar_s": OVERHEAD_BAR_S}
        write_report(args.json, started, settings, figures=figures, checks=checks, errors=errors, runs=runs)
    return 1 if errors else 0


def _compare(figures: dict[str, float], baseline_path: Path, runs: int) -> str:
    def notes(meta: dict[str, Any]) -> list[str]:
        lines = []
        if meta.get("runs") not in (None, runs):
            lines.append(f"the baseline had {meta['runs']} runs, this run {runs}")
        if meta.get("cpus") not in (None, os.cpu_count()):
            lines.append(f"the baseline ran on {meta['cpus']} CPUs, this run on {os.cpu_count()}")
        return lines

    return compare(figures, baseline_path, ["startup"], notes)


if __name__ == "__main__":
    sys.exit(main())
