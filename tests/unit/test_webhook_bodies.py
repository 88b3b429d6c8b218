"""Bodies of any size in bounded memory (webhooks/body.py), and webhooks that stream them from disk: the bytes are
JSON.stringify's (JavaScript's key order and numbers, json.dumps's text otherwise), a receiver verifies them with svix,
and memory does not grow with the size of the outputs or of the prompt's strings. (A receiver in JavaScript:
tests/test_javascript_receivers.py.)"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from comfyui_api.storage.net import UrlGuard
from comfyui_api.webhooks.body import INLINE_LIMIT, Base64File, JsonBody
from comfyui_api.webhooks.payloads import output_complete, prompt_complete
from comfyui_api.webhooks.sender import WebhookSender
from tests.support.listeners import QuietHandler, serve_in_thread, stop_server
from tests.support.receiver import WebhookReceiver

MIB = 1024 * 1024
SECRET = "whsec_" + base64.b64encode(b"a key for streamed bodies, 32 B.").decode()


def dumps(value: Any) -> bytes:
    """What every body must be, byte for byte: the reference's JSON.stringify, written by json.dumps once the value is
    as JavaScript holds it (for the floats these tests use; test_floats_are_written_as_javascript_writes_them has the
    others)."""
    return json.dumps(as_javascript(value), separators=(",", ":"), ensure_ascii=False).encode()


ARRAY_INDEX = re.compile(r"(0|[1-9][0-9]*)\Z")


def is_array_index(key: str) -> bool:
    """ECMAScript's array index: a canonical numeric string of an integer below 2^32 - 1."""
    return ARRAY_INDEX.match(key) is not None and int(key) < 2**32 - 1


