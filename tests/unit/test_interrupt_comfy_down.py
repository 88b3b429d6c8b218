"""POST /interrupt while ComfyUI is down or does not answer: an unknown id is a 404 without a call to ComfyUI, and a
known request ends at once as interrupted, its prompt left to the janitor until ComfyUI answers again.

With a real ComfyUI stopped by SIGSTOP: tests/test_interrupt_comfy_down.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from comfyui_api.app import create_app
from comfyui_api.comfy.process import ComfyProcess
from comfyui_api.config import Settings
from comfyui_api.errors import PromptInterrupted
from comfyui_api.pipeline import runner as runner_module
from tests.unit.fake_pipeline import REQUEST_ID, Pipeline, pipeline, request


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with pipeline(tmp_path) as built:
        yield built


async def test_the_route_answers_404_for_an_unknown_id_with_comfyui_never_started(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens there, so any call to ComfyUI would fail.
    settings = Settings(comfy_home=tmp_path / "comfy", cache_dir=tmp_path / "cache", comfyui_port_host=9)
    app = create_app(settings, process=ComfyProcess([], {}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/interrupt", json={"id": "nobody"})
    assert response.status_code == 404
    assert response.json() == {"id": "nobody", "interrupted": "failed"}


async def test_an_unknown_id_never_reaches_comfyui(p: Pipeline) -> None:
    p.comfy.answering = False
    p.state.comfy_up.clear()

    assert await p.runner.interrupt("nobody") is False
    assert p.comfy.calls == []


async def test_a_queued_request_ends_at_once_when_comfyui_does_not_answer(p: Pipeline) -> None:
    job = await p.runner.start(request())
    finishing = asyncio.create_task(p.runner.finish(job))
    p.comfy.answering = False

    assert await p.runner.interrupt(REQUEST_ID) is True

    with pytest.raises(PromptInterrupted):
        await finishing
    assert p.jobs.get(REQUEST_ID) is None
    # ComfyUI answers again: the janitor, woken by the watchdog's next tick, takes the prompt out of its queue.
    p.comfy.answering = True
    p.janitor.observe(set(p.comfy.running), set(p.comfy.pending))
    await p.comfy.until(lambda: job.prompt_id not in p.comfy.pending)
    assert [job.prompt_id] in p.comfy.named("delete_from_queue")


async def test_a_comfyui_that_hangs_holds_the_interrupt_only_briefly(
    p: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await p.runner.start(request())
    finishing = asyncio.create_task(p.runner.finish(job))
    never = asyncio.Event()

    async def hang(prompt_ids: list[str]) -> None:
        await never.wait()  # a stopped ComfyUI: the connection is open, no answer comes

    monkeypatch.setattr(p.comfy, "delete_from_queue", hang)
    monkeypatch.setattr(runner_module, "_INTERRUPT_WAIT_S", 0.05)

    async with asyncio.timeout(5):
        assert await p.runner.interrupt(REQUEST_ID) is True
    with pytest.raises(PromptInterrupted):
        await finishing
    assert p.janitor.abandoned == 1
