"""The whole benchmark suite in one command: every benchmark, one table of its bars, one JSON file of its figures.

    .venv/bin/python -m bench [--only startup,requests,outputs,download,guard,v2,fleet,metrics]
                              [--json bench/results/latest.json] [--baseline earlier.json]

Run from the repository root after scripts/setup.sh. Each benchmark runs in a process of its own, one after the other
(they would disturb each other's timings), with its own defaults, and starts and stops what it needs (comfyui-api
servers in front of their own CPU ComfyUI, SeaweedFS, file servers); its progress is printed as it goes:

* startup:  launch to /ready 200, minus ComfyUI's own time to answer its first probe (bench/startup.py)
* requests: sequential latency added to a prompt, and a burst of 1,000 prompts at once (bench/requests.py)
* outputs:  a 4096x4096 PNG and a ~200 MB output as base64 and as S3 upload: peak RSS (bench/outputs.py)
* download: HTTP and S3 downloads against curl and boto3 (bench/download.py)
* guard:    a cached URL input with the URL guard on and off, and direct ComfyUI (bench/guard.py)
* v2:       Comfy API v2 jobs (submit, follow, download): a round trip and a burst of 200, against comfy-api-proxy
            in front of the same ComfyUI and direct ComfyUI (bench/v2.py)
* fleet:    fleet mode (RabbitMQ and PostgreSQL: a private vhost and database): the latency a fleet-mode server
            adds to a prompt over a standalone one in front of the same ComfyUI, and jobs/s with two workers against
            one (bench/fleet.py)
* metrics:  what the Prometheus metrics add to a request (on against off, one ComfyUI), and what a scrape costs
            with 1,000 jobs finished (bench/metrics.py)

Then one table of every figure with a bar (and the figures they are measured against), and the JSON: `meta`, each
benchmark's own report under `benchmarks`, and every figure flattened under `figures` as "benchmark.figure", which
is what --baseline compares. The exit status is 0 whatever the bars say, 1 when a benchmark could not measure
something. About 13 to 17 minutes on a 2-core machine (v2 4 to 8 of them: the proxy's 15 s stalls; fleet about 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import REPO, check_cases_and_baseline, compare, log, print_checks, sigterm_exits, write_report

BENCHMARKS = ("startup", "requests", "outputs", "download", "guard", "v2", "fleet", "metrics")
DEFAULT_REPORT = REPO / "bench" / "results" / "latest.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_REPORT, help=f"the report (default {DEFAULT_REPORT})")
    parser.add_argument("--baseline", type=Path, help="a report of an earlier run: print the change per figure")
    args = parser.parse_args(argv)
    check_cases_and_baseline(parser, args, BENCHMARKS, option="only")
    return args


def _run(name: str, report: Path) -> tuple[int, dict[str, Any] | None, float]:
    """Run one benchmark in its own process, its output passed through; (exit status, its report, seconds)."""
    log(f"=== {name} ===")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", f"bench.{name}", "--json", str(report)], cwd=REPO)
    try:
        code = process.wait()
    except BaseException:  # Ctrl-C or SIGTERM: the benchmark cleans up after itself on SIGTERM
        process.terminate()
        process.wait()
        raise
    seconds = time.monotonic() - started
    log(f"=== {name}: exit {code} after {seconds:.0f} s ===\n")
    return code, json.loads(report.read_text()) if report.is_file() else None, seconds


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = datetime.now(UTC)
    reports: dict[str, dict[str, Any]] = {}
    checks: list[dict[str, str]] = []
    errors: dict[str, str] = {}
    figures: dict[str, float] = {}
    seconds: dict[str, float] = {}
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-suite-") as folder:
        for name in args.only:
            code, report, seconds[name] = _run(name, Path(folder) / f"{name}.json")
            if report is None:
                errors[name] = f"exited with {code} without a report"
                continue
            reports[name] = report
            checks += [
                {**check, "case": check["case"] if check["case"].startswith(name) else f"{name}: {check['case']}"}
                for check in report.get("checks", [])
            ]
            errors.update({f"{name}: {case}": error for case, error in report.get("errors", {}).items()})
            figures.update({f"{name}.{figure}": value for figure, value in report.get("figures", {}).items()})
    print(f"comfyui-api benchmark suite: {', '.join(args.only)} in {sum(seconds.values()) / 60:.1f} min")
    print_checks(checks, errors, quiet=("PASS", "-"))
    failed = [check["case"] for check in checks if check["result"] == "FAIL"]
    print(f"{len([c for c in checks if c['result'] == 'PASS'])} bars pass, {len(failed)} fail, {len(errors)} errors")
    if args.baseline:
        print()
        print(compare(figures, args.baseline, args.only))
    settings = {"benchmarks": args.only, "seconds": seconds}
    write_report(args.json, started, settings, figures=figures, checks=checks, errors=errors, benchmarks=reports)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
