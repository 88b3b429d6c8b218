"""The Server-Sent Events response of a job's live events (v2/events.py), shared by GET /api/v2/jobs/{id}/events and
GET /prompt/{id}/events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from starlette.types import Send

from ..errors import V2Error
from ..jobstore.records import JobRecord
from ..v2.events import JobEvents, JobStream, Rewrite, render_all

# Seconds of silence on an event stream before a keep-alive comment: proxies close idle connections.
KEEPALIVE_S = 15.0


async def _job_events(request: Request) -> JobEvents:
    return request.app.state.job_events


JobEventsDep = Annotated[JobEvents, Depends(_job_events)]


async def event_stream(
    hub: JobEvents,
    job_id: str,
    last_event_id: str | None,
    snapshot: Callable[[], Awaitable[JobRecord | None]],
    rewrite: Rewrite | None = None,
) -> StreamingResponse:
    """The job's events as SSE, after `last_event_id` when the client resumes; `rewrite(name, data)` adapts each
    event's data to the route family. V2Error 404 `not_found` when no job has this id (429 from the hub's cap)."""
    after = int(last_event_id) if last_event_id is not None and last_event_id.strip().isdigit() else None
    stream = await hub.stream(job_id, last_event_id=after, snapshot=snapshot, keepalive_s=KEEPALIVE_S)
    if stream is None:
        raise V2Error("not_found", f"No job {job_id!r} (unknown, or past its retention)", status_code=404)
    return _EventStreamResponse(
        stream,
        rewrite,
        media_type="text/event-stream",
        # Proxies must pass each event on as it comes.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _EventStreamResponse(StreamingResponse):
    """The frames of a job stream; the chunk that ends the stream also ends the response, so that the server can send
    both in one write (uvicorn's httptools protocol does: its end-of-body marker goes with the last chunk)."""

    def __init__(self, stream: JobStream, rewrite: Rewrite | None, **options: Any) -> None:
        super().__init__(render_all(stream, rewrite=rewrite), **options)
        self._stream = stream

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        more = True
        async for chunk in self.body_iterator:
            more = not self._stream.ended
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        if more:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
