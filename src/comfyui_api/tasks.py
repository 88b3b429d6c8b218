"""Background tasks with an owner: each is held (the event loop keeps only weak references), its death is logged,
and the death of a critical one is reported, so that the server never serves on with a part silently missing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TaskOwner:
    def __init__(self, on_critical_death: Callable[[str], None]) -> None:
        """`on_critical_death(reason)` is called when a critical task dies of an exception."""
        self._on_critical_death = on_critical_death
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str, *, critical: bool = False) -> None:
        """Run `coroutine` in a task held here, watched, and cancelled by close()."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        self.watch(task, critical=critical)

    def watch(self, task: asyncio.Task[Any], *, critical: bool) -> None:
        """Log the death of a task held elsewhere (its holder ends it)."""
        task.add_done_callback(lambda done: self._ended(done, critical))

    async def close(self) -> None:
        """Cancel the tasks spawned here and wait for them; their ends are no longer reported."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _ended(self, task: asyncio.Task[Any], critical: bool) -> None:
        self._tasks.discard(task)
        if self._closing or task.cancelled():
            return
        error = task.exception()
        if error is None:
            return  # it finished its work (a critical one returns only when it asked the server to exit)
        reason = f"{type(error).__name__}: {error}"
        logger.critical(
            "a background task died" if critical else "a background task failed",
            extra={"task": task.get_name(), "reason": reason},
            exc_info=error,
        )
        if critical:
            self._on_critical_death(f"{task.get_name()} died: {reason}")
