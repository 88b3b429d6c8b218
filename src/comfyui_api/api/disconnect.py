"""A sync request whose client disconnects is cancelled (CANCEL_ON_DISCONNECT): uvicorn does not cancel a handler
when its client goes away, so without this a prompt nobody waits for would run on to its end.

While the pipeline works on a sync request, one task awaits the ASGI `receive()`. The body has been read by then,
so the next message the server sends is `http.disconnect`; it cancels the handler's task, the way
`asyncio.timeout` does, and the cancellation runs through the pipeline's own cleanup: the job closes, and a prompt
still queued or running in ComfyUI is abandoned to the janitor, which takes it out at once (pipeline/janitor.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive

from ..pipeline.delivery import Door
from ..pipeline.request import PromptRequest
from .answers import respond

logger = logging.getLogger(__name__)

T = TypeVar("T")

# nginx's "client closed request": never seen by the client, only by the access log.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client went away before the work was done; the work was cancelled."""


async def until_disconnected(receive: Receive) -> None:
    """Return when the client disconnects. Only for after the body has been read: other messages are dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` in the current task; if the client disconnects first, cancel it and raise ClientDisconnected.

    Cancelling the current task (not running `work` in a task of its own) keeps the normal path at one extra task,
    the watcher, which is cancelled as soon as `work` is done. A cancellation from elsewhere stays a cancellation.
    """
    task = asyncio.current_task()
    assert task is not None, "called outside a task"
    cancelling = task.cancelling()
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        await until_disconnected(receive)
        # Only reached while `work` is awaited: once it is done, the `finally` below has cancelled this watcher
        # before it could run again.
        disconnected = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        result = await work
    except BaseException as exc:
        # As asyncio.timeout: the cancellation this module requested is taken back whatever came of it, and only
        # becomes ClientDisconnected when it is what ended the work and no one else cancelled the task meanwhile.
        if disconnected and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
    if disconnected:
        # The work absorbed the cancellation and finished all the same: its result stands.
        task.uncancel()
    return result


async def deliver(
    request: Request,
    delivery: Door,
    prompt: PromptRequest,
    *,
    cancel_on_disconnect: bool,
    extra: dict[str, Any] | None = None,
) -> Response:
    """The response to a /prompt or workflow request. A sync one is cancelled when its client disconnects first,
    unless `cancel_on_disconnect` is off; an async one (202 at once) runs on whatever its client does."""
    handled = delivery.handle(prompt, extra=extra)
    if prompt.is_async or not cancel_on_disconnect:
        return await respond(await handled)
    try:
        answer = await unless_disconnected(request.receive, handled)
    except ClientDisconnected:
        logger.info("client disconnected; request cancelled", extra={"request_id": prompt.id})
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return await respond(answer)
