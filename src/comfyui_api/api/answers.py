"""The pipeline's answers as HTTP responses: a small body encoded at once, a large one streamed with its length."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from ..pipeline.delivery import Answer

_JSON = "application/json"


async def respond(answer: Answer) -> Response:
    """The response for `answer`; its `sent` is awaited once the body is out (a stream's, after its last byte)."""
    streamed = False
    try:
        if answer.body.is_small():
            # In the event loop: a stream (a task per response, a thread hop per chunk) costs more than the
            # encoding itself.
            return Response(answer.body.encode(), status_code=answer.status_code, media_type=_JSON)
        size = await asyncio.to_thread(answer.body.size)
        streamed = True
        return StreamingResponse(
            _stream(answer),
            status_code=answer.status_code,
            media_type=_JSON,
            headers={"Content-Length": str(size)},
            # Also after a client that left before the first byte: the stream then never starts, so its own
            # `finally` never runs. (`sent` may thus be awaited twice; ending a job twice is a no-op.)
            background=BackgroundTask(answer.sent) if answer.sent is not None else None,
        )
    finally:
        if not streamed and answer.sent is not None:
            await answer.sent()


async def _stream(answer: Answer) -> AsyncIterator[bytes]:
    try:
        async with contextlib.aclosing(answer.body.stream()) as chunks:
            async for chunk in chunks:
                yield chunk
    finally:
        if answer.sent is not None:
            await answer.sent()
