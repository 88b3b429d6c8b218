"""What the benchmarks share: errors, logging, the result table, the comparison with a baseline's JSON, cleanup."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

# Whether a larger value of a figure is better (for the baseline comparison), by the figure name's ending.
HIGHER_IS_BETTER = ("_mib_s", ".ratio")
LOWER_IS_BETTER = ("_ms", "_mib", "_s")


class BenchError(RuntimeError):
    """Something could not be measured."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def import_path() -> None:
    """tests.support (the test services) importable, wherever this was started from."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def checkpoint() -> Path:
    """The tests' random SD1.5-shaped checkpoint (tests/conftest.py), generated once per checkout. Needs
    import_path() first."""
    from tests.support.paths import CHECKPOINT_NAME, COMFY_PYTHON, COMFY_TREE, TEST_CACHE

    path = TEST_CACHE / CHECKPOINT_NAME
    if not path.exists():
        if not COMFY_PYTHON.exists():
            raise BenchError("ComfyUI is not installed: run scripts/setup.sh")
        log("generating the random checkpoint (once per checkout)")
        path.parent.mkdir(parents=True, exist_ok=True)
        script = REPO / "scripts" / "make_sd15_checkpoint.py"
        command = [str(COMFY_PYTHON), str(script), "--comfyui", str(COMFY_TREE), "--out", str(path)]
        subprocess.run(command, check=True)
    return path


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def print_checks(checks: list[dict[str, str]], errors: dict[str, str], *, quiet: tuple[str, ...] = ("PASS",)) -> None:
    """The figures table, then a line for each bar that failed and each case that could not be measured."""
    print(table(["case", "ours", "reference", "ratio", "bar", "result"], [list(c.values()) for c in checks]))
    for check in checks:
        if check["result"] not in quiet:
            print(f"{check['result']}: {check['case']}: ours {check['ours']}, bar {check['bar']}")
    for case, error in errors.items():
        print(f"ERROR: {case}: {error}")


def write_report(path: Path, started: datetime, settings: dict[str, Any], **sections: Any) -> None:
    """The run's figures as JSON: `meta` (times, machine, the run's settings) and the given sections."""
    meta = {
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        **settings,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, **sections}, indent=2) + "\n")
    print(f"\nwrote {path}")


def better(name: str, change: float) -> str:
    if abs(change) < 0.02:
        return "same"
    if name.endswith(HIGHER_IS_BETTER):
        return "better" if change > 0 else "worse"
    if name.endswith(LOWER_IS_BETTER):
        return "better" if change < 0 else "worse"
    return ""


def compare(
    figures: dict[str, float],
    baseline_path: Path,
    cases: list[str],
    notes: Callable[[dict[str, Any]], list[str]] | None = None,
) -> str:
    """A table of each figure against the baseline's (figures of `cases` only: a figure's name starts "case.").
    `notes` gets the baseline's `meta` and returns lines to print above the table (how the runs differ)."""
    baseline = json.loads(baseline_path.read_text())
    old = {name: value for name, value in baseline.get("figures", {}).items() if name.split(".")[0] in cases}
    rows = []
    for name, value in figures.items():
        if name not in old:
            rows.append([name, "-", f"{value:.3f}", "new", ""])
        elif old[name]:
            change = value / old[name] - 1
            rows.append([name, f"{old[name]:.3f}", f"{value:.3f}", f"{change:+.1%}", better(name, change)])
        else:
            rows.append([name, f"{old[name]:.3f}", f"{value:.3f}", "n/a", ""])
    rows += [[name, f"{old[name]:.3f}", "-", "gone", ""] for name in old if name not in figures]
    meta = baseline.get("meta", {})
    lines = [f"Against the baseline {baseline_path} (finished {meta.get('finished', '?')}):"]
    lines += [f"NOTE: {note}" for note in (notes(meta) if notes else [])]
    return "\n".join(lines) + "\n" + table(["figure", "baseline", "now", "change", ""], rows)


def check_cases_and_baseline(
    parser: argparse.ArgumentParser, args: argparse.Namespace, known: Sequence[str], *, option: str = "cases"
) -> None:
    """`args.<option>` (comma-separated) becomes the list of the chosen names in `known`'s order; --baseline, when
    given, must exist."""
    chosen = {name.strip() for name in getattr(args, option).split(",") if name.strip()}
    if not chosen or chosen - set(known):
        parser.error(f"--{option} takes a subset of {','.join(known)}")
    setattr(args, option, [name for name in known if name in chosen])
    if args.baseline and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")


def run_child(module: str, spec: dict[str, Any], env: dict[str, str], *, timeout_s: float, what: str) -> dict[str, Any]:
    """`python -m <module> --child <spec as JSON>` in a fresh process (so that its peak RSS is its own) with `env`
    added to the environment; the JSON object on its last line of output. Killed after `timeout_s`."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--child", json.dumps(spec)],
        cwd=REPO,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise BenchError(f"{what} took over {timeout_s:g} s") from None
    except BaseException:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise BenchError(f"{what} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def prepare() -> None:
    """tests.support importable, and loopback never through a proxy (in os.environ: servers and children too)."""
    import_path()
    from tests.support.services import bypass_proxy_for_loopback

    bypass_proxy_for_loopback()


def run_session(bench: Any, measure: Callable[[], None]) -> None:
    """`bench.start()`, then `measure()`, then `bench.stop()` whatever happened; a failed start is recorded as
    `bench.errors["setup"]` (and nothing is measured)."""
    try:
        try:
            bench.start()
        except Exception as error:
            bench.errors["setup"] = str(error)
            log(f"ERROR in setup: {error}")
        else:
            measure()
    finally:
        log("cleaning up")
        bench.stop()


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the servers and files are cleaned up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
