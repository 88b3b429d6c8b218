"""Receivers written in JavaScript, as Node receivers of the reference server are: a real `node` process with svix
from npm (tests/services/webhook-receiver.js) parses each body, re-serialises it with JSON.stringify and verifies the
Standard Webhooks signature over that. It accepts a webhook only when our bytes are exactly JavaScript's: keys in
JavaScript's order at every depth (a graph's node ids "9", "10", "2" and stats.comfy_execution.nodes are not) and
numbers as JavaScript prints them (1 for 1.0). The /prompt responses are held to the same bytes."""

from __future__ import annotations

import base64
import os
import random
import string
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.storage.net import UrlGuard
from comfyui_api.webhooks.body import INLINE_LIMIT, Base64File, JsonBody
from comfyui_api.webhooks.payloads import output_complete, prompt_complete
from comfyui_api.webhooks.sender import WebhookSender
from tests.support.graphs import Graph, node
from tests.support.js_receiver import JsReceiver, JsReceiverError, JsRecord
from tests.support.server import ApiServer, trusting

SECRET = "whsec_" + base64.b64encode(b"a secret for JavaScript, 32 B...").decode()
# A CPU ComfyUI runs these graphs in about a second; a loaded CI machine may take far longer.
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def js() -> Iterator[JsReceiver]:
    receiver = JsReceiver(SECRET)
    try:
        receiver.start()
    except JsReceiverError as error:
        pytest.fail(str(error), pytrace=False)
    yield receiver
    receiver.stop()


def out_of_order_graph(color: int, prefix: str) -> Graph:
    """Node ids in client order "9", "10", "2" (JavaScript lists them "2", "9", "10"), run in that order too (so
    stats.comfy_execution.nodes has it), with a float input that Python writes 1.0 and JavaScript 1."""
    return {
        "9": node("EmptyImage", width=8, height=8, batch_size=1, color=color),
        "10": node("ImageBlur", image=["9", 0], blur_radius=1, sigma=1.0),
        "2": node("SaveImage", images=["10", 0], filename_prefix=prefix),
    }


def at(records: list[JsRecord], path: str) -> list[JsRecord]:
    return [r for r in records if r.path == path]


# --- without a server: the bytes, and our sender ----------------------------------------------------------------


def random_value(rng: random.Random, depth: int) -> Any:
    """Objects with keys JavaScript reorders and keys it does not, numbers of every kind JSON carries, and text."""
    roll = rng.random()
    if depth == 0 or roll < 0.25:
        return rng.choice(
            [
                rng.randint(-(2**53), 2**53),
                float(rng.randint(-1000, 1000)),
                rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 25),
                rng.choice([True, False, None, -0.0, 1e-7, 1.5e-5, 1e21]),
                "".join(rng.choice(string.printable + "é☕𝄞\u2028\x00") for _ in range(rng.randint(0, 12))),
            ]
        )
    if roll < 0.45:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    keys = ["0", "2", "9", "10", "42", "4294967294", "4294967295", "01", "-1", "1.5", "1e3", "inputs", "a", "", "٣"]
    return {key: random_value(rng, depth - 1) for key in rng.sample(keys, rng.randint(0, len(keys)))}


def test_javascript_re_serialises_our_bodies_as_they_are(js: JsReceiver) -> None:
    """Random nested values, written at once (json.dumps) and in chunks (the walk of a large body)."""
    rng = random.Random(12)
    values = [random_value(rng, 4) for _ in range(60)]
    body = JsonBody(values)
    assert body.is_small()
    record = js.round_trip(body.encode())
    assert record.round_trip, record
    large = JsonBody({"2": "x" * INLINE_LIMIT, "1": values})
    assert not large.is_small()
    record = js.round_trip(b"".join(large.chunks()))
    assert record.round_trip, record


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    webhooks = WebhookSender(SECRET, 1, guard=UrlGuard(block_private=False), timeout_s=30.0)  # loopback receiver
    yield webhooks
    await webhooks.aclose()