def as_javascript(value: Any) -> Any:
    """`value` as JSON.parse would give it to JavaScript: each object's keys that are array indices first, in
    ascending order, then the others in insertion order (OrdinaryOwnPropertyKeys); integral floats as integers, NaN and
    infinities as null (what JSON.stringify writes for them)."""
    if isinstance(value, dict):

        def text(key: Any) -> str:
            return key if isinstance(key, str) else json.dumps(key)

        indices = sorted((key for key in value if is_array_index(text(key))), key=lambda key: int(text(key)))
        others = [key for key in value if not is_array_index(text(key))]
        return {key: as_javascript(value[key]) for key in indices + others}
    if isinstance(value, list | tuple):
        return [as_javascript(member) for member in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def write_random(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        for start in range(0, size, 4 * MIB):
            handle.write(os.urandom(min(4 * MIB, size - start)))
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def with_files(value: Any) -> Any:
    """`value` with each Base64File replaced by its base64 text: what the body stands for."""
    if isinstance(value, Base64File):
        return b64(value.path)
    if isinstance(value, dict):
        return {key: with_files(member) for key, member in value.items()}
    if isinstance(value, list | tuple):
        return [with_files(member) for member in value]
    return value


def written(body: JsonBody) -> bytes:
    return b"".join(body.chunks())


@pytest.fixture
async def make_sender() -> AsyncIterator[Callable[..., WebhookSender]]:
    made: list[WebhookSender] = []

    def factory(secret: str | None = SECRET, retries: int = 3) -> WebhookSender:
        guard = UrlGuard(block_private=False)  # the receivers listen on loopback
        made.append(WebhookSender(secret, retries, guard=guard, timeout_s=30.0, backoff_base_s=0.01))
        return made[-1]

    yield factory
    for sender in made:
        await sender.aclose()


# --- the bytes ----------------------------------------------------------------------------------------------------

LONG = 1024 * 1024 + 17  # past the slice a long string is escaped in


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"a": [1, 2.5, -0.0, 1e300, None, True, False, "", [], {}], "b": {"c": {"d": [[["deep"]]]}}},
        {"text": 'quotes " backslash \\ controls \x00\x01\x1f\x7f newline\n tab\t', "u": "é☕𝄞 \u2028\u2029"},
        {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "big": 10**40},
        {1: "int key", 2.5: "float key", False: "bool key", None: "null key"},
        ("a", "tuple", ("nested",)),
        {"long ascii": "x" * LONG, "long mixed": ("é☕\n\x00" * (LONG // 4 + 3)), "after": 1},
        {"k" * LONG: "a long key"},
        "a bare string",
        12,
        # Node ids and the execution order of stats.comfy_execution.nodes: not JavaScript's order, at any depth.
        {
            "prompt": {
                "9": {"inputs": {"b": 1, "a": 2.0}},
                "10": {"inputs": {}},
                "2": {"inputs": {"x": [{"1": 0, "0": 1}]}},
            },
            "stats": {"comfy_execution": {"nodes": {"9": {"start": 1}, "10": {"start": 2}, "2": {"start": 3}}}},
        },
        # Only canonical integers below 2^32 - 1 are array indices; the others stay where they were inserted.
        {
            "b": 1,
            "4294967295": 2,
            "4294967294": 3,
            "01": 4,
            "-1": 5,
            "1.5": 6,
            "10": 7,
            "2": 8,
            "0": 9,
            "1e3": 10,
            " 1": 11,
            "\u0661": 12,  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to JavaScript
            "00": 13,
            "a": 14,
        },
        {"b": 1, 3: "int key", "2": "string key", True: "bool key", 4.0: "float key"},
        {"long": {"2": "y" * LONG, "1": "z", "x": {"10": 1, "9": 2}}},
    ],
    ids=[
        "empty-dict",
        "empty-list",
        "nested",
        "escapes",
        "numbers",
        "non-str-keys",
        "tuples",
        "long-strings",
        "long-key",
        "string",
        "number",
        "node-ids",
        "index-like-keys",
        "non-str-index-keys",
        "long-string-reordered",
    ],
)
def test_a_body_is_byte_for_byte_json_stringify(value: Any) -> None:
    body = JsonBody(value)
    expected = dumps(value)
    assert written(body) == expected
    assert body.encode() == expected
    assert body.size() == len(expected)


def test_javascript_order_is_the_reference_implementations() -> None:
    """The walk's order and the reference above agree (and the order is the one JavaScript gives: see
    tests/test_javascript_receivers.py, where node re-serialises the bodies)."""
    body = {"9": 0, "x": 1, "10": 2, "2": {"b": 3, "0": 4}, "01": 5, "4294967294": 6, "4294967295": 7}
    assert JsonBody(body).encode() == (b'{"2":{"0":4,"b":3},"9":0,"10":2,"4294967294":6,"x":1,"01":5,"4294967295":7}')
    assert written(JsonBody(body)) == dumps(body)


@pytest.mark.parametrize(
    ("number", "text"),
    [
        # What node writes for each (JSON.stringify([x])), where Python's repr differs or might.
        (1.0, "1"),
        (-0.0, "0"),
        (7.5, "7.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e-4, "0.0001"),
        (0.00012345, "0.00012345"),
        (1e-5, "0.00001"),
        (-1.5e-5, "-0.000015"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (-1.5e-7, "-1.5e-7"),
        (1e-10, "1e-10"),
        (5e-324, "5e-324"),
        (2.0**53 + 2, "9007199254740994"),
        (1e16, "10000000000000000"),
        (483573978521458769920.0, "483573978521458800000"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-1e22, "-1e+22"),
        (1.5e300, "1.5e+300"),
        (math.nan, "null"),
        (math.inf, "null"),
        (-math.inf, "null"),
        (12, "12"),
        (True, "true"),
        # Beyond 2^53 JavaScript would round an integer (to 1e+40 here); this server keeps it exact.
        (10**40, "1" + "0" * 40),
    ],
)
def test_floats_are_written_as_javascript_writes_them(number: Any, text: str) -> None:
    """In a small body written at once (json.dumps, or the walk when json.dumps cannot write it so) and in chunks."""
    body = JsonBody({"2": [number], "1": {"n": number}})
    expected = f'{{"1":{{"n":{text}}},"2":[{text}]}}'.encode()
    assert body.encode() == expected
    assert written(body) == expected
    assert body.size() == len(expected)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 3 * MIB - 1, 3 * MIB, 3 * MIB + 1, 6 * MIB + 2])
def test_base64_files_are_written_in_place_of_their_strings(tmp_path: Path, size: int) -> None:
    """Sizes around the 3 MiB read: each read's base64 must concatenate to the file's (padding only at the end)."""
    path = write_random(tmp_path / "out.bin", size)
    value = {"images": [Base64File(path), "url"], "after": "é"}
    body = JsonBody(value)
    expected = dumps(with_files(value))
    assert written(body) == expected
    assert body.size() == len(expected)
    assert body.encode() == expected


def test_small_and_large_bodies() -> None:
    assert JsonBody({"text": "x" * 1000}).is_small()
    assert not JsonBody({"text": "x" * (INLINE_LIMIT + 1)}).is_small()
    assert not JsonBody([["y" * 1000] * 600] * 2).is_small()
    # About 400 KB of text, but 40,000 objects and arrays for encode() to walk: written in chunks, in a thread.
    tiny = {"prompt": {str(i): {"a": [i]} for i in range(20000)}}
    assert len(dumps(tiny)) < INLINE_LIMIT / 2
    assert not JsonBody(tiny).is_small()


def test_what_json_cannot_hold_is_an_error_like_json_dumps(tmp_path: Path) -> None:
    for value in ({"x": object()}, {(1, 2): "tuple key"}, {"s": {1, 2}}):
        with pytest.raises(TypeError):
            JsonBody(value).encode()
        with pytest.raises(TypeError):
            written(JsonBody(value))
    lone = {"s": "\ud800" + "x" * LONG}
    with pytest.raises(UnicodeEncodeError):
        written(JsonBody(lone))
    with pytest.raises(UnicodeEncodeError):
        JsonBody(lone).size()


async def test_stream_is_chunks_in_threads_and_closes_its_file_when_stopped_early(tmp_path: Path) -> None:
    path = write_random(tmp_path / "out.bin", 7 * MIB)
    body = JsonBody({"images": [Base64File(path)]})
    assert b"".join([chunk async for chunk in body.stream()]) == written(body)
    assert all(len(chunk) <= 4 * MIB for chunk in body.chunks())

    async with contextlib.aclosing(body.stream()) as stream:
        assert (await anext(stream)).startswith(b'{"images":["')
    assert str(path) not in [f.path for f in psutil.Process().open_files()]


# --- streamed webhooks --------------------------------------------------------------------------------------------


async def test_a_streamed_webhook_verifies_with_svix_and_carries_the_exact_base64(
    tmp_path: Path, make_sender: Callable[..., WebhookSender]
) -> None:
    video = write_random(tmp_path / "req_00001_.mp4", 3 * MIB + 2)
    still = write_random(tmp_path / "req_00002_.png", 10)
    prompt = {"1": {"class_type": "X", "inputs": {"text": 'a long prompt ☕ "q"\n' * 60000, "credentials": "s3cr3t"}}}
    payload = prompt_complete(
        {
            "id": "req",
            "prompt": prompt,
            "images": [Base64File(video), Base64File(still)],
            "filenames": ["req_00001_.mp4", "req_00002_.png"],
            "stats": {"total_time": 5},
            "webhook_v2": "https://example.com/hook",
        }
    )
    with WebhookReceiver(secret=SECRET) as hook:
        hook.fail_next(1, status=503)  # the retry streams the body again from disk
        assert await make_sender().send(hook.url, payload, message_id="req")
        first, second = hook.requests
    assert (first.status, second.status) == (503, 200)
    for got in (first, second):
        assert got.verified is True
        assert got.headers["content-length"] == str(len(got.body.encode()))
        assert "transfer-encoding" not in got.headers
    assert first.body == second.body
    assert first.headers["webhook-signature"] == second.headers["webhook-signature"]
    received = second.json()
    assert received["images"] == [b64(video), b64(still)]
    assert second.body.encode() == dumps(with_files(payload))
    # The shape of the reference's `webhook_v2`: type and timestamp first, then the response body, no credentials.
    assert list(received)[:2] == ["type", "timestamp"] and received["type"] == "prompt.complete"
    assert received["prompt"]["1"]["inputs"] == {"text": prompt["1"]["inputs"]["text"]}
    assert "s3cr3t" not in second.body


async def test_a_streamed_legacy_webhook_is_unsigned_with_the_exact_base64(
    tmp_path: Path, make_sender: Callable[..., WebhookSender]
) -> None:
    video = write_random(tmp_path / "req_00001_.mp4", 2 * MIB)
    payload = output_complete("req", Base64File(video), "req_00001_.mp4", {"1": {}}, {"total_time": 5})
    with WebhookReceiver() as hook:
        assert await make_sender().send(hook.url, payload, signed=False)
        (got,) = hook.requests
    assert not [name for name in got.headers if name.startswith("webhook-")]
    assert got.json() == {
        "event": "output.complete",
        "image": b64(video),
        "id": "req",
        "filename": "req_00001_.mp4",
        "prompt": {"1": {}},
        "stats": {"total_time": 5},
    }


async def test_an_output_file_gone_before_the_webhook_is_one_error_line(
    tmp_path: Path, make_sender: Callable[..., WebhookSender], caplog: pytest.LogCaptureFixture
) -> None:
    with WebhookReceiver(secret=SECRET) as hook:
        sent = await make_sender().send(hook.url, {"images": [Base64File(tmp_path / "deleted.png")]})
        assert hook.requests == []
    assert sent is False
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage() == "webhook body could not be written"


# --- memory -------------------------------------------------------------------------------------------------------


class DrainingReceiver:
    """A loopback receiver that keeps nothing of a body but its length and SHA-256 (so that its own memory does not
    count), answering 200."""

    def __init__(self) -> None:
        self.bodies: list[tuple[int, str]] = []
        self.headers: list[dict[str, str]] = []
        owner = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                left = int(self.headers["Content-Length"])
                digest = hashlib.sha256()
                while left:
                    data = self.rfile.read(min(left, 64 * 1024))
                    if not data:
                        break
                    digest.update(data)
                    left -= len(data)
                owner.headers.append({key.lower(): value for key, value in self.headers.items()})
                owner.bodies.append((int(self.headers["Content-Length"]) - left, digest.hexdigest()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = serve_in_thread(Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"

    def stop(self) -> None:
        stop_server(self._httpd)


@pytest.fixture
def draining() -> Iterator[DrainingReceiver]:
    receiver = DrainingReceiver()
    yield receiver
    receiver.stop()


async def traced_peak(run: Callable[[], Any]) -> int:
    """The peak of memory Python allocated (in every thread) while `run()` ran."""
    tracemalloc.start()
    try:
        await run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_webhook_with_a_large_output_file_stays_in_bounded_memory(
    tmp_path: Path, make_sender: Callable[..., WebhookSender], draining: DrainingReceiver
) -> None:
    """Signing and sending a webhook whose output is 16 MiB, then 64 MiB: the peak does not grow with the file, and
    stays far below it (json.dumps, its UTF-8 and svix's signing input would each hold the whole base64)."""
    sender = make_sender()
    peaks = {}
    for size in (16 * MIB, 64 * MIB):
        video = write_random(tmp_path / f"out-{size}.mp4", size)
        payload = prompt_complete({"id": "big", "prompt": {}, "images": [Base64File(video)], "filenames": ["v.mp4"]})

        async def send(payload: dict[str, Any] = payload) -> None:
            assert await sender.send(draining.url, payload, message_id="big")

        peaks[size] = await traced_peak(send)
        expected = dumps(with_files(payload))
        assert draining.bodies[-1] == (len(expected), hashlib.sha256(expected).hexdigest())
        assert "webhook-signature" in draining.headers[-1]
        del expected
        video.unlink()
    # A few MiB of chunks in flight (one being sent, the next being read and encoded), whatever the file's size.
    assert peaks[64 * MIB] < peaks[16 * MIB] + 4 * MIB, peaks
    assert peaks[64 * MIB] < 64 * MIB / 2, peaks


def test_a_50_mb_prompt_string_is_echoed_in_bounded_memory() -> None:
    """The echo of a 50 MB string input is written once, a slice at a time: json.dumps of it would peak at several
    times its size (the escaped text, then its UTF-8)."""
    text = 'a cat ☕ "quoted"\n' * (50_000_000 // 18)
    body = JsonBody({"id": "echo", "prompt": {"1": {"class_type": "X", "inputs": {"text": text}}}})
    tracemalloc.start()
    try:
        size = body.size()
        written_bytes = sum(len(chunk) for chunk in body.chunks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written_bytes == size > 50_000_000
    assert peak < 16 * MIB, peak


async def test_the_memory_measure_sees_a_body_held_whole() -> None:
    """The bounds above mean something: the same measure sees json.dumps's copies of an 8 MiB string."""

    async def whole() -> None:
        json.dumps({"text": "x" * (8 * MIB)}).encode()

    assert await traced_peak(whole) > 16 * MIB
