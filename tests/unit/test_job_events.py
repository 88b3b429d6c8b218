"""The live events of jobs (v2/events.py): what a stream sends on connect, live and on resume, at what pace, and
within which bounds. Records are changed in place and passed again, as a Job does."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import struct
from typing import Any

import pytest
from PIL import Image

from comfyui_api.comfy.previews import JPEG, PNG, Preview
from comfyui_api.errors import PromptInterrupted, V2Error
from comfyui_api.jobstore.records import JobRecord, JobStatus
from comfyui_api.pipeline.jobs import Job as PipelineJob
from comfyui_api.pipeline.jobs import JobRegistry
from comfyui_api.v2.events import (
    KEEP_ALIVE,
    KEEP_ALIVE_FRAME,
    Event,
    Frame,
    JobEvents,
    JobStream,
    PreviewImage,
    PreviewRouter,
    render,
    render_all,
)

TIMEOUT_S = 5


async def unknown() -> JobRecord | None:
    return None


def progress(value: float, **more: Any) -> dict[str, Any]:
    return {"value": value, "nodes_done": 0, "nodes_total": 4, "current_node": None, **more}


def output(name: str) -> dict[str, Any]:
    return {"node_id": "9", "name": name, "url": f"/api/v2/assets/{name}/content"}


def image(pillow_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 120, 255)).save(buffer, format=pillow_format)
    return buffer.getvalue()


async def opened(hub: JobEvents, job_id: str = "job", **options: Any) -> JobStream:
    options.setdefault("snapshot", unknown)
    stream = await hub.stream(job_id, **options)
    assert stream is not None
    return stream


async def read(stream: JobStream, count: int | None = None) -> list[Frame]:
    """`count` frames, or every frame until the stream ends."""
    frames: list[Frame] = []
    async with asyncio.timeout(TIMEOUT_S):
        while count is None or len(frames) < count:
            try:
                frames.append(await anext(stream))
            except StopAsyncIteration:
                break
    return frames


async def ended(stream: JobStream) -> bool:
    return await read(stream) == []


def events(frames: list[Frame]) -> list[Event]:
    assert all(isinstance(frame, Event) for frame in frames)
    return [frame for frame in frames if isinstance(frame, Event)]


def shape(frames: list[Frame]) -> list[tuple[int, str, Any]]:
    """(id, name, the value that tells events of that kind apart)."""
    keys = {"status": "status", "progress": "value", "output": "name"}
    return [
        (event.id, event.name, event.data[keys[event.name]] if isinstance(event.data, dict) else None)
        for event in events(frames)
    ]


class Job:
    """A record changed in place and passed to the hub on each change, as pipeline/jobs.py does."""

    def __init__(self, hub: JobEvents, job_id: str = "job") -> None:
        self.hub = hub
        self.record = JobRecord(id=job_id, created_at=0)
        hub.on_record(self.record)

    def change(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.record, name, value)
        self.hub.on_record(self.record)

    def progress(self, value: float) -> None:
        self.change(progress=progress(value))

    def add_output(self, name: str) -> None:
        self.change(outputs=[*self.record.outputs, output(name)])


# Connect and follow ------------------------------------------------------------------------------------------------
async def test_a_stream_starts_with_the_snapshot_and_follows_the_job_to_its_end() -> None:
    hub = JobEvents(progress_interval_s=0)
    job = Job(hub)
    job.change(queue_position=2)
    stream = await opened(hub)
    assert shape(await read(stream, 1)) == [(2, "status", JobStatus.QUEUED)]

    job.change(status=JobStatus.RUNNING, queue_position=None, progress=progress(0.25))
    job.add_output("a.png")
    job.change(status=JobStatus.SUCCEEDED, progress=progress(1.0))

    assert shape(await read(stream)) == [
        (3, "status", JobStatus.RUNNING),
        (4, "progress", 0.25),
        (5, "output", "a.png"),
        (6, "progress", 1.0),
        (7, "status", JobStatus.SUCCEEDED),
    ]
    assert hub.streams == 0


async def test_the_status_event_carries_the_status_and_queue_position() -> None:
    hub = JobEvents()
    job = Job(hub)
    job.change(queue_position=3)
    stream = await opened(hub)
    [event] = events(await read(stream, 1))
    assert event.data == {"status": JobStatus.QUEUED, "queue_position": 3}
    await stream.aclose()


async def test_an_unchanged_record_sends_nothing() -> None:
    hub = JobEvents(progress_interval_s=0)
    job = Job(hub)
    job.progress(0.5)
    stream = await opened(hub)
    await read(stream, 2)
    job.change()
    job.progress(0.5)  # equal, in a new dict
    job.change(status=JobStatus.FAILED)
    assert shape(await read(stream)) == [(3, "status", JobStatus.FAILED)]


async def test_a_fresh_stream_of_a_running_job_gets_the_latest_of_each_kind_and_every_output() -> None:
    hub = JobEvents(progress_interval_s=0, preview_interval_s=0)
    job = Job(hub)
    job.change(status=JobStatus.RUNNING)
    job.progress(0.1)
    job.add_output("a.png")
    job.progress(0.2)
    hub.on_preview("job", "5", JPEG, image("JPEG"))
    job.progress(0.3)
    stream = await opened(hub)
    assert shape(await read(stream, 4)) == [
        (2, "status", JobStatus.RUNNING),
        (4, "output", "a.png"),
        (6, "preview", None),
        (7, "progress", 0.3),
    ]
    await stream.aclose()


async def test_the_stream_of_a_finished_job_sends_its_progress_outputs_and_end() -> None:
    hub = JobEvents(progress_interval_s=0, preview_interval_s=0)
    job = Job(hub)
    job.change(status=JobStatus.RUNNING, progress=progress(0.5))
    hub.on_preview("job", "5", JPEG, image("JPEG"))
    job.add_output("a.png")
    job.change(status=JobStatus.SUCCEEDED, progress=progress(1.0), outputs=[output("a.png"), output("b.png")])

    stream = await opened(hub)
    # No preview: an unfinished image is no part of a finished job.
    assert shape(await read(stream)) == [
        (5, "output", "a.png"),
        (6, "progress", 1.0),
        (7, "output", "b.png"),
        (8, "status", JobStatus.SUCCEEDED),
    ]
    hub.on_preview("job", "5", JPEG, image("JPEG"))
    job.change(status=JobStatus.FAILED)  # the first end stands
    assert shape(await read(await opened(hub))) == [
        (5, "output", "a.png"),
        (6, "progress", 1.0),
        (7, "output", "b.png"),
        (8, "status", JobStatus.SUCCEEDED),
    ]


async def test_a_quiet_stream_sends_keep_alives() -> None:
    hub = JobEvents()
    Job(hub)
    stream = await opened(hub, keepalive_s=0.01)
    assert (await read(stream, 3))[1:] == [KEEP_ALIVE, KEEP_ALIVE]
    await stream.aclose()


# Pace ---------------------------------------------------------------------------------------------------------------
async def test_progress_is_throttled_the_latest_winning_and_the_last_one_arrives() -> None:
    hub = JobEvents(progress_interval_s=0.2)
    job = Job(hub)
    stream = await opened(hub)
    await read(stream, 1)
    for value in (0.1, 0.2, 0.3):
        job.progress(value)
    assert shape(await read(stream, 2)) == [(2, "progress", 0.1), (3, "progress", 0.3)]
    await stream.aclose()


async def test_pending_progress_is_sent_before_the_terminal_status() -> None:
    hub = JobEvents(progress_interval_s=3600)
    job = Job(hub)
    stream = await opened(hub)
    job.progress(0.1)
    job.progress(0.5)  # held back for an hour, but the job ends first
    job.change(status=JobStatus.CANCELED)
    assert shape(await read(stream)) == [
        (1, "status", JobStatus.QUEUED),
        (2, "progress", 0.1),
        (3, "progress", 0.5),
        (4, "status", JobStatus.CANCELED),
    ]


async def test_outputs_not_yet_sent_go_out_before_the_terminal_status() -> None:
    hub = JobEvents()
    job = Job(hub)
    stream = await opened(hub)
    job.add_output("a.png")
    job.change(status=JobStatus.SUCCEEDED, outputs=[output("a.png"), output("b.png"), output("c.png")])
    assert shape(await read(stream)) == [
        (1, "status", JobStatus.QUEUED),
        (2, "output", "a.png"),
        (3, "output", "b.png"),
        (4, "output", "c.png"),
        (5, "status", JobStatus.SUCCEEDED),
    ]


async def test_previews_are_throttled_the_latest_winning() -> None:
    hub = JobEvents(preview_interval_s=0.2)
    Job(hub)
    stream = await opened(hub)
    await read(stream, 1)
    for node in ("1", "2", "3"):
        hub.on_preview("job", node, JPEG, image("JPEG"))
    previews = events(await read(stream, 2))
    assert [(event.id, event.name) for event in previews] == [(2, "preview"), (3, "preview")]
    assert [event.data.preview.node_id for event in previews if isinstance(event.data, PreviewImage)] == ["1", "3"]
    await stream.aclose()


async def test_a_progress_that_starts_over_is_no_ones_latest() -> None:
    hub = JobEvents(progress_interval_s=0)
    job = Job(hub)
    job.change(status=JobStatus.RUNNING, progress=progress(0.7))
    job.change(status=JobStatus.QUEUED, progress=None)  # a new attempt
    assert shape(await read(await opened(hub), 1)) == [(4, "status", JobStatus.QUEUED)]


# Resume -------------------------------------------------------------------------------------------------------------
async def test_a_resumed_stream_misses_nothing_and_repeats_nothing() -> None:
    hub = JobEvents(progress_interval_s=0)
    job = Job(hub)
    seen: list[Event] = []
    stream = await opened(hub)
    for step in range(10):
        job.progress(step / 100)
    seen += events(await read(stream, 4))
    await stream.aclose()
    for step in range(10):
        job.progress(0.5 + step / 100)
        if step % 3 == 0:
            job.add_output(f"{step}.png")
    stream = await opened(hub, last_event_id=seen[-1].id)
    seen += events(await read(stream, 7))
    await stream.aclose()
    job.change(status=JobStatus.SUCCEEDED, progress=progress(1.0), outputs=[*job.record.outputs, output("z.png")])
    seen += events(await read(await opened(hub, last_event_id=seen[-1].id)))

    ids = [event.id for event in seen]
    assert ids == list(range(1, len(seen) + 1))
    assert seen[-1].ends
    assert [event.data["name"] for event in seen if event.name == "output" and isinstance(event.data, dict)] == [
        "0.png",
        "3.png",
        "6.png",
        "9.png",
        "z.png",
    ]


async def test_a_resumed_stream_gets_a_newer_preview_once_in_id_order() -> None:
    hub = JobEvents(progress_interval_s=0, preview_interval_s=0)
    job = Job(hub)
    stream = await opened(hub)
    seen = events(await read(stream, 1))
    await stream.aclose()
    job.progress(0.1)  # 2
    hub.on_preview("job", "1", JPEG, image("JPEG"))  # 3, superseded
    job.progress(0.2)  # 4
    hub.on_preview("job", "2", JPEG, image("JPEG"))  # 5
    job.progress(0.3)  # 6
    stream = await opened(hub, last_event_id=1)
    seen += events(await read(stream, 4))
    await stream.aclose()
    assert shape(seen) == [
        (1, "status", JobStatus.QUEUED),
        (2, "progress", 0.1),
        (4, "progress", 0.2),
        (5, "preview", None),
        (6, "progress", 0.3),
    ]
    # Resumed after the preview: not sent again.
    stream = await opened(hub, last_event_id=5)
    assert shape(await read(stream, 1)) == [(6, "progress", 0.3)]
    await stream.aclose()


async def test_a_last_event_id_older_than_the_buffer_gets_a_snapshot_after_it() -> None:
    hub = JobEvents(progress_interval_s=0, buffer_size=4)
    job = Job(hub)  # 1
    job.change(status=JobStatus.RUNNING)  # 2
    for step in range(6):  # 3..8
        job.progress(step / 10)
    job.add_output("a.png")  # 9
    job.progress(0.9)  # 10
    # The buffer holds 7..10.
    replayed = await opened(hub, last_event_id=6)
    assert [event.id for event in events(await read(replayed, 4))] == [7, 8, 9, 10]
    await replayed.aclose()

    snapshot = await opened(hub, last_event_id=1)
    assert shape(await read(snapshot, 3)) == [
        (2, "status", JobStatus.RUNNING),
        (9, "output", "a.png"),
        (10, "progress", 0.9),
    ]
    await snapshot.aclose()
    # The status it already has (2 <= 5) is not sent again.
    snapshot = await opened(hub, last_event_id=5)
    assert [event.id for event in events(await read(snapshot, 2))] == [9, 10]
    job.change(status=JobStatus.FAILED)
    assert shape(await read(snapshot)) == [(11, "status", JobStatus.FAILED)]


async def test_a_last_event_id_beyond_the_jobs_count_gets_the_whole_snapshot() -> None:
    hub = JobEvents(progress_interval_s=0)
    job = Job(hub)
    job.progress(0.4)
    stream = await opened(hub, last_event_id=99)  # from before a restart
    assert shape(await read(stream, 2)) == [(1, "status", JobStatus.QUEUED), (2, "progress", 0.4)]
    await stream.aclose()


async def test_a_resumer_of_a_finished_job_gets_what_it_missed_and_the_end() -> None:
    hub = JobEvents()
    job = Job(hub)
    job.add_output("a.png")
    job.change(status=JobStatus.SUCCEEDED)
    assert shape(await read(await opened(hub, last_event_id=1))) == [
        (2, "output", "a.png"),
        (3, "status", JobStatus.SUCCEEDED),
    ]
    assert await ended(await opened(hub, last_event_id=3))


async def test_a_new_job_under_a_finished_ones_id_is_numbered_on() -> None:
    hub = JobEvents()
    first = Job(hub)
    first.change(status=JobStatus.FAILED)  # 2
    second = Job(hub)  # a new record under the same id: 3
    second.change(queue_position=0)  # 4
    # The first job's follower, resumed after its end, gets the second from its start.
    stream = await opened(hub, last_event_id=2)
    assert shape(await read(stream, 2)) == [(3, "status", JobStatus.QUEUED), (4, "status", JobStatus.QUEUED)]
    await stream.aclose()


# A job known only from the store ----------------------------------------------------------------------------------
async def test_a_job_not_followed_here_is_sent_from_its_stored_record() -> None:
    hub = JobEvents()
    record = JobRecord(
        id="old",
        created_at=0,
        status=JobStatus.SUCCEEDED,
        progress=progress(1.0),
        outputs=[output("a.png"), output("b.png")],
    )

    async def stored() -> JobRecord | None:
        return record

    frames = await read(await opened(hub, "old", snapshot=stored))
    assert shape(frames) == [
        (1, "progress", 1.0),
        (2, "output", "a.png"),
        (3, "output", "b.png"),
        (4, "status", JobStatus.SUCCEEDED),
    ]
    # Resumed: numbered after what the client saw, so that its ids only grow.
    assert [event.id for event in events(await read(await opened(hub, "old", snapshot=stored, last_event_id=9)))] == [
        10,
        11,
        12,
        13,
    ]


async def test_an_unfinished_job_not_followed_here_sends_its_state_and_ends() -> None:
    hub = JobEvents()
    record = JobRecord(id="orphan", created_at=0, status=JobStatus.RUNNING, progress=progress(0.3))

    async def stored() -> JobRecord | None:
        return record

    stream = await opened(hub, "orphan", snapshot=stored)
    assert shape(await read(stream)) == [(1, "status", JobStatus.RUNNING), (2, "progress", 0.3)]


async def test_an_unknown_job_has_no_stream() -> None:
    hub = JobEvents()
    assert await hub.stream("nobody", snapshot=unknown) is None
    assert hub.streams == 0


# Bounds -----------------------------------------------------------------------------------------------------------
async def test_streams_are_capped_and_a_closed_or_dropped_one_frees_its_slot() -> None:
    hub = JobEvents(max_streams=2)
    Job(hub)
    first = await opened(hub)
    second = await opened(hub)
    await read(first, 1)
    with pytest.raises(V2Error) as refused:
        await hub.stream("job", snapshot=unknown)
    assert refused.value.status_code == 429
    assert refused.value.code == "too_many_streams"
    assert refused.value.retry_after_s is not None

    await first.aclose()
    del second  # never read (its response never started)
    gc.collect()
    assert hub.streams == 0
    await (await opened(hub)).aclose()


async def test_a_subscriber_too_slow_to_keep_up_is_ended_and_resumes() -> None:
    hub = JobEvents(progress_interval_s=0, queue_size=3)
    job = Job(hub)
    stream = await opened(hub)
    seen = events(await read(stream, 1))
    for step in range(10):
        job.progress(step / 10)
    seen += events(await read(stream))  # what it holds, then the end
    assert [event.id for event in seen] == [1, 2, 3, 4]
    assert hub.streams == 0

    job.change(status=JobStatus.SUCCEEDED)
    seen += events(await read(await opened(hub, last_event_id=seen[-1].id)))
    assert [event.id for event in seen] == list(range(1, 13))


async def test_a_finished_job_is_forgotten_after_it_lingered() -> None:
    hub = JobEvents(linger_s=0.05)
    job = Job(hub)
    job.change(status=JobStatus.SUCCEEDED)
    assert await hub.stream("job", snapshot=unknown) is not None
    async with asyncio.timeout(TIMEOUT_S):
        # An expiry sets no event: polled, within the timeout.
        while await hub.stream("job", snapshot=unknown) is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_the_oldest_finished_job_is_dropped_first_when_there_are_too_many() -> None:
    hub = JobEvents(max_jobs=2)
    Job(hub, "a").change(status=JobStatus.SUCCEEDED)
    Job(hub, "b")
    Job(hub, "c")
    assert await hub.stream("a", snapshot=unknown) is None
    for job_id in ("b", "c"):
        assert await hub.stream(job_id, snapshot=unknown) is not None


# Frames ------------------------------------------------------------------------------------------------------------
async def test_an_event_renders_as_an_sse_frame() -> None:
    event = Event(7, "status", {"status": JobStatus.RUNNING, "queue_position": None})
    assert await render(event) == b'id: 7\nevent: status\ndata: {"status":"running","queue_position":null}\n\n'
    assert await render(KEEP_ALIVE) == KEEP_ALIVE_FRAME == b": keep-alive\n\n"


async def test_rewrite_changes_the_data_sent() -> None:
    event = Event(3, "output", output("a.png"))

    def absolute(name: str, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "url": "https://api.example" + data["url"]} if name == "output" else data

    frame = await render(event, rewrite=absolute)
    assert json.loads(frame.decode().split("data: ", 1)[1])["url"] == "https://api.example/api/v2/assets/a.png/content"
    assert event.data == output("a.png")  # shared by every stream: untouched


@pytest.mark.parametrize(("pillow_format", "content_type"), [("JPEG", JPEG), ("PNG", PNG)])
async def test_a_preview_renders_as_base64_jpeg(pillow_format: str, content_type: str) -> None:
    hub = JobEvents(preview_interval_s=0)
    Job(hub)
    hub.on_preview("job", "12", content_type, image(pillow_format))
    stream = await opened(hub)
    frames = [await render(frame) async for frame in _take(stream, 2)]
    lines = frames[1].decode().split("\n")
    assert lines[:2] == ["id: 2", "event: preview"]
    data = json.loads(lines[2].removeprefix("data: "))
    assert data["node_id"] == "12"
    assert data["content_type"] == "image/jpeg"
    with Image.open(io.BytesIO(base64.b64decode(data["data_base64"]))) as decoded:
        assert decoded.format == "JPEG"
    await stream.aclose()


async def test_a_preview_that_does_not_decode_renders_as_a_comment() -> None:
    event = Event(4, "preview", PreviewImage(Preview(PNG, b"\x89PNG\r\n\x1a\nnot an image")))
    assert await render(event) == KEEP_ALIVE_FRAME


async def test_render_all_renders_a_whole_stream() -> None:
    hub = JobEvents()
    job = Job(hub)
    stream = await opened(hub)
    job.change(status=JobStatus.CANCELED)
    body = b"".join([chunk async for chunk in render_all(stream)])
    assert body.count(b"event: status\n") == 2
    assert body.endswith(b'data: {"status":"canceled","queue_position":null}\n\n')


async def test_events_there_at_once_are_rendered_in_one_chunk() -> None:
    # Every chunk of the response is a socket write: a job's last outputs and its end go in one.
    hub = JobEvents(progress_interval_s=0)
    job = Job(hub)
    stream = await opened(hub)
    chunks = render_all(stream)
    assert (await anext(chunks)).count(b"event: ") == 1  # the snapshot's status

    job.add_output("a.png")
    job.add_output("b.png")
    job.change(status=JobStatus.SUCCEEDED)

    last = await anext(chunks)
    assert [line for line in last.split(b"\n") if line.startswith(b"event: ")] == [
        b"event: output",
        b"event: output",
        b"event: status",
    ]
    assert [chunk async for chunk in chunks] == []
    assert hub.streams == 0


async def _take(stream: JobStream, count: int) -> Any:
    for frame in await read(stream, count):
        yield frame


# Previews to jobs --------------------------------------------------------------------------------------------------
def plain_frame(data: bytes) -> bytes:
    return struct.pack(">II", 1, 1) + data


def metadata_frame(prompt_id: str, node_id: str, data: bytes) -> bytes:
    metadata = json.dumps({"node_id": node_id, "prompt_id": prompt_id, "image_type": "image/jpeg"}).encode()
    return struct.pack(">II", 4, len(metadata)) + metadata + data


async def test_the_router_sends_previews_to_the_job_of_their_prompt() -> None:
    hub = JobEvents(preview_interval_s=0)
    Job(hub)
    router = PreviewRouter(hub, {"prompt-1": "job"}.get)
    stream = await opened(hub)
    await read(stream, 1)
    jpeg = image("JPEG")

    router.on_binary(plain_frame(jpeg))  # no prompt runs: nowhere to go
    router.on_event({"type": "execution_start", "data": {"prompt_id": "prompt-1"}})
    router.on_event({"type": "executing", "data": {"node": "3", "prompt_id": "prompt-1"}})
    router.on_binary(plain_frame(jpeg))
    router.on_event({"type": "progress", "data": {"node": "4", "prompt_id": "prompt-1", "value": 1, "max": 2}})
    router.on_binary(plain_frame(jpeg))
    router.on_binary(metadata_frame("prompt-1", "8", jpeg))
    router.on_binary(metadata_frame("prompt-of-no-job", "8", jpeg))
    router.on_binary(b"\x00\x00\x00\x03text")  # not a preview
    router.on_event({"type": "execution_success", "data": {"prompt_id": "prompt-1"}})
    router.on_binary(plain_frame(jpeg))  # ComfyUI is done with it

    previews = events(await read(stream, 3))
    assert [event.data.preview.node_id for event in previews if isinstance(event.data, PreviewImage)] == [
        "3",
        "4",
        "8",
    ]
    assert all(isinstance(event.data, PreviewImage) and event.data.preview.data == jpeg for event in previews)
    await stream.aclose()


async def test_an_executing_event_without_a_node_ends_the_running_prompt() -> None:
    hub = JobEvents(preview_interval_s=0)
    Job(hub)
    router = PreviewRouter(hub, {"prompt-1": "job"}.get)
    router.on_event({"type": "executing", "data": {"node": "3", "prompt_id": "prompt-1"}})
    router.on_event({"type": "executing", "data": {"node": None, "prompt_id": "prompt-1"}})
    router.on_binary(plain_frame(image("JPEG")))
    stream = await opened(hub)
    assert shape(await read(stream, 1)) == [(1, "status", JobStatus.QUEUED)]
    await stream.aclose()


async def test_a_registrys_job_streams_through_the_hub() -> None:
    hub = JobEvents(progress_interval_s=0)
    registry = JobRegistry(hub.on_record)
    job = PipelineJob(id="job", graph={"3": {"class_type": "KSampler"}, "9": {"class_type": "SaveImage"}})
    registry.add(job)
    stream = await opened(hub)
    registry.queued(job)
    for event_type, data in [
        ("execution_start", {}),
        ("executing", {"node": "3"}),
        ("progress", {"value": 5, "max": 10, "node": "3"}),
        ("executing", {"node": "9"}),
    ]:
        registry.dispatch({"type": event_type, "data": {**data, "prompt_id": job.prompt_id}})
    job.mark_ended(PromptInterrupted())
    assert shape(await read(stream)) == [
        (1, "status", JobStatus.QUEUED),
        (2, "status", JobStatus.QUEUED),  # with its queue position
        (3, "status", JobStatus.RUNNING),
        (4, "progress", 0.0),
        (5, "progress", 0.0),
        (6, "progress", 0.25),
        (7, "progress", 0.5),
        (8, "status", JobStatus.CANCELED),
    ]
