"""Prompt ids: a lowercase UUID is sent (ComfyUI 0.25 and later take no other), and the id ComfyUI echoes is the one
followed (an older build ignores ours and chooses its own)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from comfyui_api.comfy.client import ComfyClient
from comfyui_api.pipeline.jobs import Job, JobRegistry
from tests.support.listeners import Listener

LOWERCASE_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_every_job_gets_a_lowercase_uuid_prompt_id() -> None:
    ids = {Job(id=f"request-{index}").prompt_id for index in range(100)}
    assert len(ids) == 100 and all(LOWERCASE_UUID.match(prompt_id) for prompt_id in ids)


@pytest.fixture
def comfy() -> Iterator[Listener]:
    """A stand-in for ComfyUI's POST /prompt (its answer is set per test)."""
    with Listener(content_type="application/json") as listener:
        yield listener


@pytest.mark.parametrize(
    ("answer", "followed"),
    [
        ({"prompt_id": "SENT", "number": 3, "node_errors": {}}, "SENT"),  # a current build echoes ours
        ({"prompt_id": "chosen-by-comfyui", "number": 3, "node_errors": {}}, "chosen-by-comfyui"),  # an older one
        ({"number": 3, "node_errors": {}}, "SENT"),  # no echo: ours stands
    ],
    ids=["echoed", "its-own", "no-echo"],
)
async def test_the_echoed_prompt_id_is_followed(comfy: Listener, answer: dict[str, object], followed: str) -> None:
    sent = Job(id="r").prompt_id
    comfy.body = json.dumps(answer).replace("SENT", sent).encode()
    client = ComfyClient(comfy.url)
    accepted = await client.queue_prompt({"1": {}}, prompt_id=sent, client_id="client")
    await client.aclose()
    assert accepted == followed.replace("SENT", sent)
    assert json.loads(comfy.bodies[-1])["prompt_id"] == sent


def test_a_rekeyed_job_gets_the_events_of_its_new_id() -> None:
    jobs = JobRegistry()
    job = Job(id="r")
    jobs.add(job)
    sent = job.prompt_id
    jobs.rekey(job, "chosen-by-comfyui")
    assert job.prompt_id == "chosen-by-comfyui"
    assert jobs.by_prompt_id("chosen-by-comfyui") is job and jobs.by_prompt_id(sent) is None
    jobs.dispatch({"type": "executing", "data": {"prompt_id": "chosen-by-comfyui", "node": None}})
    assert job.wake.is_set()
    jobs.remove(job)
    assert jobs.by_prompt_id("chosen-by-comfyui") is None