@pytest.mark.parametrize("output_size", [10, 2 * INLINE_LIMIT], ids=["small-at-once", "large-streamed"])
async def test_our_signed_webhooks_verify_in_javascript(
    js: JsReceiver, sender: WebhookSender, tmp_path: Path, output_size: int
) -> None:
    output = tmp_path / "out_00001_.png"
    output.write_bytes(os.urandom(output_size))
    graph = out_of_order_graph(0, "out")
    stats = {"comfy_execution": {"nodes": {"9": {"start": 1}, "10": {"start": 2}, "2": {"start": 3}}}, "upload": 1.0}
    request_id = f"sender-{output_size}"
    payload = prompt_complete(
        {"id": request_id, "prompt": graph, "images": [Base64File(output)], "filenames": [output.name], "stats": stats}
    )
    sent = await sender.send(js.url_for(f"/v2/{request_id}"), payload, message_id=request_id)
    legacy = output_complete(request_id, Base64File(output), output.name, graph, stats)
    sent_legacy = await sender.send(js.url_for(f"/legacy/{request_id}"), legacy, signed=False)

    # Both were answered (a 401 when verification failed): the records are in, or about to be read from node's output.
    records = js.wait_for(
        lambda got: bool(at(got, f"/v2/{request_id}") and at(got, f"/legacy/{request_id}")), DEADLINE_S
    )
    (signed,) = at(records, f"/v2/{request_id}")
    assert (signed.id, signed.verified, signed.round_trip, signed.type) == (
        request_id,
        True,
        True,
        "prompt.complete",
    ), signed
    (unsigned,) = at(records, f"/legacy/{request_id}")
    assert (unsigned.signed, unsigned.round_trip, unsigned.type) == (False, True, "output.complete"), unsigned
    assert sent and sent_legacy


# --- a real prompt through a real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def js_server(make_server: Callable[..., ApiServer], js: JsReceiver) -> ApiServer:
    return make_server(
        "javascript",
        WEBHOOK_SECRET=SECRET,
        SYSTEM_WEBHOOK_URL=js.url_for("/system"),
        SYSTEM_WEBHOOK_EVENTS="execution_start, executing, executed, progress_state, execution_success",
        **trusting(js.url),
    ).start()


def test_a_prompt_s_responses_and_webhooks_survive_javascript_s_round_trip(
    js_server: ApiServer, js: JsReceiver
) -> None:
    # Sync: the 200 is JavaScript's bytes, node ids in JavaScript's order in the echo and in the stats.
    answer = js_server.http.post("/prompt", json={"id": "js-sync", "prompt": out_of_order_graph(0x102030, "js")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body["prompt"]) == ["2", "9", "10"]
    assert list(body["stats"]["comfy_execution"]["nodes"]) == ["2", "9", "10"]
    assert js.round_trip(answer.content).round_trip

    # Async: the 202 too, then the signed webhook_v2 verifies in JavaScript, and the legacy webhook (unsigned) is
    # JavaScript's bytes as well.
    for request_id, field, color in (("js-v2", "webhook_v2", 0x405060), ("js-legacy", "webhook", 0x708090)):
        graph = out_of_order_graph(color, request_id)  # a colour of its own: ComfyUI's cache skips nothing
        accepted = js_server.http.post(
            "/prompt", json={"id": request_id, "prompt": graph, field: js.url_for(f"/{request_id}")}
        )
        assert accepted.status_code == 202, accepted.text
        assert list(accepted.json()["prompt"]) == ["2", "9", "10"]
        assert js.round_trip(accepted.content).round_trip

    records = js.wait_for(lambda got: bool(at(got, "/js-v2") and at(got, "/js-legacy")), DEADLINE_S)
    (v2,) = at(records, "/js-v2")
    assert (v2.id, v2.verified, v2.round_trip, v2.type) == ("js-v2", True, True, "prompt.complete"), v2
    (legacy,) = at(records, "/js-legacy")  # one output, one legacy webhook
    assert (legacy.signed, legacy.round_trip, legacy.type) == (False, True, "output.complete"), legacy

    # System webhooks: signed too, and each verifies (they are sent in order: all three prompts' are in).
    records = js.wait_for(
        lambda got: sum(r.type == "comfy.execution_success" for r in at(got, "/system")) >= 3, DEADLINE_S
    )
    system = at(records, "/system")
    assert all(r.verified and r.round_trip for r in system), [r for r in system if not r.verified]
