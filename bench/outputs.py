"""Benchmark of our output path for large outputs: base64 in the response, uploads to S3 and a signed webhook, on
loopback.

    .venv/bin/python -m bench.outputs [--runs 2] [--cases png,large] [--json out.json] [--baseline earlier.json]

Run from the repository root. One comfyui-api server (tests/support/server.py's ApiServer, in a temporary folder, in
front of its own CPU ComfyUI) is started with SeaweedFS (tests/support/services.py's SeaweedS3) as its S3, a
WEBHOOK_SECRET, and a webhook receiver of the bench's own on loopback (trusted by the server). Outputs:

* png: a 4096x4096 PNG (EmptyImage, grey, + ImageAddNoise 0.5, so that it does not compress to nothing: ~40 MB);
* large: a ~200 MB output, the size of a video: an 8192x9728 PNG made the same way (one ~200 MB file that ComfyUI
  writes in about 20 s on a CPU; our path cares about the file's size, not its format).

ComfyUI runs with --disable-metadata, so the file is byte-identical whichever filename prefix it is saved under. Per
case, the graph runs once through ComfyUI's own API first: that file is the reference (and its nodes are then cached,
so only SaveImage runs again for our requests). Then, --runs times each, alternating which goes first:

* base64: POST /prompt with no upload block; the answer (JSON with the file base64-encoded, streamed by our server)
  is read with httpx in chunks and dropped, keeping only its start and end to check the base64 text's length and its
  first and last bytes against the reference. MiB/s = file size / (request time - stats.comfy_execution.duration),
  as the issue defines it; the streaming alone (response headers to last byte) is in the JSON as `stream_mib_s`.
* s3: POST /prompt with an `s3` block; MiB/s = file size / stats.upload_time (the server's own timing of the
  upload); the object's size and last bytes are checked, then it is deleted.
* webhook: POST /prompt with `webhook_v2` (202 at once); the server signs the `prompt.complete` body (the file
  base64-encoded) in one streaming pass and streams it to the receiver, which keeps only the body's length, its
  start and end, and checks the Standard Webhooks signature as the bytes arrive (so a 270 MB body costs the bench
  little). The base64 text is checked as in base64 mode; MiB/s = file size / (202 to the webhook's last byte -
  stats.comfy_execution.duration).

Before the cases, one 64x64 request of each mode warms the server up (its S3 client is made on the first upload:
that upload's time is reported as server.first_upload_s, and the RSS after it as server.warm_rss_mib).

During each request (for webhook: until the receiver has the whole webhook) the server's RSS (the comfyui-api
process, not ComfyUI) is sampled every 20 ms with psutil, and its VmHWM (the kernel's own high-water mark) is reset
before the request when /proc/PID/clear_refs is writable (root) and read after: the peak is the larger of the two.
The idle RSS just before each request is reported too.

References, in the same run: reading the reference file and base64-encoding it in a tight loop (3 MiB reads, as the
server does; the file in the page cache; best of 3), boto3's `upload_file` of the file to the same SeaweedFS
with its default transfer settings, in a fresh child process (its client made before the timed part, as the server
keeps its own; its VmHWM reported for comparison), and the same webhook built in memory, in a fresh child process:
the file's base64 in the payload, json.dumps, svix's `sign` and an httpx POST of the bytes (what the sender did
before it streamed; its VmHWM above its RSS before it read the file is reported for comparison).

Bars: peak RSS <= 250 MB (238 MiB) for every case and mode (PASS or FAIL); the throughputs are reported against their
references, without a bar. The exit status is 0 whatever the bars say, 1 only when something could not be measured.
Everything started (servers, children, files) is stopped and removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import (
    MIB,
    BenchError,
    check_cases_and_baseline,
    checkpoint,
    compare,
    log,
    prepare,
    print_checks,
    run_child,
    run_session,
    sigterm_exits,
    write_report,
)

RSS_BAR_MIB = 250e6 / MIB  # 250 MB
SAMPLE_INTERVAL_S = 0.02
READ_CHUNK = 3 * MIB  # the server's read size for base64 (a multiple of 3)
ENCODE_PASSES = 3
REQUEST_TIMEOUT_S = 600.0
BUCKET = "bench"
CASES = {
    # name: (width, height, what it stands for)
    "png": (4096, 4096, "4096x4096 PNG"),
    "large": (8192, 9728, "~200 MB output (8192x9728 PNG)"),
}
KEEP = 256 * 1024  # bytes kept of the start and of the end of a base64 response or webhook, for the checks
# Compact JSON; the streamed answers of earlier versions had spaces (kept so that they can be measured as baselines).
IMAGES_MARKERS = (b'"images":["', b'"images": ["')
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"the output benchmark's secret key").decode()


# ---------------------------------------------------------------------------------------------------------------------
# The children, each in a fresh process, their figures as JSON on stdout: boto3's upload_file, and the webhook built
# in memory.
# ---------------------------------------------------------------------------------------------------------------------


def _status_mib(pid: int | str, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _child_boto3(spec: dict[str, Any]) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))  # path-style: the endpoint is an IP
    baseline_rss = _status_mib("self", "VmRSS")
    started = time.perf_counter()
    client.upload_file(spec["path"], spec["bucket"], spec["key"])
    seconds = time.perf_counter() - started
    size = client.head_object(Bucket=spec["bucket"], Key=spec["key"])["ContentLength"]
    client.delete_object(Bucket=spec["bucket"], Key=spec["key"])
    return {
        "seconds": seconds,
        "size": size,
        "baseline_rss_mb": baseline_rss,
        "peak_rss_mb": _status_mib("self", "VmHWM"),
    }


def _child_webhook_in_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """The `prompt.complete` webhook of the file as the sender built it before it streamed: the base64 text in the
    payload, the JSON text, its UTF-8, svix's signature over it, one POST of the bytes."""
    from datetime import UTC, datetime

    import httpx
    from svix.webhooks import Webhook

    baseline_rss = _status_mib("self", "VmRSS")
    started = time.perf_counter()
    image = base64.b64encode(Path(spec["path"]).read_bytes()).decode("ascii")
    payload = {"type": "prompt.complete", "id": spec["id"], "prompt": spec["prompt"], "images": [image]}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": spec["id"],
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WEBHOOK_SECRET).sign(spec["id"], now, body),
    }
    response = httpx.post(spec["url"], content=body.encode(), headers=headers, timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    return {
        "seconds": time.perf_counter() - started,
        "baseline_rss_mb": baseline_rss,
        "peak_rss_mb": _status_mib("self", "VmHWM"),
    }


CHILDREN = {"boto3": _child_boto3, "webhook_in_memory": _child_webhook_in_memory}


def _run_child(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return run_child("bench.outputs", spec, env, timeout_s=REQUEST_TIMEOUT_S, what=spec["kind"])


# ---------------------------------------------------------------------------------------------------------------------
# Helpers of the parent.
# ---------------------------------------------------------------------------------------------------------------------


def graph(width: int, height: int, prefix: str) -> dict[str, Any]:
    """A noisy grey image of width x height saved as PNG: EmptyImage -> ImageAddNoise -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0x808080},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 1, "strength": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


class RssSampler:
    """The RSS of process `pid` (MiB) while a request runs: psutil every 20 ms in a thread, and the kernel's VmHWM,
    reset on entry when /proc/PID/clear_refs is writable. `peak` is the larger of the two."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.idle = self.sampled = self.hwm = 0.0
        self.samples = 0
        self.hwm_reset = False

    def __enter__(self) -> RssSampler:
        self.idle = self._process.memory_info().rss / MIB
        try:
            Path(f"/proc/{self._pid}/clear_refs").write_text("5\n")  # 5: reset the peak RSS to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.sampled = self.idle
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                self.sampled = max(self.sampled, self._process.memory_info().rss / MIB)
                self.samples += 1
            except Exception:  # the process is gone: the request fails on its own
                return
            self._done.wait(SAMPLE_INTERVAL_S)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        try:
            self.hwm = _status_mib(self._pid, "VmHWM")
        except OSError:
            self.hwm = 0.0

    @property
    def peak(self) -> float:
        return max(self.sampled, self.hwm) if self.hwm_reset else self.sampled

    def figures(self) -> dict[str, Any]:
        return {
            "idle_rss_mb": self.idle,
            "peak_rss_mb": self.peak,
            "sampled_peak_rss_mb": self.sampled,
            "vm_hwm_mb": self.hwm,
            "hwm_reset": self.hwm_reset,
            "samples": self.samples,
        }


class WebhookSink:
    """A loopback webhook receiver that keeps of each body only its length and its first and last KEEP bytes, and
    checks its Standard Webhooks signature as the bytes arrive: a 270 MB webhook costs the bench little memory."""

    def __init__(self, secret: str) -> None:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        self._cond = threading.Condition()
        self.received: dict[str, dict[str, Any]] = {}
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                message_id = self.headers.get("webhook-id", "")
                mac = hmac.new(key, f"{message_id}.{self.headers.get('webhook-timestamp')}.".encode(), hashlib.sha256)
                left = int(self.headers.get("content-length") or 0)
                head, tail, total = bytearray(), bytearray(), 0
                while left:
                    data = self.rfile.read(min(left, MIB))
                    if not data:
                        break
                    mac.update(data)
                    left -= len(data)
                    total += len(data)
                    if len(head) < KEEP:
                        head.extend(data[: KEEP - len(head)])
                    tail.extend(data)
                    del tail[:-KEEP]
                signature = "v1," + base64.b64encode(mac.digest()).decode()
                verified = hmac.compare_digest(signature, self.headers.get("webhook-signature", ""))
                self.send_response(200 if verified else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with sink._cond:
                    sink.received[message_id] = {
                        "at": time.perf_counter(),
                        "total": total,
                        "head": bytes(head),
                        "tail": bytes(tail),
                        "verified": verified,
                        "chunked": "transfer-encoding" in self.headers,
                    }
                    sink._cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait(self, message_id: str, timeout_s: float) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: message_id in self.received, timeout_s):
                raise BenchError(f"no webhook {message_id!r} within {timeout_s:g} s")
            return self.received.pop(message_id)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def encode_loop(path: Path) -> float:
    """Seconds to read `path` and base64-encode it, in READ_CHUNK reads, as fast as Python can."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(READ_CHUNK):
            base64.b64encode(chunk)
    return time.perf_counter() - started


def check_base64(head: bytes, tail: bytes, total: int, reference: Path) -> dict[str, Any]:
    """From the first and last KEEP bytes of a base64 answer of `total` bytes: the answer without its base64 text
    (parsed), after checking the text's length and its first and last bytes against the reference file."""
    if total <= 2 * KEEP:
        raise BenchError(f"the answer has only {total} bytes")
    # The last: SaveImage's input is called "images" too, in the echoed prompt.
    marker, start = max(((marker, head.rfind(marker)) for marker in IMAGES_MARKERS), key=lambda found: found[1])
    if start < 0:
        raise BenchError(f"no {IMAGES_MARKERS[0].decode()} in the answer's start: {head[:300]!r}")
    start += len(marker)
    tail_offset = total - len(tail)
    end_in_tail = tail.find(b'"')
    if end_in_tail < 0:
        raise BenchError("the base64 text does not end within the answer's last bytes")
    length = tail_offset + end_in_tail - start
    size = reference.stat().st_size
    if length != 4 * ((size + 2) // 3):
        raise BenchError(f"{length} characters of base64 for {size} bytes (expected {4 * ((size + 2) // 3)})")
    with open(reference, "rb") as handle:
        first = handle.read(3072)
        handle.seek(-3072, os.SEEK_END)
        last = handle.read()
    if base64.b64decode(head[start : start + 4096]) != first:
        raise BenchError("the base64 text's first bytes differ from the reference file's")
    if not base64.b64decode(tail[:end_in_tail][-4096:]).endswith(last[-2048:]):
        raise BenchError("the base64 text's last bytes differ from the reference file's")
    try:
        return json.loads(head[:start] + tail[end_in_tail:])
    except ValueError as error:
        raise BenchError(f"the answer is not JSON around its base64 text: {error}") from None


# ---------------------------------------------------------------------------------------------------------------------
# The measurements.
# ---------------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.runs: dict[str, list[dict[str, Any]]] = {}  # "png.base64" -> one result per run
        self.figures: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.notes: list[str] = []
        self.s3: Any = None
        self.server: Any = None
        self.http: Any = None
        self.sink: WebhookSink | None = None

    # setup / teardown --------------------------------------------------------------------------------------------
    def start(self) -> None:
        import httpx
        import psutil

        from tests.support.server import ApiServer, trusting
        from tests.support.services import SeaweedS3

        checkpoint_path = checkpoint()
        log("starting SeaweedFS")
        self.s3 = SeaweedS3(self.work / "seaweedfs").start()
        self.s3.create_bucket(BUCKET)
        log(f"  ready in {self.s3.startup_s:.1f} s; starting comfyui-api and its ComfyUI")
        self.sink = WebhookSink(WEBHOOK_SECRET)
        env = {**self.s3.env(), "WEBHOOK_SECRET": WEBHOOK_SECRET, **trusting(self.sink.url)}
        self.server = ApiServer(self.work / "server", checkpoint_path, **env)
        self.server.env["CMD"] += " --disable-metadata"  # the same bytes whatever the filename prefix
        started = time.monotonic()
        self.server.start()
        self.http = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
        self.figures["server.startup_rss_mib"] = psutil.Process(self.server.process.pid).memory_info().rss / MIB
        log(
            f"  healthy in {time.monotonic() - started:.1f} s; server RSS "
            f"{self.figures['server.startup_rss_mib']:.0f} MiB"
        )
        self._warm_up(psutil.Process(self.server.process.pid))

    def _warm_up(self, process: Any) -> None:
        """One small request of each mode, so that first-use costs (the server's S3 client above all) are not timed
        in the first measured request; the first upload's time is a figure of its own."""
        for mode in ("s3", "base64"):
            body: dict[str, Any] = {"prompt": graph(64, 64, "warm-up"), "id": f"warm-up-{mode}"}
            if mode == "s3":
                body["s3"] = {"bucket": BUCKET, "prefix": "warm-up"}
            _, _, _, raw = self._post(body)
            answer = json.loads(raw)
            if mode == "s3":
                self.figures["server.first_upload_s"] = answer["stats"]["upload_time"] / 1000
                bucket, key = answer["images"][0].removeprefix("s3://").split("/", 1)
                self.s3.client().delete_object(Bucket=bucket, Key=key)
        self.figures["server.warm_rss_mib"] = process.memory_info().rss / MIB
        log(
            f"  warmed up: first upload (a 64x64 PNG) {self.figures['server.first_upload_s']:.2f} s; server RSS "
            f"{self.figures['server.warm_rss_mib']:.0f} MiB"
        )

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.server is not None:
            self.server.stop()
        if self.s3 is not None:
            self.s3.stop()
        if self.sink is not None:
            self.sink.stop()

    # one case ----------------------------------------------------------------------------------------------------
    def case(self, name: str) -> None:
        width, height, label = CASES[name]
        log(f"{name}: {label}")
        reference = self._reference(name, width, height)
        size = self.sizes[name] = reference.stat().st_size
        for index in range(self.args.runs):
            steps = [
                lambda: self._base64(name, width, height, reference),
                lambda: self._s3(name, width, height),
                lambda: self._webhook(name, width, height, reference),
            ]
            for step in steps if index % 2 == 0 else steps[::-1]:  # alternate which goes first
                step()
        encode = [encode_loop(reference) for _ in range(ENCODE_PASSES)]
        self.figures[f"{name}.output_bytes"] = size
        self.figures[f"{name}.encode_ref_mib_s"] = size / MIB / min(encode)
        log(f"  reference: read + base64 in a loop {self.figures[f'{name}.encode_ref_mib_s']:.0f} MiB/s (best of 3)")
        self._boto3(name, reference)
        self._webhook_in_memory(name, width, height, reference)
        self._summarise(name)
        reference.unlink()

    def _reference(self, name: str, width: int, height: int) -> Path:
        """Run the graph through ComfyUI's own API; its output file, moved out of ComfyUI's folder."""
        comfy = self.server.comfy_url
        started = time.monotonic()
        response = self.http.post(f"{comfy}/prompt", json={"prompt": graph(width, height, f"bench-ref-{name}")})
        if response.status_code != 200:
            raise BenchError(f"ComfyUI refused the graph: {response.status_code} {response.text[:500]}")
        prompt_id = response.json()["prompt_id"]
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            entry = self.http.get(f"{comfy}/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed"):
                break
            if entry and entry.get("status", {}).get("status_str") == "error":
                raise BenchError(f"ComfyUI failed the graph: {json.dumps(entry['status'])[:2000]}")
            if time.monotonic() > deadline:
                raise BenchError(f"ComfyUI did not run the graph in {REQUEST_TIMEOUT_S:g} s")
            time.sleep(0.2)
        (image,) = entry["outputs"]["3"]["images"]
        source = self.server.base / "output" / image["subfolder"] / image["filename"]
        target = self.work / f"reference-{name}.png"
        shutil.move(source, target)
        self.http.post(f"{comfy}/history", json={"delete": [prompt_id]})
        self.figures[f"{name}.comfy_first_run_s"] = time.monotonic() - started
        log(
            f"  ComfyUI made the reference in {self.figures[f'{name}.comfy_first_run_s']:.1f} s: "
            f"{target.stat().st_size / MIB:.1f} MiB"
        )
        return target

    def _post(self, body: dict[str, Any], on_chunk: Any = None) -> tuple[float, float, int, bytes]:
        """POST /prompt; (seconds to the last byte, seconds to the headers, bytes, the body or b"" when streamed)."""
        started = time.perf_counter()
        with self.http.stream("POST", f"{self.server.url}/prompt", json=body) as response:
            headers_at = time.perf_counter() - started
            if response.status_code != 200:
                raise BenchError(f"POST /prompt answered {response.status_code}: {response.read()[:2000]!r}")
            total = 0
            kept = bytearray()
            for chunk in response.iter_raw():
                total += len(chunk)
                if on_chunk is None:
                    kept += chunk
                else:
                    on_chunk(chunk)
            return time.perf_counter() - started, headers_at, total, bytes(kept)

    def _base64(self, name: str, width: int, height: int, reference: Path) -> None:
        run = len(self.runs.get(f"{name}.base64", []))
        head = bytearray()
        tail = bytearray()

        def keep(chunk: bytes) -> None:
            if len(head) < KEEP:
                head.extend(chunk[: KEEP - len(head)])
            tail.extend(chunk)
            if len(tail) > 2 * KEEP:
                del tail[:-KEEP]

        body = {"prompt": graph(width, height, name), "id": f"b64-{name}-{run}"}
        with RssSampler(self.server.process.pid) as rss:
            seconds, headers_s, total, _ = self._post(body, keep)
        answer = check_base64(bytes(head), bytes(tail[-KEEP:]), total, reference)
        size = reference.stat().st_size
        comfy_s = answer["stats"]["comfy_execution"]["duration"] / 1000
        result = {
            "seconds": seconds,
            "comfy_execution_s": comfy_s,
            "delivery_s": seconds - comfy_s,
            "stream_s": seconds - headers_s,
            "response_bytes": total,
            "mib_s": size / MIB / (seconds - comfy_s),
            "stream_mib_s": size / MIB / (seconds - headers_s),
            **rss.figures(),
        }
        self._record(f"{name}.base64", result)

    def _s3(self, name: str, width: int, height: int) -> None:
        run = len(self.runs.get(f"{name}.s3", []))
        body = {
            "prompt": graph(width, height, name),
            "id": f"s3-{name}-{run}",
            "s3": {"bucket": BUCKET, "prefix": name},
        }
        with RssSampler(self.server.process.pid) as rss:
            seconds, _, _, raw = self._post(body)
        answer = json.loads(raw)
        (url,) = answer["images"]
        bucket, key = url.removeprefix("s3://").split("/", 1)
        client = self.s3.client()
        size = self.sizes[name]
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != size:
            raise BenchError(f"{url} has {head['ContentLength']} bytes, not {size}")
        reference = self.work / f"reference-{name}.png"
        with open(reference, "rb") as handle:
            handle.seek(-65536, os.SEEK_END)
            last = handle.read()
        if client.get_object(Bucket=bucket, Key=key, Range=f"bytes={size - 65536}-")["Body"].read() != last:
            raise BenchError(f"{url} differs from the reference file at its end")
        client.delete_object(Bucket=bucket, Key=key)
        comfy_s = answer["stats"]["comfy_execution"]["duration"] / 1000
        upload_s = answer["stats"]["upload_time"] / 1000
        result = {
            "seconds": seconds,
            "comfy_execution_s": comfy_s,
            "delivery_s": seconds - comfy_s,
            "upload_s": upload_s,
            "mib_s": size / MIB / upload_s,
            "request_mib_s": size / MIB / (seconds - comfy_s),
            **rss.figures(),
        }
        self._record(f"{name}.s3", result)

    def _webhook(self, name: str, width: int, height: int, reference: Path) -> None:
        assert self.sink is not None
        run = len(self.runs.get(f"{name}.webhook", []))
        request_id = f"hook-{name}-{run}"
        body = {"prompt": graph(width, height, name), "id": request_id, "webhook_v2": self.sink.url}
        with RssSampler(self.server.process.pid) as rss:
            started = time.perf_counter()
            response = self.http.post(f"{self.server.url}/prompt", json=body)
            if response.status_code != 202:
                raise BenchError(f"POST /prompt answered {response.status_code}: {response.text[:2000]}")
            got = self.sink.wait(request_id, REQUEST_TIMEOUT_S)
        if not got["verified"]:
            raise BenchError("the webhook's signature did not verify")
        answer = check_base64(got["head"], got["tail"], got["total"], reference)
        if answer.get("type") != "prompt.complete":
            raise BenchError(f"a {answer.get('type')!r} webhook, not prompt.complete")
        seconds = got["at"] - started
        comfy_s = answer["stats"]["comfy_execution"]["duration"] / 1000
        result = {
            "seconds": seconds,
            "comfy_execution_s": comfy_s,
            "delivery_s": seconds - comfy_s,
            "body_bytes": got["total"],
            "chunked": got["chunked"],
            "mib_s": reference.stat().st_size / MIB / (seconds - comfy_s),
            **rss.figures(),
        }
        self._record(f"{name}.webhook", result)

    def _webhook_in_memory(self, name: str, width: int, height: int, reference: Path) -> None:
        assert self.sink is not None
        for index in range(self.args.runs):
            message_id = f"in-memory-{name}-{index}"
            spec = {
                "kind": "webhook_in_memory",
                "path": str(reference),
                "url": self.sink.url,
                "id": message_id,
                "prompt": graph(width, height, name),
            }
            result = _run_child(spec, {})
            got = self.sink.wait(message_id, REQUEST_TIMEOUT_S)
            if not got["verified"]:
                raise BenchError("the in-memory webhook's signature did not verify")
            result["added_rss_mb"] = result["peak_rss_mb"] - result["baseline_rss_mb"]
            self.runs.setdefault(f"{name}.webhook_in_memory", []).append(result)
            log(
                f"  {name}.webhook_in_memory: {result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MiB "
                f"({result['added_rss_mb']:.0f} above its RSS before)"
            )

    def _boto3(self, name: str, reference: Path) -> None:
        for index in range(self.args.runs):
            spec = {"kind": "boto3", "path": str(reference), "bucket": BUCKET, "key": f"boto3/{name}-{index}.png"}
            result = _run_child(spec, self.s3.env())
            if result["size"] != reference.stat().st_size:
                raise BenchError(f"boto3 uploaded {result['size']} bytes, not {reference.stat().st_size}")
            result["mib_s"] = result["size"] / MIB / result["seconds"]
            self.runs.setdefault(f"{name}.boto3", []).append(result)
            log(
                f"  {name}.boto3: upload_file {result['seconds']:.2f} s, {result['mib_s']:.0f} MiB/s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MiB"
            )

    def _record(self, name: str, result: dict[str, Any]) -> None:
        self.runs.setdefault(name, []).append(result)
        timing = f"upload {result['upload_s']:.2f} s, " if "upload_s" in result else ""
        timing += f"stream {result['stream_s']:.2f} s, " if "stream_s" in result else ""
        log(
            f"  {name}: request {result['seconds']:.2f} s (ComfyUI {result['comfy_execution_s']:.2f} s), {timing}"
            f"{result['mib_s']:.0f} MiB/s; RSS idle {result['idle_rss_mb']:.0f}, peak {result['peak_rss_mb']:.0f} MiB "
            f"({result['samples']} samples, sampled peak {result['sampled_peak_rss_mb']:.0f}, VmHWM "
            f"{result['vm_hwm_mb']:.0f}{'' if result['hwm_reset'] else ' not reset'})"
        )

    def _summarise(self, name: str) -> None:
        f = self.figures
        b64, s3, boto = self.runs[f"{name}.base64"], self.runs[f"{name}.s3"], self.runs[f"{name}.boto3"]
        f[f"{name}.comfy_execution_s"] = min(r["comfy_execution_s"] for r in b64 + s3)
        f[f"{name}.base64_mib_s"] = max(r["mib_s"] for r in b64)
        f[f"{name}.base64_stream_mib_s"] = max(r["stream_mib_s"] for r in b64)
        f[f"{name}.base64_vs_encode.ratio"] = f[f"{name}.base64_mib_s"] / f[f"{name}.encode_ref_mib_s"]
        f[f"{name}.base64_idle_rss_mib"] = max(r["idle_rss_mb"] for r in b64)
        f[f"{name}.base64_peak_rss_mib"] = max(r["peak_rss_mb"] for r in b64)
        f[f"{name}.upload_mib_s"] = max(r["mib_s"] for r in s3)
        f[f"{name}.upload_request_mib_s"] = max(r["request_mib_s"] for r in s3)
        f[f"{name}.boto3_upload_mib_s"] = max(r["mib_s"] for r in boto)
        f[f"{name}.upload_vs_boto3.ratio"] = f[f"{name}.upload_mib_s"] / f[f"{name}.boto3_upload_mib_s"]
        f[f"{name}.upload_idle_rss_mib"] = max(r["idle_rss_mb"] for r in s3)
        f[f"{name}.upload_peak_rss_mib"] = max(r["peak_rss_mb"] for r in s3)
        f[f"{name}.boto3_peak_rss_mib"] = max(r["peak_rss_mb"] for r in boto)
        hook, in_memory = self.runs[f"{name}.webhook"], self.runs[f"{name}.webhook_in_memory"]
        f[f"{name}.webhook_mib_s"] = max(r["mib_s"] for r in hook)
        f[f"{name}.webhook_idle_rss_mib"] = max(r["idle_rss_mb"] for r in hook)
        f[f"{name}.webhook_peak_rss_mib"] = max(r["peak_rss_mb"] for r in hook)
        f[f"{name}.webhook_in_memory_added_rss_mib"] = max(r["added_rss_mb"] for r in in_memory)


# ---------------------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------------------


def _checks(figures: dict[str, float], errors: dict[str, str], cases: list[str]) -> list[dict[str, str]]:
    rows = []

    def row(case: str, ours: str, reference: str, ratio: str, bar: str, ok: bool | None) -> None:
        result = "ERROR" if ok is None else "-" if bar == "-" else "PASS" if ok else "FAIL"
        rows.append({"case": case, "ours": ours, "reference": reference, "ratio": ratio, "bar": bar, "result": result})

    for case in cases:
        label = case
        if case in errors:
            row(f"{label} (all figures)", "-", "-", "-", "-", None)
            continue
        f = {name.split(".", 1)[1]: value for name, value in figures.items() if name.startswith(f"{case}.")}
        label = f"{case} ({f['output_bytes'] / MIB:.1f} MiB)"
        row(
            f"{label} base64 MiB/s",
            f"{f['base64_mib_s']:.0f}",
            f"{f['encode_ref_mib_s']:.0f} (read+b64 loop)",
            f"{f['base64_vs_encode.ratio']:.0%}",
            "-",
            True,
        )
        row(
            f"{label} base64 peak RSS MiB (idle {f['base64_idle_rss_mib']:.0f})",
            f"{f['base64_peak_rss_mib']:.0f}",
            "-",
            "-",
            f"<= 250 MB ({RSS_BAR_MIB:.0f} MiB)",
            f["base64_peak_rss_mib"] <= RSS_BAR_MIB,
        )
        row(
            f"{label} S3 upload MiB/s",
            f"{f['upload_mib_s']:.0f}",
            f"{f['boto3_upload_mib_s']:.0f} (boto3)",
            f"{f['upload_vs_boto3.ratio']:.0%}",
            "-",
            True,
        )
        row(
            f"{label} S3 peak RSS MiB (idle {f['upload_idle_rss_mib']:.0f})",
            f"{f['upload_peak_rss_mib']:.0f}",
            f"{f['boto3_peak_rss_mib']:.0f} (boto3)",
            f"{f['upload_peak_rss_mib'] / f['boto3_peak_rss_mib']:.1f}x",
            f"<= 250 MB ({RSS_BAR_MIB:.0f} MiB)",
            f["upload_peak_rss_mib"] <= RSS_BAR_MIB,
        )
        row(
            f"{label} webhook_v2 MiB/s",
            f"{f['webhook_mib_s']:.0f}",
            f"{f['encode_ref_mib_s']:.0f} (read+b64 loop)",
            f"{f['webhook_mib_s'] / f['encode_ref_mib_s']:.0%}",
            "-",
            True,
        )
        row(
            f"{label} webhook_v2 peak RSS MiB (idle {f['webhook_idle_rss_mib']:.0f})",
            f"{f['webhook_peak_rss_mib']:.0f}",
            f"+{f['webhook_in_memory_added_rss_mib']:.0f} (built in memory)",
            "-",
            f"<= 250 MB ({RSS_BAR_MIB:.0f} MiB)",
            f["webhook_peak_rss_mib"] <= RSS_BAR_MIB,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.outputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="requests per case and mode; the best counts (2)")
    parser.add_argument("--cases", default="png,large", help="comma-separated subset of png,large (default both)")
    parser.add_argument("--json", type=Path, help="write every figure and run to this file")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run: print the change per figure")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    check_cases_and_baseline(parser, args, CASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0
    prepare()
    started = datetime.now(UTC)
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="comfyui-api-bench-") as folder:
        bench = Bench(args, Path(folder))

        def measure() -> None:
            for case in args.cases:
                try:
                    bench.case(case)
                except Exception as error:  # one case's failure is reported; the others still run
                    bench.errors[case] = f"{type(error).__name__}: {error}"
                    log(f"ERROR in {case}: {bench.errors[case]}\n{bench.server.log_tail(20)}")

        run_session(bench, measure)
    checks = _checks(bench.figures, bench.errors, [c for c in args.cases if "setup" not in bench.errors])
    print()
    print(f"comfyui-api output benchmark: best of {args.runs} requests per case and mode, {os.cpu_count()} CPUs")
    print_checks(checks, bench.errors, quiet=("PASS", "-"))
    print(
        "(base64 MiB/s = file size / (request time - ComfyUI's execution); upload MiB/s = file size / "
        "stats.upload_time; webhook MiB/s = file size / (202 to the webhook's last byte - ComfyUI's execution); "
        "RSS: the comfyui-api process, sampled every 20 ms and its VmHWM)"
    )
    if args.baseline:
        print()
        print(_compare(bench.figures, args.baseline, args.cases, bench.sizes))
    if args.json:
        settings = {"runs": args.runs, "cases": args.cases, "sizes": bench.sizes}
        write_report(
            args.json, started, settings, figures=bench.figures, checks=checks, errors=bench.errors, runs=bench.runs
        )
    return 1 if bench.errors else 0


def _compare(figures: dict[str, float], baseline_path: Path, cases: list[str], sizes: dict[str, int]) -> str:
    def notes(meta: dict[str, Any]) -> list[str]:
        old = meta.get("sizes", {})
        return [
            f"the baseline's {case} output had {old[case]} bytes, this run's {sizes[case]}"
            for case in cases
            if case in old and case in sizes and old[case] != sizes[case]
        ]

    return compare(figures, baseline_path, [*cases, "server"], notes)


if __name__ == "__main__":
    sys.exit(main())
